"""The validator's weight sets: claimed before the extrinsic, then marked with its outcome.

A window's weight set is unique (``weight_sets.window``), so a restarted validator never sets
weights for one window twice; ``validator.setweights`` drives the claim/outcome sequence and
the score API reads the latest set. Kept apart from ``validator.db.repo`` (receipts, peers,
windows) because it is the one table tied to the chain's extrinsics; it shares that module's
conventions and its session helpers (Session first, keyword-only, commit per write).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from validator.db.models import WEIGHT_TX_STATUSES, WeightSet, Window, utcnow
from validator.db.repo import _check_page, _check_status, _committed, _insert

TxStatus = Literal["pending", "success", "failed"]


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
) -> bool:
    """Record the extrinsic's outcome for ``window``'s weight set; commit. False if none."""
    _check_status(tx_status, WEIGHT_TX_STATUSES, "tx_status")

    def write() -> bool:
        values: dict[str, Any] = {"tx_status": tx_status}
        if block is not None:
            values["block"] = block
        if tx_detail is not None:
            values["tx_detail"] = tx_detail
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
