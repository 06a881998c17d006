"""Public response schemas of the score API (``/api/v1``): what miners and dashboards see.

A peer and a receipt have one list of fields, their table in ``validator.db.models``: the
schemas here are derived from it (:func:`table_fields`) plus what the API adds (status,
ordinal, differences), and the conversion functions are the one place that decides what
may be published. In
particular a window's random seed, and the random pages drawn from it, are shown only once
the window's scoring is final (``scored``/``weights_set``); before that they are ``null``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar, get_args, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from scoring.filters import Rejection
from validator.db.models import FINAL_WINDOW_STATUSES, Base, Evaluation, FollowState, Peer, WeightSet, Window

T = TypeVar("T")

PeerStatus = Literal["active", "inactive", "banned", "deregistered"]
WindowStatus = Literal["open", "scoring", "scored", "weights_set"]
EvaluationStatus = Literal["accepted", "rejected", "missing", "unevaluated"]


class Public(BaseModel):
    model_config = ConfigDict(from_attributes=True, extra="forbid")


class ErrorDetail(Public):
    """Body of every 4xx that is not a validation error."""

    detail: str


class Page(Public, Generic[T]):
    """One page of a list: ``items`` from ``offset``, ``total`` across all pages."""

    total: int = Field(ge=0)
    limit: int = Field(ge=1)
    offset: int = Field(ge=0)
    items: list[T]


def table_fields(table: type[Base], *, omit: Collection[str] = (),
                 describe: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``pydantic.create_model`` fields for ``table``'s columns, in table order, typed as the ORM types them.

    The table is the one list of a peer's or a receipt's fields: a column added there is served
    here without a second list to keep in step. What may be *shown* is still decided below.
    """
    hints = get_type_hints(table)
    fields: dict[str, Any] = {}
    for column in table.__table__.columns:
        if column.key not in omit:
            (annotation,) = get_args(hints[column.key])  # Mapped[X] -> X
            fields[column.key] = (annotation, Field(description=(describe or {}).get(column.key, column.doc)))
    return fields


_PeerColumns = create_model("PeerColumns", __base__=Public, **table_fields(Peer, describe={
    "bma": "Moving average of the peer's per-page proof-of-work indicator; divided by 1 - (1 - alpha)^"
           "evaluated_windows it is the proof the work gate reads (scoring.work).",
    "evaluated_windows": "Windows in which the peer was evaluated.",
    "weight": "The share of this validator's weights the peer's score implied when last scored (scoring.weights).",
}))


class PeerPublic(_PeerColumns):  # type: ignore[misc, valid-type]
    """A peer's current state (the ``peers`` table): rating (mu, sigma, ordinal = mu - 3 sigma), score, weight."""

    status: PeerStatus
    ordinal: float


class LeaderboardEntry(PeerPublic):
    rank: int = Field(ge=1)


class Leaderboard(Page[LeaderboardEntry]):
    last_scored_window: int | None


class ReceiptSetup(BaseModel):
    """How an evaluated peer's Stage 2 ran: what, besides the public inputs, decides its numbers.

    Served so that ``gauntlet audit`` needs no private state of the validator: it scores under
    hyper-parameters and a page store with these digests, and states its tolerance from the device
    class, dtype, evaluator and batch layout used here. Extra keys are kept (newer validators).
    """

    model_config = ConfigDict(extra="allow")

    spec_version: int
    hparams_digest: str = Field(description="sha256 of the canonical hyper-parameters (validator.receipts).")
    model: str = Field(description="Model preset (protocol.model.PRESETS).")
    model_seed: int
    data_digest: str | None = Field(description="Digest of the page store's manifest (protocol.pages.Manifest).")
    seq_len: int
    page_seqs: int
    batch: str = Field(description="Which pages share a forward pass (the last float bits depend on it).")
    eval_eta: float = Field(description="eval_step_scale x outer lr.")
    size_rule: str = Field(description="scoring.eval_norm: cap or normalise (scoring.scale).")
    eval_step: float = Field(description="The step applied: theta - eval_step x delta.")
    step_factor: float | None = Field(description="eval_step / eval_eta: the size rule's factor for this delta.")
    upload_url: str | None = Field(description="The committed store the upload was read from.")
    device: str | None = Field(None, description="Device class of the evaluation (cpu, cuda, ...).")
    dtype: str | None = Field(None, description="Parameter dtype of the evaluation.")
    evaluator: str | None = Field(None, description="validator (in-process) or worker.")


