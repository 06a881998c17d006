"""The validator's main loop, driven by chain blocks.

Window W is scored once the chain is in W+1 *and* the chain time has passed W's end plus
the upload grace (uploads stamped within the grace still count). Windows missed while the
validator was down are caught up in order from the database's view
(``repo.windows_to_score``), at most ``catch_up`` per pass; windows older than
``max_lookback`` are closed without evaluation (theta follows what the other validators
decided for them, or stays unchanged if nobody proposed in time).

Before each pass the validator moves theta as far as the subnet's decided history goes
(``protocol.follow``): it copies each applied aggregate into its own store, so miners and
later validators can replay from any validator.

First start (nothing in the database): a validator joins the history that ranked validators
have already published, starting from the first window it can score. If nobody has any
history yet, the validator ranked r-th (0 = highest stake) waits r windows for a higher one
to start it, then publishes the genesis checkpoint ``GlobalModel.initial(hp, window=start)``
itself, so simultaneous starts do not race to different genesis windows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from protocol.windows import beacon_block, window_bounds, window_of
from validator import agreement, metrics
from validator.db import repo
from validator.setweights import resend_unsent, set_due_weights
from validator.window import (
    ModelNotReady,
    ValidatorContext,
    WindowReport,
    advance_model,
    score_window,
    skip_window,
)

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    max_windows: int | None = None  # stop after scoring this many windows (None: forever)
    catch_up: int = 8  # windows scored per pass before looking at the chain again
    max_lookback: int = 50  # older unscored windows are closed empty, not evaluated
    poll_s: float = 2.0


def bootstrap(ctx: ValidatorContext, current_window: int, *, started_at_window: int | None = None) -> int | None:
    """On a fresh start, find (or publish) the history to follow; returns the first window to score.

    None while there is nothing to follow yet (the caller retries). ``started_at_window`` is
    the window the process started in (rank waits are counted from it).
    """
    with ctx.sessions() as s:
        if repo.last_scored_window(s) is not None or repo.windows(s, limit=1):
            return None
    ranking = ctx.follower.ranking()
    if ctx.follower.any_history(ranking, current_window):
        model = advance_model(ctx, current_window)
        if model is None:
            return None
        start = model.window  # theta of a closed window is enough to score it
        log.info("joining the subnet's model at window %d (%s), scoring from window %d", model.window,
                 model.hash[:12], start)
    else:
        rank = genesis_rank(ctx.chain.metagraph(ctx.netuid), ctx.hotkey)
        began = current_window if started_at_window is None else started_at_window
        if rank is None:
            _say_once(logging.WARNING, "no history to follow and this validator holds no validator permit yet")
            return None
        if current_window - began < rank:
            _say_once(logging.INFO, f"no history yet; waiting for a higher-ranked validator to publish genesis "
                      f"({current_window - began}/{rank} windows)")
            return None
        start = current_window
        ctx.carry.model = ctx.follower.publish_genesis(start)
        ctx.carry.recent_hashes[ctx.carry.model.hash] = start
        log.info("fresh subnet: published the genesis checkpoint for window %d", start)
    with ctx.sessions() as s:
        repo.open_window(s, window=start)
    return start


def genesis_rank(meta: Any, hotkey: str) -> int | None:
    """This hotkey's place among permit holders by stake (ties by hotkey), commitments or not.

    Counting validators that have not committed yet matters at start-up: the highest-stake
    validator may be a few seconds slower to commit, and must still be the one waited for.
    """
    ranked = sorted((-float(s), hk) for hk, s, p in zip(meta.hotkeys, meta.stakes, meta.validator_permit,
                                                         strict=True) if p)
    return next((i for i, (_s, hk) in enumerate(ranked) if hk == hotkey), None)


_said: list[str] = []


def _say_once(level: int, message: str) -> None:
    """Log a waiting message when it changes, not on every poll."""
    if _said[-1:] != [message]:
        log.log(level, message)
        _said[:] = [message]


def ready(ctx: ValidatorContext, window: int) -> bool:
    """The chain is past W and its grace (uploads for W can no longer count) and has W's beacon block."""
    end_block = window_bounds(window, ctx.hp.windows).end_block
    block = ctx.chain.block()
    if block < beacon_block(window, ctx.hp.windows, ctx.chain.block_time_s()):  # always past end_block
        return False
    return ctx.chain.block_timestamp(block) >= ctx.chain.block_timestamp(end_block) + ctx.hp.windows.upload_grace_s


def pending_windows(ctx: ValidatorContext, cfg: LoopConfig) -> list[int]:
    current = window_of(ctx.chain.block(), ctx.hp.windows)
    with ctx.sessions() as s:
        todo = repo.windows_to_score(s, current_window=current)
    return [w for w in todo if ready(ctx, w)]


def run_pass(ctx: ValidatorContext, cfg: LoopConfig, limit: int | None = None) -> list[WindowReport]:
    """Score (or close) the windows that are ready, oldest first, at most ``catch_up`` of them.

    First, a weight set claimed but never sent (the process died in between) is finished, and
    one due but not claimed because the chain could not be read then is set.
    """
    resend_unsent(ctx)  # also retries a failed send, and sends a set that waited out the rate limit
    set_due_weights(ctx)
    todo = pending_windows(ctx, cfg)
    newest = window_of(ctx.chain.block(), ctx.hp.windows) - 1  # the last closed window
    reports = []
    for window in todo[: min(cfg.catch_up, limit if limit is not None else cfg.catch_up)]:
        try:
            if newest - window > cfg.max_lookback:
                reports.append(skip_window(ctx, window))
            else:
                reports.append(score_window(ctx, window))
        except ModelNotReady as exc:
            log.info("window %d waits: %s", window, exc)
            break
        set_due_weights(ctx, window)
        agreement.record(ctx, window)
    return reports


def follow(ctx: ValidatorContext) -> None:
    """Take every decided aggregate up to the current window (and report where this validator stands)."""
    advance_model(ctx, window_of(ctx.chain.block(), ctx.hp.windows))
    status = ctx.follower.status
    metrics.observe_follow(status)
    seen = (status.state, status.window, status.model_hash, status.publisher, status.detail)
    if seen != ctx.carry.follow_recorded:  # the loop polls every few seconds: write only what changed
        with ctx.sessions() as s:
            repo.record_follow_status(s, status)
        ctx.carry.follow_recorded = seen


def run(ctx: ValidatorContext, cfg: LoopConfig) -> int:
    """The loop: bootstrap, then follow the shared model and score windows as they close. Returns windows scored."""
    began = window_of(ctx.chain.block(), ctx.hp.windows)
    scored = 0
    while cfg.max_windows is None or scored < cfg.max_windows:
        if not _has_start(ctx) and bootstrap(ctx, window_of(ctx.chain.block(), ctx.hp.windows),
                                             started_at_window=began) is None:
            time.sleep(cfg.poll_s)
            continue
        follow(ctx)
        reports = run_pass(ctx, cfg, None if cfg.max_windows is None else cfg.max_windows - scored)
        scored += sum(1 for r in reports if r.scored)
        if not reports:
            time.sleep(cfg.poll_s)
    return scored


def _has_start(ctx: ValidatorContext) -> bool:
    with ctx.sessions() as s:
        return repo.last_scored_window(s) is not None or bool(repo.windows(s, limit=1))
