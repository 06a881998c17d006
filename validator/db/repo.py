"""Queries and writes of the validator database, as plain functions taking the Session.

Style (FastAPI template): every function takes the ``Session`` first and everything else
keyword-only. Public write functions commit their own unit of work, so a caller cannot
forget to; the composite :func:`mark_window_scored` writes a window's receipts, its peers'
new state and the window's status in **one** transaction, which is what makes a ``kill -9``
mid-window leave either nothing or everything. Writes are idempotent: a receipt is keyed
by (window, hotkey) and upserted (``INSERT .. ON CONFLICT DO UPDATE``), peer fields are set
(never incremented), a scored window is not scored again, and a window's weight set is
unique (``validator.db.weight_repo``), so a restarted validator can redo a window without
double counting.

Reads return ORM rows. A window's random seed is secret until the window is scored; use
``Window.published_seed`` (or check ``Window.is_final``) before showing seeds or receipts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from protocol.follow import FollowStatus
from scoring.final import PeerState
from scoring.ratings import Rating
from validator.db.models import (
    EVALUATION_STATUSES,
    FINAL_WINDOW_STATUSES,
    WINDOW_STATUSES,
    Evaluation,
    FollowState,
    Peer,
    RunConfig,
    Window,
    utcnow,
)

MAX_PAGE = 1000
EvaluationStatus = Literal["accepted", "rejected", "missing", "unevaluated"]
WindowStatus = Literal["open", "scoring", "scored", "weights_set"]


#: The columns a write may set; everything else is the database's (keys, timestamps).
_PEER_COLUMNS = frozenset(c.key for c in Peer.__table__.columns) - {"hotkey", "first_seen_window",
                                                                    "last_seen_window", "updated_at"}
_RECEIPT_COLUMNS = frozenset(c.key for c in Evaluation.__table__.columns) - {"id", "window", "hotkey", "status",
                                                                             "created_at", "updated_at"}


def peer_state(row: Peer | None) -> PeerState:
    """The scoring state (``scoring.final.PeerState``) a ``peers`` row holds; a newcomer's if None."""
    if row is None:
        return PeerState()
    return PeerState(Rating(row.rating_mu, row.rating_sigma), row.bma, row.score, row.inactive_windows,
                     row.banned_until_window, row.evaluated_windows)


def _state_columns(state: PeerState) -> dict[str, Any]:
    return {"rating_mu": state.rating.mu, "rating_sigma": state.rating.sigma, "bma": state.bma,
            "score": state.score, "inactive_windows": state.inactive_windows,
            "banned_until_window": state.banned_until_window, "evaluated_windows": state.evaluated_windows}


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """What a scored window stores for one peer: its uid, new scoring state and the weight it implies."""

    uid: int | None
    state: PeerState
    weight: float = 0.0


# --------------------------------------------------------------------------- helpers


