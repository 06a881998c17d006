"""``/api/v1/windows``: the window list, outcomes per window, one window's summary, and its score receipts."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from validator.api import queries
from validator.api.deps import DEFAULT_LAST, HotkeyQuery, Last, Limit, Offset, SessionDep, WindowPath
from validator.api.schemas import (
    ErrorDetail,
    EvaluationStatus,
    Page,
    ReasonCount,
    Receipt,
    WindowOutcomes,
    WindowPublic,
    WindowStatus,
    WindowSummary,
    receipt,
    window_outcome,
    window_public,
)
from validator.db import repo
from validator.db.models import Window

router = APIRouter(prefix="/windows", tags=["windows"])
NOT_FOUND = {404: {"model": ErrorDetail, "description": "Unknown window."}}


def _window(session: SessionDep, window: int) -> Window:
    row = repo.get_window(session, window=window)
    if row is None:
        raise HTTPException(404, f"unknown window {window}")
    return row


@router.get("", response_model=Page[WindowPublic])
def list_windows(
    session: SessionDep, status: WindowStatus | None = None, limit: Limit = 50, offset: Offset = 0
) -> Page[WindowPublic]:
    """Windows, newest first; seeds only for windows whose scoring is final."""
    rows = repo.windows(session, limit=limit, offset=offset, status=status)
    total = repo.count_windows(session, status=status)
    return Page(total=total, limit=limit, offset=offset, items=[window_public(w) for w in rows])


# Declared before ``/{window}`` so that "outcomes" is never tried as a window number.
@router.get("/outcomes", response_model=WindowOutcomes)
def window_outcomes(session: SessionDep, last: Last = DEFAULT_LAST) -> WindowOutcomes:
    """Receipts per window counted by status (accepted, rejected, missing, unevaluated), oldest first."""
    rows = queries.window_outcomes(session, last=last)
    return WindowOutcomes(last=last, items=[window_outcome(w, s, c) for w, s, c in rows])


@router.get("/{window}", response_model=WindowSummary, responses=NOT_FOUND)
def window_summary(session: SessionDep, window: WindowPath) -> WindowSummary:
    row = _window(session, window)
    reasons = repo.rejections_by_reason(session, from_window=window, to_window=window)
    return WindowSummary(
        **window_public(row).model_dump(),
        counts=repo.window_counts(session, window=window),
        rejections=[ReasonCount(reason=r, count=n) for r, n in reasons.items()],
        weights_set=row.status == "weights_set",
    )


@router.get("/{window}/evaluations", response_model=Page[Receipt], responses=NOT_FOUND)
def window_evaluations(
    session: SessionDep,
    window: WindowPath,
    status: EvaluationStatus | None = None,
    hotkey: HotkeyQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[Receipt]:
    """The window's score receipts by uid; filter by status or by one peer's hotkey."""
    row = _window(session, window)
    if hotkey is not None:
        one = repo.evaluation(session, window=window, hotkey=hotkey)
        rows = [one] if one is not None and (status is None or one.status == status) else []
        page, total = rows[offset : offset + limit], len(rows)
    else:
        page = repo.window_evaluations(session, window=window, limit=limit, offset=offset, status=status)
        total = repo.count_window_evaluations(session, window=window, status=status)
    items = [receipt(r, window_status=row.status) for r in page]
    return Page(total=total, limit=limit, offset=offset, items=items)
