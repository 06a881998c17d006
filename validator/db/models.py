"""SQLAlchemy 2 models of the validator's database: windows, peers, score receipts, weight sets.

The validator is the only writer; the score API reads the same tables. Every row that
explains a weight (the per-window, per-peer *score receipt* in ``evaluations``) is kept, so a
miner can reproduce why it got the weight it got. The schema must work unchanged on SQLite
(the embedded default) and PostgreSQL (production): JSON columns use :data:`JSONType`
(``JSON`` on SQLite, ``JSONB`` on PostgreSQL), statuses are short strings guarded by CHECK
constraints rather than database enum types (which complicate migrations), and every
constraint has a deterministic name so Alembic can drop it again on downgrade.

The Alembic migrations in ``migrations/versions`` must match these models exactly; a test
compares them with ``alembic.autogenerate.compare_metadata``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: JSON that is JSONB on PostgreSQL (compact, comparable) and JSON (text) on SQLite.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

#: Window life cycle, in order. The random seed of a window is published from ``scored`` on.
WINDOW_STATUSES = ("open", "scoring", "scored", "weights_set")
#: Windows whose scoring is final (their seed and receipts may be published).
FINAL_WINDOW_STATUSES = ("scored", "weights_set")
#: Outcome of one peer in one window.
EVALUATION_STATUSES = ("accepted", "rejected", "missing", "unevaluated")
#: State of the ``set_weights`` extrinsic of a weight set.
WEIGHT_TX_STATUSES = ("pending", "success", "failed")

#: OpenSkill defaults (Plackett-Luce: mu = 25, sigma = mu / 3) for a peer seen the first time.
DEFAULT_RATING_MU = 25.0
DEFAULT_RATING_SIGMA = 25.0 / 3.0

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware current time (SQLite stores it as naive UTC text)."""
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: sa.DateTime(timezone=True),
        float: sa.Double(),
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        list[int]: JSONType,
        list[float]: JSONType,
        list[str]: JSONType,
    }


class Window(Base):
    """One evaluation window: its life-cycle status, secret seed and stage timings."""

    __tablename__ = "windows"
    __table_args__ = (
        sa.CheckConstraint(_in("status", WINDOW_STATUSES), name="status"),
        sa.Index(None, "status", "window"),
    )

    window: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(16), default="open", server_default="open")
    base_model_hash: Mapped[str | None] = mapped_column(sa.String(128))
    # Secret until the window is scored: the API must publish it only for FINAL_WINDOW_STATUSES.
    random_seed_hex: Mapped[str | None] = mapped_column(sa.String(128))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    scored_at: Mapped[datetime | None]
    stage_timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    aggregate_hash: Mapped[str | None] = mapped_column(sa.String(128))  # this validator's proposal
    # Whose proposal every node applied (protocol.follow; None until decided or for a null window)
    # and the resulting theta_{W+1}: equal across validators that follow the same history.
    publisher: Mapped[str | None] = mapped_column(sa.String(64))
    next_model_hash: Mapped[str | None] = mapped_column(sa.String(128))
    num_submitted: Mapped[int] = mapped_column(default=0, server_default="0")
    num_evaluated: Mapped[int] = mapped_column(default=0, server_default="0")
    # How the validators' weights on chain agreed after this window (validator.agreement): one
    # entry per declared validator, measured against this validator's own row. None: not measured.
    agreement: Mapped[dict[str, Any] | None]
    # Lets the ORM order inserts (window before its receipts); load explicitly in the API.
    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="window_row", passive_deletes=True)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_WINDOW_STATUSES

    @property
    def published_seed(self) -> str | None:
        """The random seed if it may be shown (the window is scored), else None."""
        return self.random_seed_hex if self.is_final else None