def _insert(session: Session, model: type[Any]) -> Any:
    """The dialect's INSERT (with ``on_conflict_*``) for ``model``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two supported backends
        raise NotImplementedError(f"unsupported database dialect: {dialect}")
    return insert(model)


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")


def _check_status(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")


def _unknown(fields: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    extra = set(fields) - allowed
    if extra:
        raise TypeError(f"unknown {what} field(s): {', '.join(sorted(extra))}")


def _committed(session: Session, write: Any) -> Any:
    """Run ``write()`` and commit; roll back and re-raise on any error."""
    try:
        result = write()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return result


# --------------------------------------------------------------------------- peers


def _apply_peer(session: Session, *, hotkey: str, seen_window: int | None = None, **changes: Any) -> Peer:
    _unknown(changes, _PEER_COLUMNS, "peer")
    peer = session.get(Peer, hotkey)
    if peer is None:
        peer = Peer(hotkey=hotkey)
        session.add(peer)
    if "uid" in changes and changes["uid"] is not None and peer.uid != changes["uid"]:
        # A uid moves to the new hotkey when the old one is deregistered.
        session.execute(
            sa.update(Peer).where(Peer.uid == changes["uid"], Peer.hotkey != hotkey).values(uid=None)
        )
    seen = seen_window
    if seen is not None:
        if peer.first_seen_window is None or seen < peer.first_seen_window:
            peer.first_seen_window = seen
        if peer.last_seen_window is None or seen > peer.last_seen_window:
            peer.last_seen_window = seen
    for name, value in changes.items():
        setattr(peer, name, value)
    session.flush()
    return peer


def upsert_peer(session: Session, *, hotkey: str, seen_window: int | None = None, **columns: Any) -> Peer:
    """Create or update the peer ``hotkey`` and commit: ``columns`` are ``peers`` columns to set.

    Absent columns stay unchanged, an explicit None clears; ``seen_window`` sets the first
    seen window (if unset) and raises the last one. Scoring writes go through
    :func:`mark_window_scored` with a :class:`PeerRecord`; this is for tools and tests.
    """
    return cast(Peer, _committed(session, lambda: _apply_peer(session, hotkey=hotkey, seen_window=seen_window,
                                                              **columns)))


# --------------------------------------------------------------------------- receipts


def _receipt_values(receipt: Evaluation) -> dict[str, Any]:
    """The columns set on a (transient) receipt row: what an upsert writes, nothing it would default."""
    return {k: v for k, v in sa.inspect(receipt).dict.items() if k in _RECEIPT_COLUMNS}


def _upsert_evaluation(session: Session, receipt: Evaluation) -> Evaluation:
    _check_status(receipt.status, EVALUATION_STATUSES, "evaluation status")
    values = {"window": receipt.window, "hotkey": receipt.hotkey, "status": receipt.status,
              **_receipt_values(receipt)}
    stmt = _insert(session, Evaluation).values(**values)
    updates = {name: stmt.excluded[name] for name in values if name not in ("window", "hotkey")}
    updates["updated_at"] = utcnow()
    stmt = stmt.on_conflict_do_update(index_elements=["window", "hotkey"], set_=updates).returning(Evaluation)
    row = session.scalars(stmt, execution_options={"populate_existing": True}).one()
    return cast(Evaluation, row)


def record_evaluation(
    session: Session, *, window: int, hotkey: str, status: EvaluationStatus, **columns: Any,
) -> Evaluation:
    """Write the score receipt of ``hotkey`` in ``window`` and commit; ``columns`` are ``evaluations`` columns.

    Idempotent: recording the same (window, hotkey) again overwrites the given fields of
    the one receipt (fields not given keep their value). The window row must exist
    (:func:`open_window`). An unknown column is a ``TypeError``.
    """
    receipt = Evaluation(window=window, hotkey=hotkey, status=status, **columns)
    return cast(Evaluation, _committed(session, lambda: _upsert_evaluation(session, receipt)))


# --------------------------------------------------------------------------- windows


def open_window(
    session: Session,
    *,
    window: int,
    base_model_hash: str | None = None,
    random_seed_hex: str | None = None,
    started_at: datetime | None = None,
) -> Window:
    """Create window ``window`` as ``open`` (no-op when it exists) and commit; returns the row.

    Unset ``base_model_hash``/``random_seed_hex`` of an existing, not yet final window are
    filled in; values already stored are never changed (the seed is fixed once drawn).
    """

    def write() -> Window:
        values: dict[str, Any] = {"window": window, "status": "open", "started_at": started_at or utcnow()}
        stmt = _insert(session, Window).values(**values).on_conflict_do_nothing(index_elements=["window"])
        session.execute(stmt)
        row = session.get(Window, window, populate_existing=True)
        assert row is not None
        if not row.is_final:
            if row.base_model_hash is None and base_model_hash is not None:
                row.base_model_hash = base_model_hash
            if row.random_seed_hex is None and random_seed_hex is not None:
                row.random_seed_hex = random_seed_hex
        session.flush()
        return row

    return cast(Window, _committed(session, write))


def set_window_status(session: Session, *, window: int, status: WindowStatus) -> bool:
    """Move ``window`` to ``status`` unless it is already final; commit. False if not moved."""
    _check_status(status, WINDOW_STATUSES, "window status")

    def write() -> bool:
        stmt = (
            sa.update(Window)
            .where(Window.window == window, Window.status.not_in(FINAL_WINDOW_STATUSES))
            .values(status=status)
        )
        return bool(session.execute(stmt).rowcount)

    return cast(bool, _committed(session, write))


def _lock_window(session: Session, window: int) -> Window:
    """The window row, created if missing, locked against a concurrent scorer (PostgreSQL)."""
    stmt = _insert(session, Window).values(window=window, status="open", started_at=utcnow())
    session.execute(stmt.on_conflict_do_nothing(index_elements=["window"]))
    row = session.get(Window, window, with_for_update=True, populate_existing=True)
    assert row is not None
    return row


def mark_window_scored(
    session: Session,
    *,
    window: int,
    evaluations: Iterable[Evaluation] = (),
    peers: Mapping[str, PeerRecord] | None = None,
    aggregate_hash: str | None = None,
    random_seed_hex: str | None = None,
    base_model_hash: str | None = None,
    stage_timings: Mapping[str, float] | None = None,
    num_submitted: int | None = None,
    num_evaluated: int | None = None,
    scored_at: datetime | None = None,
) -> bool:
    """Write a window's receipts, its peers' new state and its ``scored`` status atomically.

    Everything commits in one transaction: if anything fails (or the process dies) before
    the commit, nothing of it is stored and the window is still to be scored. Returns False,
    changing nothing, when the window is already scored (a redo after a restart). Counts
    default to the window's receipts: submitted = not ``missing``, evaluated = ``accepted``.
    """

    def write() -> bool:
        row = _lock_window(session, window)
        if row.is_final:
            return False
        for receipt in evaluations:
            if receipt.window is None:
                receipt.window = window
            if receipt.window != window:
                raise ValueError(f"receipt for window {receipt.window} passed for window {window}")
            _upsert_evaluation(session, receipt)
        for hotkey, rec in (peers or {}).items():
            _apply_peer(session, hotkey=hotkey, seen_window=window, uid=rec.uid, weight=rec.weight,
                        **_state_columns(rec.state))
        counts = window_counts(session, window=window)
        row.status = "scored"
        row.scored_at = scored_at or utcnow()
        row.num_submitted = (
            num_submitted
            if num_submitted is not None
            else sum(n for s, n in counts.items() if s != "missing")
        )
        row.num_evaluated = num_evaluated if num_evaluated is not None else counts.get("accepted", 0)
        if aggregate_hash is not None:
            row.aggregate_hash = aggregate_hash
        if random_seed_hex is not None:
            row.random_seed_hex = random_seed_hex
        if base_model_hash is not None:
            row.base_model_hash = base_model_hash
        if stage_timings is not None:
            row.stage_timings = dict(stage_timings)
        session.flush()
        return True

    try:
        return cast(bool, _committed(session, write))
    finally:
        session.expire_all()  # rows touched by a rolled-back write must not look stored


def window_counts(session: Session, *, window: int) -> dict[str, int]:
    """Receipts of ``window`` counted by status.

    One query for both :func:`mark_window_scored`'s default counts and the score API's window
    summary, so the stored counts and the shown ones can never disagree.
    """
    stmt = (
        sa.select(Evaluation.status, sa.func.count())
        .where(Evaluation.window == window)
        .group_by(Evaluation.status)
    )
    return {str(s): int(n) for s, n in session.execute(stmt)}


def record_agreement(session: Session, *, window: int, agreement: dict[str, Any]) -> None:
    """Store how the validators' weights agreed after ``window`` (``validator.agreement``); commit."""
    _committed(session, lambda: session.execute(
        sa.update(Window).where(Window.window == window).values(agreement=agreement)))


