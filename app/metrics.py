"""Prometheus metrics: requests by route and status, their latency, and the connection pool.

Each app has a registry of its own (not prometheus_client's global one), so that several
apps in one process, as in the tests, count separately.
"""

from collections.abc import Iterator

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LABELS = ("method", "route", "status")


class PoolCollector(Collector):
    """The SQLAlchemy pool's connections, read when scraped."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = getattr(self._app.state, "engine", None)
        connections = GaugeMetricFamily(
            "db_pool_connections", "Database connections held by the pool, by state", labels=["state"]
        )
        capacity = GaugeMetricFamily("db_pool_size", "Connections the pool keeps open, overflow aside")
        pool = engine.pool if engine is not None else None
        # NullPool (behind PgBouncer) keeps nothing and has no counts to report.
        if pool is not None and hasattr(pool, "checkedout"):
            connections.add_metric(["in_use"], pool.checkedout())
            connections.add_metric(["idle"], pool.checkedin())
            connections.add_metric(["overflow"], max(pool.overflow(), 0))
            capacity.add_metric([], pool.size())
        yield connections
        yield capacity


class Metrics:
    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "HTTP requests answered", LABELS, registry=self.registry)
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to the end of its response",
            LABELS,
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.in_progress = Gauge("http_requests_in_progress", "Requests being served", registry=self.registry)
        self.registry.register(PoolCollector(app))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
