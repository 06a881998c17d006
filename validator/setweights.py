"""Set weights on chain every ``weights.set_every_windows`` windows, at most once per window.

Only the leader sets weights (the Redis ``LeaderLease`` when Redis is configured; a lone
validator is always the leader). The weight set is *claimed* in the database first
(``record_weight_set``, unique per window, ``tx_status="pending"``), then sent, then marked
with the outcome, so a second validator instance cannot set weights twice for one window.

**What is claimed is what is sent.** Before the claim the weights are fitted to the
subnet's hyper-parameters, read from the chain (``Chain.subnet_params``), by
``chain.base.conform_weights``: the SDK's u16 drop and its ``MaxWeightsLimit`` clip, so the
SDK's own clip then changes nothing. A set the chain would refuse whatever happens is not
sent at all; it is recorded ``failed`` with the reason, logged once as an error and
counted (``gauntlet_weights_set{outcome=...}``):

* ``version_too_old``: the subnet's ``weights_version`` is above this validator's
  ``spec_version`` (the version key sent). The validator must be upgraded.
* ``refused``: fewer weights than ``min_allowed_weights`` (the SDK refuses those too, after
  the claim), or too few uids to keep every share under the cap.

**When.** A claimed set waits, still ``pending``, until this hotkey's ``last_update`` plus
the subnet's ``weights_rate_limit``; so does a set the chain answers ``RateLimitedError``.
A send that fails otherwise (any ``ChainError`` but ``InvalidWeightsError``, which would fail
the same way again) is retried on later passes, ``MAX_SENDS`` sends at most, the next one
``BACKOFF_BLOCKS`` blocks after the first failure and twice as long after each further one.
Every wait and send is a line of the set's log (``tx_detail``), so the API shows each
attempt's outcome; the count of sends and the next try's block are columns of the set, so a
restart resumes them.

**Crash safety.** A crash between claim and send leaves the claim pending. Dropping it would
lose that weight period for good (the window is scored and is not scored again), so every
pass starts with :func:`resend_unsent`: a pending set of the current weight period is sent
(again), unless the chain shows it already applied (the crash, or a failure that was not one,
came after the send), in which case it is only marked sent. A pending set whose period is
over (the next set is due) is marked failed: its weights are stale.

**Schedule.** :func:`schedule_warnings` is logged once per process, at the first pass. What
a validator operator should do about each:

* *weight period shorter than the rate limit* (``set_every_windows x blocks_per_window <
  weights_rate_limit``): every set waits for the chain and a period can pass unsent. Raise
  ``weights.set_every_windows`` to at least ``ceil(rate limit / blocks_per_window)``, or ask
  the subnet owner to lower ``weights_rate_limit``.
* *weight period shorter than the tempo* (logged as a note, not a warning: the packaged 2 x 125
  blocks is shorter than finney's 360): Yuma reads the weights once per epoch, so all but the
  last set before each epoch are overwritten unused. Harmless; ``weights.set_every_windows`` of
  ``ceil(tempo / blocks_per_window)`` saves the extrinsics. A longer period is fine too
  (weights stay on chain between sets).

The version key is the spec version.
"""

from __future__ import annotations

import logging
import math
import weakref
from typing import TYPE_CHECKING

from chain.base import (
    ChainError,
    InvalidWeightsError,
    Metagraph,
    RateLimitedError,
    SubnetParams,
    conform_weights,
)
from protocol.hparams import HParams
from protocol.windows import window_of
from validator import metrics
from validator.db import repo, weight_repo
from validator.db.weight_repo import UnsentSet, attempt_line, wait_line

if TYPE_CHECKING:  # window.py imports this module's callers; a runtime import would be circular
    from validator.window import ValidatorContext

log = logging.getLogger(__name__)

#: Sends of one weight set before it is given up (its weight period may end first).
MAX_SENDS = 6
#: Blocks between the first failed send and the next; doubles after each further failure.
BACKOFF_BLOCKS = 2

#: Chain -> (netuid, hotkey) whose schedule was checked. Weak: a chain object gone (a test's, a
#: reconnect's) must not let a new one at the same address skip its check.
_schedule_checked: weakref.WeakKeyDictionary[object, set[tuple[int, str]]] = weakref.WeakKeyDictionary()