def latest_agreement(session: Session) -> tuple[int, dict[str, Any]] | None:
    """The newest window with an agreement measured, and that measurement."""
    row = session.execute(sa.select(Window.window, Window.agreement).where(Window.agreement.is_not(None))
                          .order_by(Window.window.desc()).limit(1)).first()
    return (row[0], row[1]) if row is not None else None


def last_scored_window(session: Session) -> int | None:
    """The highest window whose scoring is final, or None."""
    stmt = sa.select(sa.func.max(Window.window)).where(Window.status.in_(FINAL_WINDOW_STATUSES))
    return session.scalar(stmt)


def first_scored_window(session: Session) -> int | None:
    """The lowest window whose scoring is final, or None."""
    stmt = sa.select(sa.func.min(Window.window)).where(Window.status.in_(FINAL_WINDOW_STATUSES))
    return session.scalar(stmt)


def windows_to_score(session: Session, *, current_window: int, lookback: int | None = None) -> list[int]:
    """Closed windows (before ``current_window``) still to score, oldest first.

    These are the windows stored as ``open``/``scoring`` plus the windows missing from the
    database between the last scored one and ``current_window`` (the validator was down).
    ``lookback`` limits the answer to windows >= ``current_window - lookback``.
    """
    lower = None if lookback is None else current_window - lookback
    stmt = sa.select(Window.window, Window.status).where(Window.window < current_window)
    if lower is not None:
        stmt = stmt.where(Window.window >= lower)
    known = dict(session.execute(stmt).tuples().all())
    pending = {w for w, status in known.items() if status not in FINAL_WINDOW_STATUSES}
    last = last_scored_window(session)
    if last is not None:
        start = last + 1 if lower is None else max(last + 1, lower)
        pending.update(w for w in range(start, current_window) if w not in known)
    return sorted(pending)


