"""``/api/v1/peers``: current state of peers, one peer, its receipts and its score series over windows."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from validator.api import queries
from validator.api.deps import (
    DEFAULT_LAST,
    HotkeyPath,
    HotkeyQuery,
    Last,
    Limit,
    Offset,
    SessionDep,
    UidPath,
    UidQuery,
)
from validator.api.schemas import (
    ErrorDetail,
    Page,
    PeerPublic,
    PeerScores,
    Receipt,
    ScorePoint,
    peer_public,
    receipt,
)
from validator.db import repo

router = APIRouter(prefix="/peers", tags=["peers"])
NOT_FOUND = {404: {"model": ErrorDetail, "description": "Unknown peer."}}


@router.get("", response_model=Page[PeerPublic])
def list_peers(
    session: SessionDep, uid: UidQuery = None, hotkey: HotkeyQuery = None, limit: Limit = 50, offset: Offset = 0
) -> Page[PeerPublic]:
    """Peers by uid (deregistered hotkeys last), optionally filtered by uid or hotkey."""
    rows, total = queries.list_peers(session, limit=limit, offset=offset, uid=uid, hotkey=hotkey)
    last = repo.last_scored_window(session)
    return Page(total=total, limit=limit, offset=offset, items=[peer_public(p, last) for p in rows])


@router.get("/by-uid/{uid}", response_model=PeerPublic, responses=NOT_FOUND)
def peer_by_uid(session: SessionDep, uid: UidPath) -> PeerPublic:
    row = repo.peer(session, uid=uid)
    if row is None:
        raise HTTPException(404, f"no peer holds uid {uid}")
    return peer_public(row, repo.last_scored_window(session))


@router.get("/{hotkey}", response_model=PeerPublic, responses=NOT_FOUND)
def peer_by_hotkey(session: SessionDep, hotkey: HotkeyPath) -> PeerPublic:
    row = repo.peer(session, hotkey=hotkey)
    if row is None:
        raise HTTPException(404, f"unknown peer {hotkey}")
    return peer_public(row, repo.last_scored_window(session))


@router.get("/{hotkey}/history", response_model=Page[Receipt], responses=NOT_FOUND)
def peer_history(session: SessionDep, hotkey: HotkeyPath, limit: Limit = 50, offset: Offset = 0) -> Page[Receipt]:
    """The peer's score receipts, newest window first."""
    if repo.peer(session, hotkey=hotkey) is None:
        raise HTTPException(404, f"unknown peer {hotkey}")
    rows = repo.peer_history(session, hotkey=hotkey, limit=limit, offset=offset)
    statuses = queries.window_statuses(session, windows=(r.window for r in rows))
    items = [receipt(r, window_status=statuses.get(r.window, "open")) for r in rows]
    total = queries.count_peer_history(session, hotkey=hotkey)
    return Page(total=total, limit=limit, offset=offset, items=items)


@router.get("/{hotkey}/scores", response_model=PeerScores, responses=NOT_FOUND)
def peer_scores(session: SessionDep, hotkey: HotkeyPath, last: Last = DEFAULT_LAST) -> PeerScores:
    """The peer's score, weight and rating over its last ``last`` receipts, oldest first (for charts)."""
    if repo.peer(session, hotkey=hotkey) is None:
        raise HTTPException(404, f"unknown peer {hotkey}")
    rows = queries.peer_scores(session, hotkey=hotkey, last=last)
    return PeerScores(hotkey=hotkey, last=last, items=[ScorePoint.model_validate(r) for r in rows])