_ReceiptColumns = create_model("ReceiptColumns", __base__=Public, **table_fields(
    Evaluation, omit=("id", "created_at", "updated_at"), describe={
        "random_seed_hex": "Published only once the window's scoring is final.",
        "random_page_ids": "Published only once the window's scoring is final.",
        "estimate": "First-order predicted loss change.",
        "details": "Anything else worth showing: norms, per-page and reach losses, the eval step.",
    }))


class Receipt(_ReceiptColumns):  # type: ignore[misc, valid-type]
    """The score receipt of one peer in one window (the ``evaluations`` table): everything to re-check its score."""

    status: EvaluationStatus
    reject_reason: Rejection | None = Field(description="Why the upload was not scored (scoring.filters.Rejection).")
    window_final: bool = Field(description="Scoring of the window is final; seeds are published.")
    loss_improvement_assigned: float | None = Field(description="loss_before_assigned - loss_after_assigned")
    loss_improvement_random: float | None = Field(description="loss_before_random - loss_after_random")
    setup: ReceiptSetup | None = Field(None, description="How Stage 2 ran (evaluated peers; None on older rows).")


class WindowPublic(Public):
    window: int
    status: WindowStatus
    base_model_hash: str | None
    random_seed_hex: str | None = Field(description="Published only once the window's scoring is final.")
    aggregate_hash: str | None = Field(description="blake2b of this validator's own proposal for the window.")
    publisher: str | None = Field(None, description="Whose proposal every node applied (None: not yet, or a null "
                                  "window).")
    next_model_hash: str | None = Field(None, description="theta_{W+1}: the same at every validator in sync.")
    started_at: datetime
    scored_at: datetime | None
    num_submitted: int
    num_evaluated: int
    stage_timings: dict[str, Any]


class ReasonCount(Public):
    reason: str
    count: int = Field(ge=0)


class WindowSummary(WindowPublic):
    """A window with its receipts counted by status and its rejections by reason."""

    counts: dict[str, int]
    rejections: list[ReasonCount]
    weights_set: bool


class Rejections(Public):
    from_window: int | None
    to_window: int | None
    total: int = Field(ge=0)
    reasons: list[ReasonCount]


class WeightEntry(Public):
    uid: int
    hotkey: str | None
    weight: float


class WeightSetPublic(Public):
    window: int
    block: int | None
    version_key: int
    tx_status: Literal["pending", "success", "failed"]
    tx_detail: str | None
    set_at: datetime
    weights: list[WeightEntry]


class FollowPublic(Public):
    """Where this validator stands with the subnet's shared model (``protocol.follow``)."""

    state: Literal["starting", "following", "waiting", "stalled"]
    in_sync: bool = Field(description="False when it cannot follow the shared history (see detail).")
    window: int | None = Field(description="The window whose start model it holds.")
    model_hash: str | None
    publisher: str | None = Field(description="The validator that publishes the next aggregate.")
    detail: str | None
    failovers: int
    null_windows: int
    updated_at: datetime


class Health(Public):
    status: Literal["ok", "degraded", "down"]
    database: Literal["ok", "error"]
    redis: Literal["ok", "down", "disabled"]
    last_scored_window: int | None
    version: str
    follow: FollowPublic | None = Field(None, description="None until the validator has followed once.")


# --------------------------------------------------------------------------- conversions


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive UTC datetimes; publish every timestamp with its zone."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _diff(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else before - after


def peer_status(peer: Peer, last_scored: int | None) -> PeerStatus:
    if peer.uid is None:
        return "deregistered"
    if peer.banned_until_window is not None and (last_scored is None or peer.banned_until_window > last_scored):
        return "banned"
    return "inactive" if peer.inactive_windows > 0 else "active"


def _columns(model: type[BaseModel], row: Base) -> dict[str, Any]:
    return {name: getattr(row, name) for name in model.model_fields if hasattr(type(row), name)}


def peer_public(peer: Peer, last_scored: int | None) -> PeerPublic:
    values = _columns(_PeerColumns, peer)
    values.update(status=peer_status(peer, last_scored), ordinal=peer.rating_mu - 3.0 * peer.rating_sigma,
                  updated_at=_utc(peer.updated_at))
    return PeerPublic(**values)


def _split_setup(details: dict[str, Any] | None) -> tuple[ReceiptSetup | None, dict[str, Any]]:
    """``details["setup"]`` as its typed model (None when absent or from an incompatible writer), the rest."""
    rest = dict(details or {})
    raw = rest.pop("setup", None)
    try:
        return (ReceiptSetup.model_validate(raw) if isinstance(raw, dict) else None), rest
    except ValueError:
        return None, rest