def due(window: int, every: int) -> bool:
    """Weights are set after scoring windows every-1, 2*every-1, ... (i.e. when W+1 is a multiple)."""
    return (window + 1) % every == 0


def weights_from_scores(ctx: ValidatorContext, meta: Metagraph) -> tuple[list[int], list[float]]:
    """Current scores of registered peers -> (uids, normalised weights) via ``scoring.weights``."""
    from scoring.weights import compute_weights
    from validator.window import miner_hotkeys

    uid_of = miner_hotkeys(meta, ctx.chain.commitments(ctx.netuid))  # validators are never paid as miners
    with ctx.sessions() as s:
        scores = {uid_of[hk]: score for hk, score in weight_repo.current_scores(s).items() if hk in uid_of}
    weights = compute_weights(scores, ctx.hp.weights)
    uids = sorted(u for u, w in weights.items() if w > 0)
    return uids, [float(weights[u]) for u in uids]


def warming_up(ctx: ValidatorContext, window: int) -> bool:
    """True while a validator that joined a running subnet has scored fewer than ``warmup_windows``."""
    genesis = ctx.carry.model.genesis_window if ctx.carry.model is not None else None
    with ctx.sessions() as s:
        first = repo.first_scored_window(s)
    if genesis is None or first is None or first <= genesis:
        return False
    if window - first + 1 >= ctx.hp.weights.warmup_windows:
        return False
    log.info("window %d: warming up (joined at window %d, genesis %d): weights from window %d", window, first,
             genesis, first + ctx.hp.weights.warmup_windows - 1)
    return True


def _weight_period(hp: HParams) -> int:
    """Blocks between two due weight sets."""
    return hp.weights.set_every_windows * hp.windows.blocks_per_window


def schedule_warnings(hp: HParams, params: SubnetParams) -> list[str]:
    """What in the weight schedule does not fit the subnet (the module docstring says what to do)."""
    every, bpw = hp.weights.set_every_windows, hp.windows.blocks_per_window
    period, out = _weight_period(hp), []
    if period < params.weights_rate_limit:
        out.append(f"weights are due every {period} blocks (weights.set_every_windows {every} x {bpw}) but subnet "
                   f"{params.netuid} accepts one set per {params.weights_rate_limit} blocks (weights_rate_limit): "
                   f"sets wait and periods can pass unsent; set weights.set_every_windows >= "
                   f"{math.ceil(params.weights_rate_limit / bpw)}")
    return out


def _check_schedule_once(ctx: ValidatorContext) -> None:
    checked = _schedule_checked.setdefault(ctx.chain, set())
    if (ctx.netuid, ctx.hotkey) in checked:
        return
    try:
        params = ctx.chain.subnet_params(ctx.netuid)
    except ChainError as exc:
        log.info("cannot read subnet %d's hyper-parameters yet (%s); checking the weight schedule later",
                 ctx.netuid, exc)
        return
    checked.add((ctx.netuid, ctx.hotkey))
    for warning in schedule_warnings(ctx.hp, params):
        log.warning("%s", warning)
    period = _weight_period(ctx.hp)
    if period < params.tempo:  # harmless (weights stay on chain), so a note, not a warning
        log.info("weights are due every %d blocks, subnet %d's tempo is %d: only the last set before each epoch "
                 "counts (weights.set_every_windows >= %d sets once per epoch)", period, ctx.netuid, params.tempo,
                 math.ceil(params.tempo / ctx.hp.windows.blocks_per_window))
    if params.commit_reveal_enabled:
        log.info("subnet %d has commit-reveal on: weights are committed and count %d epochs (%d blocks) later",
                 ctx.netuid, params.commit_reveal_period, params.commit_reveal_period * params.tempo)


def _refusal(ctx: ValidatorContext, uids: list[int], weights: list[float],
             params: SubnetParams) -> tuple[tuple[list[int], list[float]], tuple[str, str] | None]:
    """The set as the chain will hold it, and (outcome, reason) when the chain would refuse it anyway."""
    if params.weights_version > ctx.hp.spec_version:
        return (uids, weights), ("version_too_old", (
            f"this validator's spec_version {ctx.hp.spec_version} (its weights version key) is older than subnet "
            f"{ctx.netuid}'s weights_version {params.weights_version}: the chain rejects its weights. Upgrade the "
            f"validator to a release whose spec_version is at least {params.weights_version}"))
    try:
        return conform_weights(uids, weights, params), None
    except InvalidWeightsError as exc:
        return (uids, weights), ("refused", f"weights not sent: {exc}")