def record_decision(session: Session, *, window: int, publisher: str | None, next_model_hash: str) -> None:
    """Note whose aggregate of ``window`` was applied (only for a window this validator has a row for)."""

    def write() -> None:
        session.execute(sa.update(Window).where(Window.window == window)
                        .values(publisher=publisher, next_model_hash=next_model_hash))

    _committed(session, write)


def record_follow_status(session: Session, status: FollowStatus) -> None:
    """Overwrite the one ``follow_state`` row with a ``protocol.follow.FollowStatus``."""

    def write() -> None:
        values = {"state": status.state, "window": status.window, "model_hash": status.model_hash,
                  "publisher": status.publisher, "detail": (status.detail or None) and status.detail[:2000],
                  "failovers": status.failovers, "null_windows": status.null_windows, "updated_at": utcnow()}
        stmt = _insert(session, FollowState).values(id=1, **values)
        session.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=values))

    _committed(session, write)


def follow_state(session: Session) -> FollowState | None:
    return session.get(FollowState, 1, populate_existing=True)


# --------------------------------------------------------------------------- provenance


def record_run_config(
    session: Session, *, config: Mapping[str, Any], version: str | None = None, hotkey: str | None = None
) -> RunConfig:
    """Store the resolved configuration of this validator start and commit."""

    def write() -> RunConfig:
        row = RunConfig(config=dict(config), version=version, hotkey=hotkey)
        session.add(row)
        session.flush()
        return row

    return cast(RunConfig, _committed(session, write))


def latest_run_config(session: Session) -> RunConfig | None:
    return session.scalars(sa.select(RunConfig).order_by(RunConfig.id.desc()).limit(1)).first()


# --------------------------------------------------------------------------- reads (API)


def leaderboard(
    session: Session, *, limit: int = 50, offset: int = 0, registered_only: bool = True
) -> list[Peer]:
    """Peers by score, highest first (ties by hotkey); only those holding a uid by default."""
    _check_page(limit, offset)
    stmt = sa.select(Peer).order_by(Peer.score.desc(), Peer.hotkey).limit(limit).offset(offset)
    if registered_only:
        stmt = stmt.where(Peer.uid.is_not(None))
    return list(session.scalars(stmt))


