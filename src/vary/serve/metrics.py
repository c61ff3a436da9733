"""Prometheus metrics for the server (prometheus-client), served at GET /metrics in the text format.

    vary_requests_total{endpoint, method, status}   HTTP requests by route template and status code
    vary_request_seconds{endpoint}                  latency histogram (a stream: until its last byte)
    vary_queue_in_use / vary_queue_capacity         admitted requests (in flight or waiting) and the bound
    vary_batch_waiting                              generation jobs waiting for a batch
    vary_batch_size                                 histogram of the rows per generate() batch
    vary_generated_tokens_total                     new tokens handed back to clients

Each app has its own registry, so several apps in one process (tests) do not share counts.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vary_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("vary_request_seconds", "HTTP request latency (streams: until the last byte)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queue_in_use = Gauge("vary_queue_in_use", "requests admitted: in flight or waiting", registry=r)
        self.queue_capacity = Gauge("vary_queue_capacity", "admitted requests allowed; more get 503", registry=r)
        self.batch_waiting = Gauge("vary_batch_waiting", "generation jobs waiting for a batch", registry=r)
        self.batch_size = Histogram("vary_batch_size", "rows per generate() batch", buckets=BATCH_BUCKETS, registry=r)
        self.generated_tokens = Counter("vary_generated_tokens", "new tokens generated for clients", registry=r)

    def watch(self, admission, batcher) -> None:
        """Gauges read at scrape time from the app's Admission and Batcher."""
        self.queue_in_use.set_function(lambda: admission.in_use)
        self.queue_capacity.set_function(lambda: admission.capacity)
        self.batch_waiting.set_function(lambda: batcher.depth)

    def install(self, app: FastAPI) -> None:
        """Count every request (ASGI middleware, so streams are timed to their end) and serve GET /metrics."""

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        app.add_middleware(_RequestMetrics, metrics=self)


class _RequestMetrics:
    """Plain ASGI (not @app.middleware("http"), which would buffer streamed responses)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_record(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")  # set by the router: the path template, so ids do not explode the labels
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
