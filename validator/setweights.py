"""Set weights on chain every ``weights.set_every_windows`` windows, at most once per window.

Only the leader sets weights (the Redis ``LeaderLease`` when Redis is configured; a lone
validator is always the leader). The weight set is *claimed* in the database first
(``record_weight_set``, unique per window) and the extrinsic sent only if the claim is new,
so neither a restart (even ``kill -9`` between claim and send) nor a second validator
instance can set weights twice for one window. The version key is the spec version.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from chain.base import ChainError
from validator import metrics
from validator.db import repo
from validator.db.models import Peer

log = logging.getLogger(__name__)


def due(window: int, every: int) -> bool:
    """Weights are set after scoring windows every-1, 2*every-1, ... (i.e. when W+1 is a multiple)."""
    return (window + 1) % every == 0


def weights_from_scores(ctx: Any) -> tuple[list[int], list[float]]:
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


def warming_up(ctx: Any, window: int) -> bool:
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


def maybe_set_weights(ctx: Any, window: int) -> bool:
    """Set weights for ``window`` if due, leader and not yet claimed; True if an extrinsic was sent."""
    if not due(window, ctx.hp.weights.set_every_windows) or warming_up(ctx, window) or not ctx.is_leader():
        return False
    uids, weights = weights_from_scores(ctx)
    if not uids:
        log.info("window %d: no positive scores yet; weights not set", window)
        return False
    version = ctx.hp.spec_version
    with ctx.sessions() as s:
        if not repo.record_weight_set(s, window=window, uids=uids, weights=weights, version_key=version,
                                      block=ctx.chain.block()):
            return False  # already claimed (restart or another instance)
    try:
        ctx.chain.set_weights(ctx.keypair, ctx.netuid, uids, weights, version)
        status, detail = "success", None
    except ChainError as exc:
        status, detail = "failed", f"{type(exc).__name__}: {exc}"[:500]
        log.warning("window %d: set_weights failed: %s", window, detail)
    with ctx.sessions() as s:
        repo.update_weight_set(s, window=window, tx_status=status, tx_detail=detail, block=ctx.chain.block())
    metrics.WEIGHTS_SET.labels(outcome=status).inc()
    return status == "success"