def count_peers(session: Session, *, registered_only: bool = True) -> int:
    stmt = sa.select(sa.func.count()).select_from(Peer)
    if registered_only:
        stmt = stmt.where(Peer.uid.is_not(None))
    return int(session.scalar(stmt) or 0)


def peer(session: Session, *, hotkey: str | None = None, uid: int | None = None) -> Peer | None:
    """One peer by hotkey or by its current uid (exactly one of them)."""
    if (hotkey is None) == (uid is None):
        raise ValueError("give exactly one of hotkey and uid")
    if hotkey is not None:
        return session.get(Peer, hotkey)
    return session.scalars(sa.select(Peer).where(Peer.uid == uid)).first()


def peer_history(session: Session, *, hotkey: str, limit: int = 50, offset: int = 0) -> list[Evaluation]:
    """A peer's receipts, newest window first."""
    _check_page(limit, offset)
    stmt = (
        sa.select(Evaluation)
        .where(Evaluation.hotkey == hotkey)
        .order_by(Evaluation.window.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt))


def evaluation(session: Session, *, window: int, hotkey: str) -> Evaluation | None:
    """The receipt of ``hotkey`` in ``window``."""
    stmt = sa.select(Evaluation).where(Evaluation.window == window, Evaluation.hotkey == hotkey)
    return session.scalars(stmt).first()


def window_evaluations(
    session: Session,
    *,
    window: int,
    limit: int = 100,
    offset: int = 0,
    status: EvaluationStatus | None = None,
) -> list[Evaluation]:
    """A window's receipts ordered by uid (receipts without a uid last, then by hotkey)."""
    _check_page(limit, offset)
    stmt = sa.select(Evaluation).where(Evaluation.window == window)
    if status is not None:
        _check_status(status, EVALUATION_STATUSES, "evaluation status")
        stmt = stmt.where(Evaluation.status == status)
    stmt = stmt.order_by(Evaluation.uid.is_(None), Evaluation.uid, Evaluation.hotkey)
    return list(session.scalars(stmt.limit(limit).offset(offset)))


def count_window_evaluations(session: Session, *, window: int, status: EvaluationStatus | None = None) -> int:
    stmt = sa.select(sa.func.count()).select_from(Evaluation).where(Evaluation.window == window)
    if status is not None:
        stmt = stmt.where(Evaluation.status == status)
    return int(session.scalar(stmt) or 0)


def rejections_by_reason(
    session: Session, *, from_window: int | None = None, to_window: int | None = None
) -> dict[str, int]:
    """Count of rejected (by reason) and missing (as ``"missing"``) receipts in a window range."""
    reason = sa.func.coalesce(Evaluation.reject_reason, Evaluation.status)
    stmt = sa.select(reason, sa.func.count()).where(Evaluation.status.in_(("rejected", "missing")))
    if from_window is not None:
        stmt = stmt.where(Evaluation.window >= from_window)
    if to_window is not None:
        stmt = stmt.where(Evaluation.window <= to_window)
    stmt = stmt.group_by(reason).order_by(sa.func.count().desc(), reason)
    return {str(r): int(n) for r, n in session.execute(stmt)}


def get_window(session: Session, *, window: int) -> Window | None:
    return session.get(Window, window)


def windows(
    session: Session, *, limit: int = 50, offset: int = 0, status: WindowStatus | None = None
) -> list[Window]:
    """Windows, newest first."""
    _check_page(limit, offset)
    stmt = sa.select(Window).order_by(Window.window.desc()).limit(limit).offset(offset)
    if status is not None:
        _check_status(status, WINDOW_STATUSES, "window status")
        stmt = stmt.where(Window.status == status)
    return list(session.scalars(stmt))


def count_windows(session: Session, *, status: WindowStatus | None = None) -> int:
    stmt = sa.select(sa.func.count()).select_from(Window)
    if status is not None:
        stmt = stmt.where(Window.status == status)
    return int(session.scalar(stmt) or 0)
