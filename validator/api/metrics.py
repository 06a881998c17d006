"""Prometheus metrics of the score API: requests by route and status, latency by route.

Each app gets its own ``CollectorRegistry`` (not the process-global one) so the API can be
mounted inside the validator, next to the validator's own registry, and tests can build
many apps in one process. Routes are labelled by their template (``/api/v1/peers/{hotkey}``),
never the raw path, so label cardinality stays bounded; unmatched paths share one label.
Templates are matched against the OpenAPI paths (plus ``/metrics``), which also labels
cache hits that never reach the router.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gauntlet_api_requests", "API requests served.", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "gauntlet_api_request_seconds", "API request latency.", ["method", "route"],
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.cache = Counter(
            "gauntlet_api_cache", "Cache lookups by result (hit, miss).", ["result"], registry=self.registry
        )

    def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RouteLabels:
    """Map a request path to its route template, from the app's OpenAPI paths (compiled once)."""

    def __init__(self, templates: Callable[[], Iterable[str]]):
        self._templates = templates
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, path: str) -> str:
        if self._compiled is None:
            self._compiled = [(compile_path(t)[0], t) for t in self._templates()]
        if path.startswith("/static/"):
            return "/static"
        for regex, template in self._compiled:
            if regex.match(path):
                return template
        return "unmatched"


class MetricsMiddleware:
    """Count and time every HTTP request (outermost middleware, so cache hits count too)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, labels: RouteLabels):
        self.app = app
        self.metrics = metrics
        self.labels = labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        cache_result = ""
        t0 = time.perf_counter()

        async def observe(message: Message) -> None:
            nonlocal status, cache_result
            if message["type"] == "http.response.start":
                status = message["status"]
                cache_result = dict(message.get("headers", [])).get(b"x-cache", b"").decode().lower()
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = self.labels(scope["path"])
            method = scope["method"]
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(method, route, str(status)).inc()
            if cache_result:
                self.metrics.cache.labels(cache_result).inc()
