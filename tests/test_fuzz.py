"""Schemathesis against /openapi.json of the real server: valid tokens, a bounded number
of examples per operation, no 5xx, and every response as the document describes it."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.live_server import LiveService, live_service
from tests.tokens import make_token

EXAMPLES_PER_OPERATION = 25

# Limits off: a fuzzer from one address would soon be answered 429 only.
service = live_service("fuzz", rate_limit_requests="", rate_limit_writes="")


@pytest.fixture(scope="module")
def api_schema(service: LiveService) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "base-url": service.base_url,
            # The token as the document's bearer scheme, so that the fuzzer's checks know
            # it is the credential (and can probe the routes without it).
            "auth": {"openapi": {"bearer": {"bearer": make_token("alice")}}},
            # The token's user, so that requests get past the ownership check.
            "parameters": {"path.user_id": "alice"},
            "request-timeout": 10,
            # A made-up If-Match can only fail its precondition: 412 is a valid answer to
            # valid data (nothing changes), as 404 is for a made-up task id.
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
                }
            },
        }
    )
    # Tasks for alice, so that generated ids find some; due, so that a PATCH that makes
    # one recurring is valid.
    service.admin.execute(
        "insert into tasks (user_id, title, due_at)"
        " select 'alice', 'seed ' || n, now() + n * interval '1 day' from generate_series(1, 20) n"
    )
    return schemathesis.openapi.from_url(f"{service.base_url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate()