def receipt(row: Evaluation, *, window_status: str) -> Receipt:
    """The public receipt; seed and random pages are withheld until the window is final."""
    final = window_status in FINAL_WINDOW_STATUSES
    setup, details = _split_setup(row.details)
    values = _columns(_ReceiptColumns, row)
    values.update(
        window_final=final, uploaded_at=_utc(row.uploaded_at), filters_passed=list(row.filters_passed or []),
        random_seed_hex=row.random_seed_hex if final else None,
        random_page_ids=row.random_page_ids if final else None,
        loss_improvement_assigned=_diff(row.loss_before_assigned, row.loss_after_assigned),
        loss_improvement_random=_diff(row.loss_before_random, row.loss_after_random),
        setup=setup, details=details,
    )
    return Receipt(**values)


def window_public(row: Window) -> WindowPublic:
    return WindowPublic(
        window=row.window, status=row.status, base_model_hash=row.base_model_hash,  # type: ignore[arg-type]
        random_seed_hex=row.published_seed, aggregate_hash=row.aggregate_hash, publisher=row.publisher,
        next_model_hash=row.next_model_hash, started_at=_utc(row.started_at),
        scored_at=_utc(row.scored_at), num_submitted=row.num_submitted, num_evaluated=row.num_evaluated,
        stage_timings=dict(row.stage_timings or {}),
    )


def follow_public(row: FollowState) -> FollowPublic:
    return FollowPublic(
        state=row.state, in_sync=row.state in ("following", "waiting"), window=row.window,  # type: ignore[arg-type]
        model_hash=row.model_hash, publisher=row.publisher, detail=row.detail, failovers=row.failovers,
        null_windows=row.null_windows, updated_at=_utc(row.updated_at),
    )


def weight_set_public(row: WeightSet, hotkeys: dict[int, str]) -> WeightSetPublic:
    return WeightSetPublic(
        window=row.window, block=row.block, version_key=row.version_key, tx_status=row.tx_status,  # type: ignore[arg-type]
        tx_detail=row.tx_detail, set_at=_utc(row.set_at),
        weights=[WeightEntry(uid=u, hotkey=hotkeys.get(u), weight=w) for u, w in zip(row.uids, row.weights, strict=False)],
    )


# --------------------------------------------------------------------------- chart series
# Compact per-window series for charts (the dashboard's and anyone else's): oldest window first,
# bounded by ``?last=N``, a few numbers per window instead of full receipts.


class ModelLossPoint(Public):
    """One window of the loss curve (the model hashes are in ``/windows``; kept out to keep this small)."""

    window: int
    status: WindowStatus
    loss_before_random: float | None = Field(description="theta_W's mean loss on the window's random pages: the "
                                             "shared 'before' of every evaluated receipt (None until one exists).")
    publisher: str | None = Field(description="Whose aggregate made theta_{W+1} (None: undecided or a null window).")
    num_evaluated: int


class ModelLoss(Public):
    """The global model's loss over the last ``last`` windows, oldest first."""

    last: int = Field(ge=1)
    items: list[ModelLossPoint]


class WindowOutcome(Public):
    window: int
    status: WindowStatus
    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0)
    missing: int = Field(ge=0)
    unevaluated: int = Field(ge=0, description="Passed Stage 1 but not evaluated in the time budget.")


class WindowOutcomes(Public):
    """Receipts per window by status over the last ``last`` windows, oldest first."""

    last: int = Field(ge=1)
    items: list[WindowOutcome]


class ScorePoint(Public):
    window: int
    status: EvaluationStatus
    final_score: float | None
    weight: float | None
    rating_mu_after: float | None
    rating_sigma_after: float | None
    loss_improvement_assigned: float | None
    loss_improvement_random: float | None


class PeerScores(Public):
    """One peer's score and weight over its last ``last`` receipts, oldest first."""

    hotkey: str
    last: int = Field(ge=1)
    items: list[ScorePoint]


def window_outcome(window: int, status: str, counts: dict[str, int]) -> WindowOutcome:
    return WindowOutcome(window=window, status=status, accepted=counts.get("accepted", 0),  # type: ignore[arg-type]
                         rejected=counts.get("rejected", 0), missing=counts.get("missing", 0),
                         unevaluated=counts.get("unevaluated", 0))


class ValidatorStandingPublic(Public):
    """One validator on chain as this validator measured it after a window (``validator.agreement``)."""

    hotkey: str
    uid: int
    stake: float
    has_weights: bool
    validator_trust: float | None = Field(description="Share of its weight under the stake-weighted consensus.")
    overlap: float | None = Field(description="Weight it gives the same miners as this validator (0-1).")
    rho: float | None = Field(description="Spearman rank correlation with this validator's weights.")


class Agreement(Public):
    """The newest measurement: ``window`` after which it was taken, the chain ``block``, every validator."""

    window: int | None
    block: int | None
    validators: list[ValidatorStandingPublic]
