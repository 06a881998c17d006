"""Public response schemas of the score API (``/api/v1``): what miners and dashboards see.

These are separate from the ORM models in ``validator.db.models`` on purpose (FastAPI
template style): the table can grow columns without changing the wire format, and the
conversion functions here are the one place that decides what may be published. In
particular a window's random seed, and the random pages drawn from it, are shown only once
the window's scoring is final (``scored``/``weights_set``); before that they are ``null``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from validator.db.models import FINAL_WINDOW_STATUSES, Evaluation, FollowState, Peer, WeightSet, Window

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


class PeerPublic(Public):
    """A peer's current state: rating (mu, sigma, ordinal = mu - 3 sigma), score and weight."""

    hotkey: str
    uid: int | None
    status: PeerStatus
    rating_mu: float
    rating_sigma: float
    ordinal: float
    score: float
    bma: float = Field(description="Moving average of the peer's per-page proof-of-work indicator; divided by "
                       "1 - (1 - alpha)^evaluated_windows it is the proof the work gate reads (scoring.work).")
    evaluated_windows: int = Field(0, description="Windows in which the peer was evaluated.")
    weight: float
    first_seen_window: int | None
    last_seen_window: int | None
    inactive_windows: int
    banned_until_window: int | None
    updated_at: datetime


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


class Receipt(Public):
    """The score receipt of one peer in one window: everything needed to re-check its score."""

    window: int
    window_final: bool = Field(description="Scoring of the window is final; seeds are published.")
    hotkey: str
    uid: int | None
    status: EvaluationStatus
    payload_hash: str | None
    upload_bytes: int | None
    uploaded_at: datetime | None
    filters_passed: list[str]
    reject_reason: str | None
    reject_detail: str | None
    copy_of_hotkey: str | None
    random_seed_hex: str | None = Field(description="Published only once the window's scoring is final.")
    base_model_hash: str | None
    assigned_page_ids: list[int] | None
    random_page_ids: list[int] | None = Field(description="Published only once the window's scoring is final.")
    loss_before_assigned: float | None
    loss_after_assigned: float | None
    loss_before_random: float | None
    loss_after_random: float | None
    loss_improvement_assigned: float | None = Field(description="loss_before_assigned - loss_after_assigned")
    loss_improvement_random: float | None = Field(description="loss_before_random - loss_after_random")
    estimate: float | None
    contribution: float | None
    indicator: float | None
    bma_after: float | None
    sync_score: float | None
    rating_mu_before: float | None
    rating_sigma_before: float | None
    rating_mu_after: float | None
    rating_sigma_after: float | None
    final_score: float | None
    weight: float | None
    eval_seconds: float | None
    setup: ReceiptSetup | None = Field(None, description="How Stage 2 ran (evaluated peers; None on older rows).")
    details: dict[str, Any]


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


def peer_public(peer: Peer, last_scored: int | None) -> PeerPublic:
    return PeerPublic(
        hotkey=peer.hotkey, uid=peer.uid, status=peer_status(peer, last_scored),
        rating_mu=peer.rating_mu, rating_sigma=peer.rating_sigma,
        ordinal=peer.rating_mu - 3.0 * peer.rating_sigma, score=peer.score, bma=peer.bma,
        evaluated_windows=peer.evaluated_windows,
        weight=peer.weight, first_seen_window=peer.first_seen_window, last_seen_window=peer.last_seen_window,
        inactive_windows=peer.inactive_windows, banned_until_window=peer.banned_until_window,
        updated_at=_utc(peer.updated_at),
    )


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
    return Receipt(
        window=row.window, window_final=final, hotkey=row.hotkey, uid=row.uid, status=row.status,  # type: ignore[arg-type]
        payload_hash=row.payload_hash, upload_bytes=row.upload_bytes, uploaded_at=_utc(row.uploaded_at),
        filters_passed=list(row.filters_passed or []), reject_reason=row.reject_reason,
        reject_detail=row.reject_detail, copy_of_hotkey=row.copy_of_hotkey,
        random_seed_hex=row.random_seed_hex if final else None, base_model_hash=row.base_model_hash,
        assigned_page_ids=row.assigned_page_ids, random_page_ids=row.random_page_ids if final else None,
        loss_before_assigned=row.loss_before_assigned, loss_after_assigned=row.loss_after_assigned,
        loss_before_random=row.loss_before_random, loss_after_random=row.loss_after_random,
        loss_improvement_assigned=_diff(row.loss_before_assigned, row.loss_after_assigned),
        loss_improvement_random=_diff(row.loss_before_random, row.loss_after_random),
        estimate=row.estimate, contribution=row.contribution, indicator=row.indicator,
        bma_after=row.bma_after, sync_score=row.sync_score, rating_mu_before=row.rating_mu_before,
        rating_sigma_before=row.rating_sigma_before, rating_mu_after=row.rating_mu_after,
        rating_sigma_after=row.rating_sigma_after, final_score=row.final_score, weight=row.weight,
        eval_seconds=row.eval_seconds, setup=setup, details=details,
    )


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
