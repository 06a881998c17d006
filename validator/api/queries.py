"""Read queries the score API needs beyond ``validator.db.repo``'s API reads.

Same style as the repository: plain functions, the ``Session`` first, everything else
keyword-only. The API uses ``repo.leaderboard``/``peer``/``peer_history``/
``window_evaluations``/``rejections_by_reason``/``windows``/``window_counts`` and
``weight_repo.latest_weight_set`` directly; what is here is list filtering, the window status
needed to decide whether a receipt's seed may be published, per-window counts for the
timeline, and the chart series over the last N windows (model loss, outcomes, a peer's scores),
each bounded by ``last`` and read through an index so a page stays fast at 256 peers x 1,000
windows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row
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


def model_loss_stmt(*, last: int) -> sa.Select[Any]:
    """The statement of :func:`model_loss` (the benchmark prints its plan)."""
    loss = (
        sa.select(Evaluation.loss_before_random)
        .where(Evaluation.window == Window.window, Evaluation.loss_before_random.is_not(None))
        .limit(1)
        .correlate(Window)
        .scalar_subquery()
    )
    return (
        sa.select(Window.window, Window.status, Window.base_model_hash, Window.next_model_hash, Window.publisher,
                  Window.num_submitted, Window.num_evaluated, loss.label("loss_before_random"))
        .order_by(Window.window.desc())
        .limit(last)
    )


def model_loss(session: Session, *, last: int) -> list[Row[Any]]:
    """The ``last`` most recent windows, oldest first, with theta_W's loss on the random pages.

    Every evaluated receipt of a window carries the same "before" loss on the window's random
    pages (theta_W is scored once per page, before any peer's step), so one receipt per window is
    enough: a correlated ``LIMIT 1`` through the (window, status) index instead of aggregating every
    peer's row (0.2 ms instead of 23 ms for 200 windows x 256 peers on SQLite). Receipts scored by
    different workers may differ in the last float bits; any one of them is the window's value.
    """
    return list(reversed(session.execute(model_loss_stmt(last=last)).all()))


def window_outcomes(session: Session, *, last: int) -> list[tuple[int, str, dict[str, int]]]:
    """(window, status, receipts counted by status) of the ``last`` most recent windows, oldest first."""
    rows = session.execute(sa.select(Window.window, Window.status).order_by(Window.window.desc()).limit(last)).all()
    if not rows:
        return []
    counts = counts_by_window(session, from_window=int(rows[-1][0]), to_window=int(rows[0][0]))
    return [(int(w), str(s), counts.get(int(w), {})) for w, s in reversed(rows)]


def peer_scores_stmt(*, hotkey: str, last: int) -> sa.Select[Any]:
    """The statement of :func:`peer_scores` (the benchmark prints its plan)."""
    e = Evaluation
    return (
        sa.select(e.window, e.status, e.final_score, e.weight, e.rating_mu_after, e.rating_sigma_after,
                  (e.loss_before_assigned - e.loss_after_assigned).label("loss_improvement_assigned"),
                  (e.loss_before_random - e.loss_after_random).label("loss_improvement_random"))
        .where(e.hotkey == hotkey)
        .order_by(e.window.desc())
        .limit(last)
    )


def peer_scores(session: Session, *, hotkey: str, last: int) -> list[Row[Any]]:
    """One peer's score, weight, rating and loss improvements over its ``last`` receipts, oldest first.

    Plain columns instead of ORM receipts: a chart needs eight numbers per window, and loading
    full rows (JSON details included) for 1,000 windows is what would make the peer page slow.
    """
    return list(reversed(session.execute(peer_scores_stmt(hotkey=hotkey, last=last)).all()))