class Peer(Base):
    """Current state of one miner hotkey: rating, moving average, score and weight."""

    __tablename__ = "peers"
    __table_args__ = (
        sa.UniqueConstraint("uid"),  # a uid belongs to one hotkey at a time (NULLs are distinct)
    )

    hotkey: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    uid: Mapped[int | None]
    first_seen_window: Mapped[int | None]
    last_seen_window: Mapped[int | None]
    rating_mu: Mapped[float] = mapped_column(default=DEFAULT_RATING_MU)
    rating_sigma: Mapped[float] = mapped_column(default=DEFAULT_RATING_SIGMA)
    bma: Mapped[float] = mapped_column(default=0.0)
    score: Mapped[float] = mapped_column(default=0.0)
    weight: Mapped[float] = mapped_column(default=0.0)
    inactive_windows: Mapped[int] = mapped_column(default=0, server_default="0")
    banned_until_window: Mapped[int | None]
    #: Windows in which the peer was evaluated: bias correction of ``bma`` (``scoring.work``).
    evaluated_windows: Mapped[int] = mapped_column(default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Evaluation(Base):
    """The score receipt of one peer in one window: inputs, losses, filters and rating change."""

    __tablename__ = "evaluations"
    __table_args__ = (
        sa.UniqueConstraint("window", "hotkey"),
        sa.CheckConstraint(_in("status", EVALUATION_STATUSES), name="status"),
        sa.Index(None, "window", "status"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    window: Mapped[int] = mapped_column(sa.ForeignKey("windows.window", ondelete="CASCADE"))
    window_row: Mapped[Window] = relationship(back_populates="evaluations")
    hotkey: Mapped[str] = mapped_column(sa.String(64))
    uid: Mapped[int | None]
    status: Mapped[str] = mapped_column(sa.String(16))
    # Upload
    payload_hash: Mapped[str | None] = mapped_column(sa.String(128))
    upload_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    uploaded_at: Mapped[datetime | None]
    # Stage 1 filters
    filters_passed: Mapped[list[str]] = mapped_column(default=list)
    reject_reason: Mapped[str | None] = mapped_column(sa.String(64))
    reject_detail: Mapped[str | None] = mapped_column(sa.Text)
    copy_of_hotkey: Mapped[str | None] = mapped_column(sa.String(64))
    # Stage 2 inputs
    assigned_page_ids: Mapped[list[int] | None]
    random_page_ids: Mapped[list[int] | None]
    random_seed_hex: Mapped[str | None] = mapped_column(sa.String(128))
    base_model_hash: Mapped[str | None] = mapped_column(sa.String(128))
    # Stage 2 results
    loss_before_assigned: Mapped[float | None]
    loss_after_assigned: Mapped[float | None]
    loss_before_random: Mapped[float | None]
    loss_after_random: Mapped[float | None]
    contribution: Mapped[float | None]
    indicator: Mapped[float | None]
    bma_after: Mapped[float | None]
    estimate: Mapped[float | None]  # first-order predicted loss change
    sync_score: Mapped[float | None]
    # Rating and weight
    rating_mu_before: Mapped[float | None]
    rating_sigma_before: Mapped[float | None]
    rating_mu_after: Mapped[float | None]
    rating_sigma_after: Mapped[float | None]
    final_score: Mapped[float | None]
    weight: Mapped[float | None]
    eval_seconds: Mapped[float | None]
    # Anything else worth showing (norms, overlaps, ...), without a migration.
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WeightSet(Base):
    """Weights set on chain for one window; the unique window is what stops a second set."""

    __tablename__ = "weight_sets"
    __table_args__ = (
        sa.UniqueConstraint("window"),
        sa.CheckConstraint(_in("tx_status", WEIGHT_TX_STATUSES), name="tx_status"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    window: Mapped[int]
    block: Mapped[int | None] = mapped_column(sa.BigInteger)
    version_key: Mapped[int] = mapped_column(sa.BigInteger)
    uids: Mapped[list[int]]
    weights: Mapped[list[float]]
    set_at: Mapped[datetime] = mapped_column(default=utcnow)
    tx_status: Mapped[str] = mapped_column(sa.String(16), default="pending", server_default="pending")
    tx_detail: Mapped[str | None] = mapped_column(sa.Text)  # the set's log: one line per wait or send
    #: Sends made so far; a pending set's were all failures (``validator.setweights`` retries it).
    sends: Mapped[int] = mapped_column(default=0, server_default="0")
    #: The block before which a pending set is not tried again (rate limit or backoff); None: now.
    next_try_block: Mapped[int | None] = mapped_column(sa.BigInteger)


class RunConfig(Base):
    """The resolved configuration of one validator start, kept for provenance."""

    __tablename__ = "run_config"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[str | None] = mapped_column(sa.String(64))
    hotkey: Mapped[str | None] = mapped_column(sa.String(64))
    config: Mapped[dict[str, Any]]


class FollowState(Base):
    """Where this validator stands with the shared model (one row): served by ``/health``."""

    __tablename__ = "follow_state"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(sa.String(16))  # starting, following, waiting, stalled
    window: Mapped[int | None]  # the window whose start theta this validator holds
    model_hash: Mapped[str | None] = mapped_column(sa.String(128))
    publisher: Mapped[str | None] = mapped_column(sa.String(64))  # who publishes the next aggregate
    detail: Mapped[str | None] = mapped_column(sa.Text)
    failovers: Mapped[int] = mapped_column(default=0, server_default="0")
    null_windows: Mapped[int] = mapped_column(default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# Indexes for the API's access patterns (declared here because they need column expressions).
# Leaderboard: peers by score, highest first. Peer history: one hotkey's receipts, newest first.
# A window's receipts (optionally by status) use ix_evaluations_window_status.
sa.Index("ix_peers_score_desc", Peer.score.desc(), Peer.hotkey)
sa.Index("ix_evaluations_hotkey_window_desc", Evaluation.hotkey, Evaluation.window.desc())
