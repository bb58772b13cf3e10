"""Schemathesis against /openapi.json of the real server: valid tokens, a bounded number
of examples per operation, no 5xx, and every response as the document describes it."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation.meta import negated_parameters
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.live_server import LiveService, live_service
from tests.tokens import make_token

EXAMPLES_PER_OPERATION = 10
# The list's repeatable query parameters.
ARRAY_QUERY_PARAMETERS = {"tag", "priority"}
SEEDED_TASKS = 20

# Limits off: a fuzzer from one address would soon be answered 429 only.
service = live_service("fuzz", rate_limit_requests="", rate_limit_writes="", rate_limit_chat="")


@pytest.fixture(scope="module")
def api_schema(service: LiveService) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "base-url": service.base_url,
            # The token as the document's bearer scheme, so that the fuzzer's checks know
            # it is the credential (and can probe the routes without it).
            "auth": {"openapi": {"bearer": {"bearer": make_token("alice")}}},
            # The token's user, so that requests get past the ownership check; half the
            # task ids are seeded ones (below), so that writes reach existing tasks.
            "parameters": {
                "path.user_id": "alice",
                "path.task_id": {"dictionary": "seeded_tasks", "probability": 0.5},
            },
            "dictionaries": {"seeded_tasks": {"values": list(range(1, SEEDED_TASKS + 1))}},
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
    # one recurring is valid; every fourth recurring, so that a write that completes it
    # makes its next occurrence.
    service.admin.execute(
        "insert into tasks (user_id, title, due_at, recurrence)"
        " select 'alice', 'seed ' || n, now() + n * interval '1 day',"
        " case when mod(n, 4) = 0"
        " then (array['daily', 'weekly', 'monthly'])[mod(n, 3) + 1]::task_recurrence end"
        " from generate_series(1, %s) n",
        (SEEDED_TASKS,),
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
    response = case.call()
    # A PATCH that would leave a recurring task without a due date is a 422 naming
    # `recurrence`: the body is valid, the stored task makes it one that cannot be
    # applied (the document cannot know whether the task has a due date, or recurs).
    # Only that one error is let through; any other 422 to valid data still fails.
    refused_for_the_stored_task = (
        case.method == "PATCH"
        and response.status_code == 422
        and [error["type"] for error in response.json()["detail"]] == ["recurrence_without_due_at"]
    )
    # sort=relevance without q is a 422 naming `q`, as the parameter's description says;
    # no OpenAPI schema can tie one query parameter to another.
    relevance_without_q = (
        case.method == "GET"
        and response.status_code == 422
        and (case.query or {}).get("sort") == "relevance"
        and not (case.query or {}).get("q")
        and [error["loc"] for error in response.json()["detail"]] == [["query", "q"]]
    )
    excluded = [positive_data_acceptance] if refused_for_the_stored_task or relevance_without_q else []
    # A repeatable query parameter (an array) "negated" into a single string is sent as the
    # same `tag=x` as a one-element array, valid data; schemathesis still expects a 4xx.
    negated = {name for name, _ in negated_parameters(case.meta)}
    if response.status_code == 200 and negated and negated <= ARRAY_QUERY_PARAMETERS:
        excluded.append(negative_data_rejection)
    case.validate_response(response, excluded_checks=excluded)