def set_due_weights(ctx: ValidatorContext, window: int | None = None) -> bool:
    """Set the weights due after ``window``; None: retry the window a chain error kept unclaimed.

    A chain error before the claim (metagraph, hyper-parameters) is logged, not raised, and the
    window is kept in ``ctx.carry.weights_due``; the next pass calls this with None and tries it
    again, until it is claimed, decided against (nothing to pay yet) or superseded by a later
    window. Nothing is read from the chain when there is nothing to retry.
    """
    carry = ctx.carry
    if window is None:
        window = carry.weights_due
        if window is None:
            return False
        with ctx.sessions() as s:
            if weight_repo.has_weight_set(s, window=window):
                carry.weights_due = None
                return False
    try:
        sent = maybe_set_weights(ctx, window)
    except ChainError as exc:
        log.warning("window %d: weights are due but the chain cannot be read (%s); retrying next pass", window, exc)
        carry.weights_due = window
        return False
    carry.weights_due = None
    return sent


def maybe_set_weights(ctx: ValidatorContext, window: int) -> bool:
    """Set weights for ``window`` if due, leader and not yet claimed; True if an extrinsic was sent."""
    if not due(window, ctx.hp.weights.set_every_windows) or warming_up(ctx, window) or not ctx.is_leader():
        return False
    meta = ctx.chain.metagraph(ctx.netuid)  # read once: the scores' uids and this hotkey's last update
    uids, weights = weights_from_scores(ctx, meta)
    if not uids:
        log.info("window %d: no positive scores yet; weights not set", window)
        return False
    params = ctx.chain.subnet_params(ctx.netuid)
    (uids, weights), refusal = _refusal(ctx, uids, weights, params)
    version, block = ctx.hp.spec_version, ctx.chain.block()
    with ctx.sessions() as s:
        if not weight_repo.record_weight_set(s, window=window, uids=uids, weights=weights, version_key=version,
                                             block=block, tx_status="failed" if refusal else "pending",
                                             tx_detail=refusal[1] if refusal else None):
            return False  # already claimed (restart or another instance); resend_unsent finishes it
    if refusal is not None:
        log.error("window %d: %s", window, refusal[1])
        metrics.WEIGHTS_SET.labels(outcome=refusal[0]).inc()
        return False
    unsent = UnsentSet(window=window, uids=uids, weights=weights, version_key=version, claimed_block=block,
                       sends=0, next_try_block=0)
    return _send(ctx, unsent, params, meta)


def _send(ctx: ValidatorContext, u: UnsentSet, params: SubnetParams, meta: Metagraph) -> bool:
    """One try at a claimed set: wait for the rate limit, or send and log the outcome; True if sent."""
    block, number = ctx.chain.block(), u.sends + 1
    uid = meta.uid_of(ctx.hotkey)
    last = int(meta.last_update[meta.uids.index(uid)]) if uid is not None else 0
    ready = params.next_set_block(last)
    if block < ready:
        log.info("window %d: weights wait for the rate limit until block %d (now %d)", u.window, ready, block)
        _log(ctx, u.window, "pending", wait_line(block, ready, f"weights rate limit: last update at block {last} "
                                                 f"+ {params.weights_rate_limit} blocks"), "rate_limited",
             next_try=ready)
        return False
    log.info("window %d: %s weights for %d uids (send %d; commit-reveal %s)", u.window,
             "committing" if params.commit_reveal_enabled else "setting", len(u.uids), number,
             "on" if params.commit_reveal_enabled else "off")
    try:
        ctx.chain.set_weights(ctx.keypair, ctx.netuid, u.uids, u.weights, u.version_key)
    except RateLimitedError as exc:  # the chain counts differently than the metagraph said: nothing was sent
        until = block + max(1, exc.retry_after_blocks)
        _log(ctx, u.window, "pending", wait_line(block, until, f"RateLimitedError: {exc}"), "rate_limited",
             next_try=until)
        return False
    except ChainError as exc:
        _failed(ctx, u, number, block, exc)
        return False
    _log(ctx, u.window, "success", attempt_line(number, block, "success"), "success", block=ctx.chain.block(),
         sends=number)
    return True


