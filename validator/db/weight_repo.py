"""The validator's weight sets: claimed before the extrinsic, then marked with its outcome.

A window's weight set is unique (``weight_sets.window``), so a restarted validator never sets
weights for one window twice; ``validator.setweights`` drives the claim/outcome sequence and
the score API reads the latest set. Kept apart from ``validator.db.repo`` (receipts, peers,
windows) because it is the one table tied to the chain's extrinsics; it shares that module's
conventions and its session helpers (Session first, keyword-only, commit per write). The
scores weights are computed from are read here too (:func:`current_scores`), so the weight
setter holds no SQL.

A set stays ``pending`` while it may still be sent: waiting out the chain's rate limit, or
retried after a failed send. Its retry state is two columns, ``sends`` and
``next_try_block``, so a restarted validator resumes the count; its ``tx_detail`` is the set's
log for people, one line per event (:func:`attempt_line`, :func:`wait_line`)::

    #1 block 1205 retry 1207: ChainUnavailableError: ...   (send 1 failed; next try at 1207)
    wait block 1207 retry 1300: weights rate limit ...       (no send; next try at 1300)
    #2 block 1300: success

so the API shows every attempt's outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from validator.db.models import WEIGHT_TX_STATUSES, Peer, WeightSet, Window, utcnow
from validator.db.repo import _check_page, _check_status, _committed, _insert

TxStatus = Literal["pending", "success", "failed"]

#: A log line's outcome text is cut here: a chain error can be long, and the log holds several.
MAX_LINE_CHARS = 300


def current_scores(session: Session) -> dict[str, float]:
    """Hotkey -> current final score, for every peer the validator has state for."""
    return {hotkey: float(score) for hotkey, score in session.execute(sa.select(Peer.hotkey, Peer.score))}


def attempt_line(number: int, block: int, outcome: str, retry_at: int | None = None) -> str:
    """The log line of send ``number`` at ``block`` (``retry_at``: when the next send is due)."""
    retry = f" retry {retry_at}" if retry_at is not None else ""
    return f"#{number} block {block}{retry}: {outcome}"[:MAX_LINE_CHARS]


def wait_line(block: int, until: int, reason: str) -> str:
    """The log line of a wait (no send) at ``block`` until ``until``."""
    return f"wait block {block} retry {until}: {reason}"[:MAX_LINE_CHARS]


@dataclass(frozen=True)
class UnsentSet:
    """A claimed weight set not yet on chain, with what its log says about earlier tries."""

    window: int
    uids: list[int]
    weights: list[float]
    version_key: int
    claimed_block: int | None
    sends: int  # sends made so far (failed ones: a pending set has no successful send)
    next_try_block: int  # the block before which it is not tried again (0: now)

    @classmethod
    def of(cls, row: WeightSet) -> UnsentSet:
        return cls(window=row.window, uids=[int(u) for u in row.uids], weights=[float(w) for w in row.weights],
                   version_key=int(row.version_key), claimed_block=row.block, sends=int(row.sends or 0),
                   next_try_block=int(row.next_try_block or 0))


def unsent_weight_sets(session: Session) -> list[UnsentSet]:
    """Pending weight sets (claimed, not yet sent or to be retried), oldest window first."""
    stmt = sa.select(WeightSet).where(WeightSet.tx_status == "pending").order_by(WeightSet.window)
    return [UnsentSet.of(row) for row in session.scalars(stmt)]


def record_weight_set(
    session: Session,
    *,
    window: int,
    uids: Sequence[int],
    weights: Sequence[float],
    version_key: int,
    block: int | None = None,
    tx_status: TxStatus = "pending",
    tx_detail: str | None = None,
    set_at: datetime | None = None,
) -> bool:
    """Claim the weight set of ``window`` and commit; False if the window already has one.

    Call it *before* submitting the extrinsic (``tx_status="pending"``), then
    :func:`update_weight_set` with the outcome: a validator killed in between will not set
    weights for that window a second time.
    """
    if len(uids) != len(weights):
        raise ValueError(f"{len(uids)} uids but {len(weights)} weights")
    _check_status(tx_status, WEIGHT_TX_STATUSES, "tx_status")

    def write() -> bool:
        stmt = (
            _insert(session, WeightSet)
            .values(
                window=window,
                uids=[int(u) for u in uids],
                weights=[float(w) for w in weights],
                version_key=version_key,
                block=block,
                tx_status=tx_status,
                tx_detail=tx_detail,
                set_at=set_at or utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["window"])
            .returning(WeightSet.id)
        )
        inserted = session.execute(stmt).scalar_one_or_none() is not None
        if inserted and tx_status == "success":
            _mark_weights_set(session, window)
        return inserted

    return cast(bool, _committed(session, write))


def update_weight_set(
    session: Session,
    *,
    window: int,
    tx_status: TxStatus,
    block: int | None = None,
    tx_detail: str | None = None,
    log: str | None = None,
    sends: int | None = None,
    next_try_block: int | None = None,
) -> bool:
    """Record the extrinsic's outcome for ``window``'s weight set; commit. False if none.

    ``tx_detail`` replaces the detail; ``log`` appends a line to it instead (the set's log,
    see the module docstring). ``block`` is left as it is when None: a pending set keeps the
    block it was claimed at, which ``validator.setweights.applied_on_chain`` compares with.
    ``sends`` sets the count of sends made when given; ``next_try_block`` is set on every call
    (None: try again at once).
    """
    _check_status(tx_status, WEIGHT_TX_STATUSES, "tx_status")

    def write() -> bool:
        values: dict[str, Any] = {"tx_status": tx_status, "next_try_block": next_try_block}
        if sends is not None:
            values["sends"] = sends
        if block is not None:
            values["block"] = block
        if tx_detail is not None:
            values["tx_detail"] = tx_detail
        if log is not None:
            before = session.scalar(sa.select(WeightSet.tx_detail).where(WeightSet.window == window))
            values["tx_detail"] = f"{before}\n{log}" if before else log
        stmt = sa.update(WeightSet).where(WeightSet.window == window).values(**values)
        found = bool(session.execute(stmt).rowcount)
        if found and tx_status == "success":
            _mark_weights_set(session, window)
        return found

    return cast(bool, _committed(session, write))


def _mark_weights_set(session: Session, window: int) -> None:
    stmt = (
        sa.update(Window)
        .where(Window.window == window, Window.status == "scored")
        .values(status="weights_set")
    )
    session.execute(stmt)


def has_weight_set(session: Session, *, window: int) -> bool:
    """Whether ``window``'s weight set is claimed (whatever its outcome)."""
    return session.scalar(sa.select(sa.func.count()).select_from(WeightSet).where(WeightSet.window == window)) > 0


def latest_weight_set(session: Session, *, successful_only: bool = False) -> WeightSet | None:
    """The weight set of the highest window (only successful extrinsics if asked)."""
    stmt = sa.select(WeightSet).order_by(WeightSet.window.desc()).limit(1)
    if successful_only:
        stmt = stmt.where(WeightSet.tx_status == "success")
    return session.scalars(stmt).first()


def weight_sets(session: Session, *, limit: int = 50, offset: int = 0) -> list[WeightSet]:
    """Weight sets, newest window first."""
    _check_page(limit, offset)
    stmt = sa.select(WeightSet).order_by(WeightSet.window.desc()).limit(limit).offset(offset)
    return list(session.scalars(stmt))
