"""``/api/v1/leaderboard``, ``/weights/latest`` and ``/rejections``: the scores and their outcome."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.exceptions import RequestValidationError

from validator.api import queries
from validator.api.deps import Limit, Offset, SessionDep, WindowQuery
from validator.api.schemas import (
    ErrorDetail,
    Leaderboard,
    LeaderboardEntry,
    ReasonCount,
    Rejections,
    WeightSetPublic,
    peer_public,
    weight_set_public,
)
from validator.db import repo, weight_repo

router = APIRouter(tags=["scores"])


@router.get("/leaderboard", response_model=Leaderboard)
def leaderboard(session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> Leaderboard:
    """Registered peers by score, highest first (served from the ``peers`` score index)."""
    last = repo.last_scored_window(session)
    rows = repo.leaderboard(session, limit=limit, offset=offset)
    items = [
        LeaderboardEntry(rank=offset + i + 1, **peer_public(p, last).model_dump()) for i, p in enumerate(rows)
    ]
    total = repo.count_peers(session)
    return Leaderboard(total=total, limit=limit, offset=offset, items=items, last_scored_window=last)


@router.get(
    "/weights/latest",
    response_model=WeightSetPublic,
    responses={404: {"model": ErrorDetail, "description": "No weights set yet."}},
)
def latest_weights(session: SessionDep, successful_only: bool = False) -> WeightSetPublic:
    """The weight set of the highest window, with each uid's current hotkey."""
    row = weight_repo.latest_weight_set(session, successful_only=successful_only)
    if row is None:
        raise HTTPException(404, "no weights set yet")
    return weight_set_public(row, queries.hotkeys_by_uid(session, uids=row.uids))


@router.get("/rejections", response_model=Rejections)
def rejections(session: SessionDep, from_window: WindowQuery = None, to_window: WindowQuery = None) -> Rejections:
    """Rejected (by reason) and missing receipts counted over ``[from_window, to_window]``.

    Both bounds are optional and inclusive; ``from_window`` after ``to_window`` is a 422.
    """
    if from_window is not None and to_window is not None and from_window > to_window:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "from_window"), "msg": "from_window is after to_window",
              "input": from_window}]
        )
    counts = repo.rejections_by_reason(session, from_window=from_window, to_window=to_window)
    return Rejections(
        from_window=from_window, to_window=to_window, total=sum(counts.values()),
        reasons=[ReasonCount(reason=r, count=n) for r, n in counts.items()],
    )
