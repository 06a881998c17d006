"""``/api/v1/health``: is the database reachable, is Redis, and which window was scored last."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from validator.api.deps import CacheDep
from validator.api.schemas import Health
from validator.db import repo

router = APIRouter(tags=["health"])


def _database(request: Request) -> tuple[bool, int | None]:
    try:
        with request.app.state.sessions() as session:
            return True, repo.last_scored_window(session)
    except sa.exc.SQLAlchemyError:
        return False, None


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Database down."}})
async def health(request: Request, cache: CacheDep) -> Health | JSONResponse:
    """``ok``; ``degraded`` when Redis is configured but down (served uncached); 503 without a database."""
    db_ok, last = await run_in_threadpool(_database, request)
    redis_state = await cache.ping()
    status = "down" if not db_ok else ("degraded" if redis_state == "down" else "ok")
    body = Health(
        status=status, database="ok" if db_ok else "error", redis=redis_state,  # type: ignore[arg-type]
        last_scored_window=last, version=request.app.version,
    )
    if not db_ok:
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    return body