def _failed(ctx: ValidatorContext, u: UnsentSet, number: int, block: int, exc: ChainError) -> None:
    """Log a failed send: retried after a backoff, or given up (too many sends, or a set the chain refuses)."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, InvalidWeightsError) or number >= MAX_SENDS:
        why = "the chain refuses this set" if isinstance(exc, InvalidWeightsError) else f"{number} sends failed"
        log.warning("window %d: set_weights failed (%s); given up: %s", u.window, detail, why)
        _log(ctx, u.window, "failed", attempt_line(number, block, f"{detail}; given up: {why}"), "failed",
             block=block, sends=number)
        return
    retry = block + BACKOFF_BLOCKS * 2 ** (number - 1)
    log.warning("window %d: set_weights failed (%s); retrying at block %d", u.window, detail, retry)
    _log(ctx, u.window, "pending", attempt_line(number, block, detail, retry), "retry", sends=number, next_try=retry)


def _log(ctx: ValidatorContext, window: int, status: weight_repo.TxStatus, line: str, outcome: str,
         *, block: int | None = None, sends: int | None = None, next_try: int | None = None) -> None:
    with ctx.sessions() as s:
        weight_repo.update_weight_set(s, window=window, tx_status=status, log=line, block=block, sends=sends,
                                      next_try_block=next_try)
    metrics.WEIGHTS_SET.labels(outcome=outcome).inc()


def _close(ctx: ValidatorContext, window: int, status: weight_repo.TxStatus, note: str) -> None:
    _log(ctx, window, status, note, status, block=ctx.chain.block())


def resend_unsent(ctx: ValidatorContext) -> bool:
    """Finish or retry the claimed weight set that is not on chain yet; True if one was sent.

    Called at the start of every pass: it sends a set claimed before a crash, retries a failed
    send once its backoff is over, and sends a set that waited for the rate limit, all within
    the set's weight period. Before the backoff or the wait is over it reads only the block.
    """
    _check_schedule_once(ctx)
    if not ctx.is_leader():
        return False
    with ctx.sessions() as s:
        pending = weight_repo.unsent_weight_sets(s)
    if not pending:
        return False
    *superseded, u = pending
    for old in superseded:
        _close(ctx, old.window, "failed", f"not sent after {old.sends} sends; superseded by a later weight set")
    block = ctx.chain.block()
    if window_of(block, ctx.hp.windows) > u.window + ctx.hp.weights.set_every_windows:
        _close(ctx, u.window, "failed", f"not sent after {u.sends} sends; its weight period is over")
        return False
    if block < u.next_try_block:
        return False
    try:
        meta = ctx.chain.metagraph(ctx.netuid)
        applied = applied_on_chain(ctx, meta, u)
        params = ctx.chain.subnet_params(ctx.netuid)
    except ChainError as exc:
        log.warning("window %d: cannot check the chain for an unsent weight set (%s); retrying later", u.window, exc)
        return False
    if applied:
        log.info("window %d: the weight set claimed earlier is on chain; marking it sent", u.window)
        _close(ctx, u.window, "success", "found applied on chain")
        return False
    if u.sends == 0 and u.next_try_block == 0:
        log.warning("window %d: weight set claimed but never sent (restart); sending it now", u.window)
    return _send(ctx, u, params, meta)


def applied_on_chain(ctx: ValidatorContext, meta: Metagraph, u: UnsentSet) -> bool:
    """Whether this validator's weights on chain are the claimed set, sent before a crash or a failure.

    The claim's block tells: an update of this hotkey after it can only be this set (the chain
    includes an extrinsic in a later block than the one it was sent at; waits and retries keep
    the claim's block). An update in the claim's own block (a fast local chain) counts only if
    the stored weights are the claimed ones, to within the chain's u16 quantisation.
    """
    uid = meta.uid_of(ctx.hotkey)
    if uid is None:
        return False
    last = int(meta.last_update[meta.uids.index(uid)])
    if u.claimed_block is not None and last != u.claimed_block:
        return last > u.claimed_block
    total = float(sum(u.weights))
    want = {int(d): float(w) / total for d, w in zip(u.uids, u.weights, strict=True) if w > 0}
    have = ctx.chain.weights(ctx.netuid).get(uid, {})
    return set(have) == set(want) and all(abs(have[d] - want[d]) <= 1e-3 for d in want)
