"""The validator's main loop, driven by chain blocks.

Window W is scored once the chain is in W+1 *and* the chain time has passed W's end plus
the upload grace (uploads stamped within the grace still count). Windows missed while the
validator was down are caught up in order from the database's view
(``repo.windows_to_score``), at most ``catch_up`` per pass; windows older than
``max_lookback`` are closed with an empty aggregate (theta unchanged) so the published
chain of aggregates never has a hole that miners could not sync across.

First start (no scored window, no own checkpoint): the validator publishes
checkpoint(start) = ``GlobalModel.initial(hp, window=start)`` for the current window so
miners can begin, and opens that window in the database.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from protocol.global_model import GlobalModel, latest_checkpoint_window
from protocol.windows import window_bounds, window_of
from validator.db import repo
from validator.publish import maybe_checkpoint
from validator.setweights import maybe_set_weights
from validator.window import ValidatorContext, WindowReport, score_window, skip_window

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    max_windows: int | None = None  # stop after scoring this many windows (None: forever)
    catch_up: int = 8  # windows scored per pass before looking at the chain again
    max_lookback: int = 50  # older unscored windows are closed empty, not evaluated
    poll_s: float = 2.0


def bootstrap(ctx: ValidatorContext, current_window: int) -> int | None:
    """Publish the initial checkpoint on a fresh start; returns the start window if it did."""
    with ctx.sessions() as s:
        if repo.last_scored_window(s) is not None or repo.windows(s, limit=1):
            return None
    if latest_checkpoint_window(ctx.own_storage, current_window) is not None:
        start = latest_checkpoint_window(ctx.own_storage, current_window)
    else:
        start = current_window
        maybe_checkpoint(ctx, GlobalModel.initial(ctx.hp, window=start), force=True)
        log.info("fresh start: published the initial checkpoint for window %d", start)
    with ctx.sessions() as s:
        repo.open_window(s, window=start)
    return start


def ready(ctx: ValidatorContext, window: int) -> bool:
    """The chain is past W and its grace: uploads for W can no longer count."""
    end_block = window_bounds(window, ctx.hp.windows).end_block
    block = ctx.chain.block()
    if block < end_block:
        return False
    return ctx.chain.block_timestamp(block) >= ctx.chain.block_timestamp(end_block) + ctx.hp.windows.upload_grace_s


def pending_windows(ctx: ValidatorContext, cfg: LoopConfig) -> list[int]:
    current = window_of(ctx.chain.block(), ctx.hp.windows)
    with ctx.sessions() as s:
        todo = repo.windows_to_score(s, current_window=current)
    return [w for w in todo if ready(ctx, w)]


def run_pass(ctx: ValidatorContext, cfg: LoopConfig, limit: int | None = None) -> list[WindowReport]:
    """Score (or close) the windows that are ready, oldest first, at most ``catch_up`` of them."""
    todo = pending_windows(ctx, cfg)
    newest = window_of(ctx.chain.block(), ctx.hp.windows) - 1  # the last closed window
    reports = []
    for window in todo[: min(cfg.catch_up, limit if limit is not None else cfg.catch_up)]:
        if newest - window > cfg.max_lookback:
            reports.append(skip_window(ctx, window))
        else:
            reports.append(score_window(ctx, window))
        maybe_set_weights(ctx, window)
    return reports


def run(ctx: ValidatorContext, cfg: LoopConfig) -> int:
    """The loop: bootstrap, then score windows as they close. Returns windows scored."""
    bootstrap(ctx, window_of(ctx.chain.block(), ctx.hp.windows))
    scored = 0
    while cfg.max_windows is None or scored < cfg.max_windows:
        reports = run_pass(ctx, cfg, None if cfg.max_windows is None else cfg.max_windows - scored)
        scored += sum(1 for r in reports if r.scored)
        if not reports:
            time.sleep(cfg.poll_s)
    return scored
