"""``/api/v1/health``: is the database reachable, is Redis, which window was scored last, and is the
validator following the subnet's shared model (``degraded`` while it cannot)."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from validator.api.deps import CacheDep
from validator.api.schemas import FollowPublic, Health, follow_public
from validator.db import repo

router = APIRouter(tags=["health"])


def _database(request: Request) -> tuple[bool, int | None, FollowPublic | None]:
    try:
        with request.app.state.sessions() as session:
            row = repo.follow_state(session)
            return True, repo.last_scored_window(session), follow_public(row) if row is not None else None
    except sa.exc.SQLAlchemyError:
        return False, None, None


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Database down."}})
async def health(request: Request, cache: CacheDep) -> Health | JSONResponse:
    """``ok``; ``degraded`` when Redis is configured but down (served uncached) or the validator cannot
    follow the shared model (``follow.detail`` says why); 503 without a database."""
    db_ok, last, follow = await run_in_threadpool(_database, request)
    redis_state = await cache.ping()
    degraded = redis_state == "down" or (follow is not None and not follow.in_sync)
    status = "down" if not db_ok else ("degraded" if degraded else "ok")
    body = Health(
        status=status, database="ok" if db_ok else "error", redis=redis_state,  # type: ignore[arg-type]
        last_scored_window=last, version=request.app.version, follow=follow,
    )
    if not db_ok:
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    return body
