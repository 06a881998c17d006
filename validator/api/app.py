"""The score API and dashboard as one FastAPI app: ``create_app(db_url, redis_url)``.

Read-only over the validator's database (``validator.db``): JSON under ``/api/v1`` (OpenAPI
at ``/openapi.json``, docs at ``/docs``), HTML pages at ``/``, Prometheus at ``/metrics``.
The app owns its engine and its metrics registry, so it can run on its own
(``gauntlet api``, uvicorn) or be mounted inside the validator process
(``parent.mount("/", create_app(url))``). Middleware, outermost first: metrics (counts cache
hits too), then the Redis response cache (``validator.api.cache``).

Errors: bad parameters are 422 with FastAPI's ``detail`` list, unknown peers or windows
404 with ``{"detail": ...}``, and a database that cannot be reached is a 503, not a 500.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import pass_context
from sqlalchemy.engine import Engine

from validator.api.cache import CacheMiddleware, ResponseCache
from validator.api.deps import strict_query
from validator.api.metrics import ApiMetrics, MetricsMiddleware, RouteLabels
from validator.api.routes import dashboard, health, model, peers, scores, validators, windows
from validator.db import repo
from validator.db.session import make_engine, session_factory

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
VERSION = "1.0.0"
STATIC_DIR = Path(__file__).resolve().parent / "static"


def _short(value: str | None) -> str:
    return value if not value or len(value) <= 14 else f"{value[:6]}…{value[-6:]}"


def _num(value: float | None) -> str:
    if value is None:
        return "\u2013"  # en dash
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")


@pass_context
def _path_for(context: Any, name: str, /, **params: Any) -> str:
    """Root-relative URL of a route (works behind a proxy and when mounted under a prefix).

    ``url_for`` walks the route table on every call, which was most of the time spent rendering a
    256-row leaderboard; so each route is resolved once per request with placeholders, and values
    that need no escaping (hotkeys, window numbers) are substituted into that path.
    """
    request: Request = context["request"]
    values = {k: str(v) for k, v in params.items()}
    if not all(_URL_SAFE.fullmatch(v) for v in values.values()):
        return str(request.url_for(name, **params).path)
    paths: dict[tuple[str, tuple[str, ...]], str] | None = getattr(request.state, "route_paths", None)
    if paths is None:
        paths = request.state.route_paths = {}
    key = (name, tuple(sorted(values)))
    if key not in paths:
        paths[key] = str(request.url_for(name, **{k: f"gauntletparam{k}x" for k in key[1]}).path)
    path = paths[key]
    for k, v in values.items():
        path = path.replace(f"gauntletparam{k}x", v)
    return path


def _api_router() -> APIRouter:
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(strict_query)])
    for module in (peers, windows, scores, model, validators, health):
        api.include_router(module.router)
    return api


def create_app(
    db_url: str,
    redis_url: str | None = None,
    *,
    engine: Engine | None = None,
    cache_ttl_s: int = 300,
    last_window_ttl_s: float = 1.0,
) -> FastAPI:
    """Build the app over the database at ``db_url`` (or ``engine``), cached in Redis if given."""
    engine = engine or make_engine(db_url)
    sessions = session_factory(engine)

    def last_scored() -> int | None:
        with sessions() as session:
            return repo.last_scored_window(session)

    cache = ResponseCache(redis_url, last_scored, ttl_s=cache_ttl_s, last_window_ttl_s=last_window_ttl_s)
    metrics = ApiMetrics()
    app = FastAPI(
        title="Gauntlet score API",
        version=VERSION,
        description="Scores of a Gauntlet validator with the evidence behind them (read-only).",
    )
    app.state.engine, app.state.sessions, app.state.cache, app.state.metrics = engine, sessions, cache, metrics
    app.include_router(_api_router())
    app.include_router(dashboard.router)
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False, name="metrics")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(sa.exc.OperationalError, _database_unavailable)
    app.add_middleware(CacheMiddleware, cache=cache)
    labels = RouteLabels(lambda: [*app.openapi()["paths"], "/metrics"])
    app.add_middleware(MetricsMiddleware, metrics=metrics, labels=labels)
    env = dashboard.templates.env
    env.filters["short"], env.filters["num"] = _short, _num
    env.globals["path_for"] = _path_for
    return app


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return JSONResponse({"detail": "database unavailable"}, status_code=503)
