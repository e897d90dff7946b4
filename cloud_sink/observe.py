"""What an operator sees of a running sink: an access log line per request, and Prometheus
metrics at ``GET /metrics`` (admin token: ``Authorization: Bearer ...``, which Prometheus's
``authorization`` scrape setting sends).

Metrics (the standard ``prometheus_client``; one registry per app, so tests and several apps in
one process never mix their figures):

- ``capsight_sink_instance_info{instance,database}``: which instance this is (``serve
  --instance``) and its database (``sqlite`` or ``postgresql``); one series, value 1;
- ``capsight_sink_requests_total{route,method,status}``: every request; ``route`` is the
  route's pattern (``/files/{upload_id}``), never the raw path: a client cannot make series;
- ``capsight_sink_request_seconds{route}``: time to answer (histogram);
- ``capsight_sink_received_bytes_total``: request bodies received;
- ``capsight_sink_uploads_in_progress``, ``capsight_sink_ingest_queue_depth``,
  ``capsight_sink_ingest_oldest_pending_seconds``, ``capsight_sink_devices_seen``,
  ``capsight_sink_devices_active``: read from the database at each scrape;
- ``capsight_sink_ingested_total{result}``: ingest outcomes (``ok``, ``corrupt``, ``waiting``);
- ``capsight_sink_ingest_failures_total{reason}``: ``corrupt`` (the bundle is bad),
  ``error`` (a failure that is retried), ``gave_up`` (retries exhausted), ``not_a_bundle``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

access_log = logging.getLogger("capsight.sink.access")

ROUTES = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/bundles",
    "/api/heartbeat",
    "/api/fleet",
    "/api/ingest",
    "/api/storage",
    "/api/labels",
    "/api/catalogue",
    "/api/datasets",
)
PREFIXES = (
    ("/api/labels/", "/api/labels/{item_id}"),
    ("/api/frames/", "/api/frames/{item_id}.jpg"),
    ("/api/clips/", "/api/clips/{device_id}/{bundle_id}.mp4"),
    ("/ui/static/", "/ui/static/{name}"),
    ("/ui/", "/ui/{page}"),
)
FAILURE_REASONS = ("corrupt", "error", "gave_up", "not_a_bundle")


def route_of(path: str) -> str:
    """The route pattern of a path (bounded: anything else is ``other``)."""
    if path == "/files/" or path == "/files":
        return "/files/"
    if path.startswith("/files/") and "/" not in path[7:]:
        return "/files/{upload_id}"
    if path.startswith("/api/bundles/") and path.endswith(".mcap"):
        return "/api/bundles/{device_id}/{bundle_id}.mcap"
    if path.startswith("/api/bundles/") and path.endswith("/sensors"):
        return "/api/bundles/{device_id}/{bundle_id}/sensors"
    if path in ROUTES:
        return path
    return next((route for prefix, route in PREFIXES if path.startswith(prefix)), "other")


class _DatabaseGauges(Collector):
    def __init__(self, sample: Callable[[], dict[str, float]]) -> None:
        self.sample = sample

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            g = self.sample()
        except Exception:  # a scrape must not fail because the database is busy
            return
        for key, name, text in (
            ("uploads_in_progress", "uploads_in_progress", "uploads created, not complete"),
            ("ingest_queue_depth", "ingest_queue_depth", "completed uploads waiting for ingest"),
            (
                "ingest_oldest_age_s",
                "ingest_oldest_pending_seconds",
                "age of the oldest upload waiting for ingest",
            ),
            ("devices_seen", "devices_seen", "devices that sent a heartbeat"),
            ("devices_active", "devices_active", "devices with a token that is not revoked"),
        ):
            yield GaugeMetricFamily(f"capsight_sink_{name}", text, value=g[key])


class SinkMetrics:
    def __init__(
        self,
        sample: Callable[[], dict[str, float]] | None = None,
        *,
        instance: str = "",
        database: str = "sqlite",
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("capsight_sink_instance", "which sink instance answers", registry=r).info(
            {"instance": instance, "database": database}
        )
        self.requests = Counter(
            "capsight_sink_requests", "requests answered", ("route", "method", "status"), registry=r
        )
        self.seconds = Histogram(
            "capsight_sink_request_seconds", "time to answer a request", ("route",), registry=r
        )
        self.received = Counter(
            "capsight_sink_received_bytes", "request body bytes received", registry=r
        )
        self.ingested = Counter(
            "capsight_sink_ingested",
            "ingest outcomes per completed upload",
            ("result",),
            registry=r,
        )
        self.failures = Counter(
            "capsight_sink_ingest_failures", "ingest failures by reason", ("reason",), registry=r
        )
        for reason in FAILURE_REASONS:  # every series exists from the start (rate() needs it)
            self.failures.labels(reason)
        for result in ("ok", "corrupt", "waiting"):
            self.ingested.labels(result)
        if sample is not None:
            r.register(_DatabaseGauges(sample))

    def ingest_outcome(self, result: str, failure: str | None = None) -> None:
        if result:
            self.ingested.labels(result).inc()
        if failure:
            self.failures.labels(failure).inc()


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class Observed:
    """ASGI middleware: counts and times every request, and writes one access-log line
    (method, route, path, status, bytes in and out, milliseconds, client)."""

    def __init__(self, app: ASGIApp, metrics: SinkMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, body_in, body_out = [0], [0], [0]

        async def counted_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                body_in[0] += len(message.get("body", b""))
            return message  # type: ignore[no-any-return]

        async def counted_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                body_out[0] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, counted_send)
        finally:
            seconds = time.perf_counter() - start
            path = scope.get("path", "")
            route = route_of(path)
            code = status[0] or 500
            method = scope.get("method", "")
            m = self.metrics
            m.requests.labels(route, method if len(method) < 10 else "other", str(code)).inc()
            m.seconds.labels(route).observe(seconds)
            m.received.inc(body_in[0])
            client = scope.get("client") or ("", 0)
            access_log.info(
                "%s %s %d",
                method,
                path[:200],
                code,
                extra={
                    "fields": {
                        "route": route,
                        "status": code,
                        "bytes_in": body_in[0],
                        "bytes_out": body_out[0],
                        "ms": round(seconds * 1000, 1),
                        "client": client[0],
                    }
                },
            )
