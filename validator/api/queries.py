"""Read queries the score API needs beyond ``validator.db.repo``'s API reads.

Same style as the repository: plain functions, the ``Session`` first, everything else
keyword-only. The API uses ``repo.leaderboard``/``peer``/``peer_history``/
``window_evaluations``/``rejections_by_reason``/``windows``/``window_counts`` and
``weight_repo.latest_weight_set`` directly; what is here is list filtering, the window status
needed to decide whether a receipt's seed may be published, and per-window counts for the
timeline.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from validator.db.models import Evaluation, Peer, Window


def list_peers(
    session: Session, *, limit: int, offset: int, uid: int | None = None, hotkey: str | None = None
) -> tuple[list[Peer], int]:
    """Peers by uid (peers without a uid last, then by hotkey) and their total, filtered."""
    where = []
    if uid is not None:
        where.append(Peer.uid == uid)
    if hotkey is not None:
        where.append(Peer.hotkey == hotkey)
    stmt = sa.select(Peer).where(*where).order_by(Peer.uid.is_(None), Peer.uid, Peer.hotkey)
    rows = list(session.scalars(stmt.limit(limit).offset(offset)))
    total = session.scalar(sa.select(sa.func.count()).select_from(Peer).where(*where)) or 0
    return rows, int(total)


def count_peer_history(session: Session, *, hotkey: str) -> int:
    stmt = sa.select(sa.func.count()).select_from(Evaluation).where(Evaluation.hotkey == hotkey)
    return int(session.scalar(stmt) or 0)


def window_statuses(session: Session, *, windows: Iterable[int]) -> dict[int, str]:
    """Status of each of ``windows`` that exists."""
    wanted = sorted(set(windows))
    if not wanted:
        return {}
    stmt = sa.select(Window.window, Window.status).where(Window.window.in_(wanted))
    return {int(w): str(s) for w, s in session.execute(stmt)}


def counts_by_window(session: Session, *, from_window: int, to_window: int) -> dict[int, dict[str, int]]:
    """Receipts counted by status for every window in ``[from_window, to_window]``."""
    stmt = (
        sa.select(Evaluation.window, Evaluation.status, sa.func.count())
        .where(Evaluation.window.between(from_window, to_window))
        .group_by(Evaluation.window, Evaluation.status)
    )
    out: dict[int, dict[str, int]] = {}
    for w, s, n in session.execute(stmt):
        out.setdefault(int(w), {})[str(s)] = int(n)
    return out


def hotkeys_by_uid(session: Session, *, uids: Iterable[int]) -> dict[int, str]:
    """The hotkey currently holding each of ``uids``."""
    wanted = sorted(set(uids))
    if not wanted:
        return {}
    stmt = sa.select(Peer.uid, Peer.hotkey).where(Peer.uid.in_(wanted))
    return {int(u): str(h) for u, h in session.execute(stmt)}


def peer_rejections(session: Session, *, hotkey: str) -> dict[str, int]:
    """One peer's rejected (by reason) and missing receipts, over all windows."""
    reason = sa.func.coalesce(Evaluation.reject_reason, Evaluation.status)
    stmt = (
        sa.select(reason, sa.func.count())
        .where(Evaluation.hotkey == hotkey, Evaluation.status.in_(("rejected", "missing")))
        .group_by(reason)
        .order_by(sa.func.count().desc(), reason)
    )
    return {str(r): int(n) for r, n in session.execute(stmt)}
