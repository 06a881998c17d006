"""Set weights on chain every ``weights.set_every_windows`` windows, at most once per window.

Only the leader sets weights (the Redis ``LeaderLease`` when Redis is configured; a lone
validator is always the leader). The weight set is *claimed* in the database first
(``record_weight_set``, unique per window, ``tx_status="pending"``), then sent, then marked
with the outcome, so a second validator instance cannot set weights twice for one window.

A crash between claim and mark leaves the claim pending. Dropping it would lose that weight
period for good (the window is scored and is not scored again), so every pass starts with
:func:`resend_unsent`: a pending set of the current weight period is sent again, unless the
chain shows it already applied (the crash came after the send), in which case it is only
marked sent. A pending set whose period is over is marked failed: its weights are stale.
The version key is the spec version.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import sqlalchemy as sa

from chain.base import ChainError
from protocol.windows import window_of
from validator import metrics
from validator.db import repo, weight_repo
from validator.db.models import Peer, WeightSet

if TYPE_CHECKING:  # window.py imports this module's callers; a runtime import would be circular
    from validator.window import ValidatorContext

log = logging.getLogger(__name__)


def due(window: int, every: int) -> bool:
    """Weights are set after scoring windows every-1, 2*every-1, ... (i.e. when W+1 is a multiple)."""
    return (window + 1) % every == 0


def weights_from_scores(ctx: ValidatorContext) -> tuple[list[int], list[float]]:
    """Current scores of registered peers -> (uids, normalised weights) via ``scoring.weights``."""
    from scoring.weights import compute_weights
    from validator.window import miner_hotkeys

    meta = ctx.chain.metagraph(ctx.netuid)
    uid_of = miner_hotkeys(meta, ctx.chain.commitments(ctx.netuid))  # validators are never paid as miners
    with ctx.sessions() as s:
        scores = {uid_of[p.hotkey]: p.score for p in s.scalars(sa.select(Peer)) if p.hotkey in uid_of}
    weights = compute_weights(scores, ctx.hp.weights)
    uids = sorted(u for u, w in weights.items() if w > 0)
    return uids, [float(weights[u]) for u in uids]


def warming_up(ctx: ValidatorContext, window: int) -> bool:
    """True while a validator that joined a running subnet has scored fewer than ``warmup_windows``."""
    genesis = ctx.model.genesis_window if ctx.model is not None else None
    with ctx.sessions() as s:
        first = repo.first_scored_window(s)
    if genesis is None or first is None or first <= genesis:
        return False
    if window - first + 1 >= ctx.hp.weights.warmup_windows:
        return False
    log.info("window %d: warming up (joined at window %d, genesis %d): weights from window %d", window, first,
             genesis, first + ctx.hp.weights.warmup_windows - 1)
    return True


def maybe_set_weights(ctx: ValidatorContext, window: int) -> bool:
    """Set weights for ``window`` if due, leader and not yet claimed; True if an extrinsic was sent."""
    if not due(window, ctx.hp.weights.set_every_windows) or warming_up(ctx, window) or not ctx.is_leader():
        return False
    uids, weights = weights_from_scores(ctx)
    if not uids:
        log.info("window %d: no positive scores yet; weights not set", window)
        return False
    version = ctx.hp.spec_version
    with ctx.sessions() as s:
        if not weight_repo.record_weight_set(s, window=window, uids=uids, weights=weights, version_key=version,
                                      block=ctx.chain.block()):
            return False  # already claimed (restart or another instance); resend_unsent finishes it
    return _send(ctx, window, uids, weights, version)


def _send(ctx: ValidatorContext, window: int, uids: list[int], weights: list[float], version: int) -> bool:
    """Send a claimed weight set and record the outcome; True on success."""
    try:
        ctx.chain.set_weights(ctx.keypair, ctx.netuid, uids, weights, version)
        status, detail = "success", None
    except ChainError as exc:
        status, detail = "failed", f"{type(exc).__name__}: {exc}"[:500]
        log.warning("window %d: set_weights failed: %s", window, detail)
    _mark(ctx, window, status, detail)
    return status == "success"


def _mark(ctx: ValidatorContext, window: int, status: str, detail: str | None) -> None:
    with ctx.sessions() as s:
        weight_repo.update_weight_set(s, window=window, tx_status=status, tx_detail=detail, block=ctx.chain.block())
    metrics.WEIGHTS_SET.labels(outcome=status).inc()


def resend_unsent(ctx: ValidatorContext) -> bool:
    """Finish weight sets claimed but never marked (a crash between claim and send); True if one was sent."""
    if not ctx.is_leader():
        return False
    with ctx.sessions() as s:
        pending = [(w.window, list(w.uids), list(w.weights), int(w.version_key), w.block) for w in s.scalars(
            sa.select(WeightSet).where(WeightSet.tx_status == "pending").order_by(WeightSet.window))]
    if not pending:
        return False
    *superseded, (window, uids, weights, version, block) = pending
    for old in superseded:
        _mark(ctx, old[0], "failed", "claimed but never sent; superseded by a later weight set")
    if window_of(ctx.chain.block(), ctx.hp.windows) > window + ctx.hp.weights.set_every_windows:
        _mark(ctx, window, "failed", "claimed but never sent; its weight period is over")
        return False
    try:
        applied = applied_on_chain(ctx, uids, weights, block)
    except ChainError as exc:
        log.warning("window %d: cannot check the chain for an unsent weight set (%s); retrying later", window, exc)
        return False
    if applied:
        log.info("window %d: the weight set claimed before a restart is on chain; marking it sent", window)
        _mark(ctx, window, "success", "found applied on chain after a restart")
        return False
    log.warning("window %d: weight set claimed but never sent (restart); sending it now", window)
    return _send(ctx, window, uids, weights, version)


def applied_on_chain(ctx: ValidatorContext, uids: list[int], weights: list[float], claimed_block: int | None) -> bool:
    """Whether this validator's weights on chain are the claimed set, sent before a crash.

    The claim's block tells: an update of this hotkey after it can only be this set (the chain
    includes an extrinsic in a later block than the one it was sent at). An update in the
    claim's own block (a fast local chain) counts only if the stored weights are the claimed
    ones, to within the chain's u16 quantisation.
    """
    meta = ctx.chain.metagraph(ctx.netuid)
    uid = meta.uid_of(ctx.hotkey)
    if uid is None:
        return False
    last = int(meta.last_update[meta.uids.index(uid)])
    if claimed_block is not None and last != claimed_block:
        return last > claimed_block
    total = float(sum(weights))
    want = {int(u): float(w) / total for u, w in zip(uids, weights, strict=True) if w > 0}
    have = ctx.chain.weights(ctx.netuid).get(uid, {})
    return set(have) == set(want) and all(abs(have[u] - want[u]) <= 1e-3 for u in want)
