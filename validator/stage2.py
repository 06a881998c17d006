"""Stage 2 planning and execution: in-process, or shared with workers over Redis, within a time budget.

``plan_stage2`` fixes everything a Stage-2 evaluation depends on (the random pages, the control
pages and each peer's evaluated assigned pages, all drawn from the window's public beacon, so
every validator measures the same contributions and tests the same work; the evaluation step) so that the
validator and any worker compute the same numbers. ``Stage2Runner.run`` evaluates the
plan: when a :class:`RemoteDispatcher` is configured (Redis), jobs go to the work queue
and the validator waits up to ``remote_timeout_s`` for results, then evaluates whatever
is left itself; with no dispatcher, or when Redis is down (degraded, logged and exported
as ``gauntlet_queue_degraded``), everything runs in-process.

**Time budget.** Every peer is evaluated every window if time allows, but a window's proposal
is only worth something before the publish deadline (``protocol.follow``), so Stage 2 stops at
``budget_end``: the deadline less ``scoring.eval_reserve_fraction`` of the publish timeout, kept
for combining, aggregating and publishing. A validator already past that point (catching up
after a restart) gets the same length of time from the start of its Stage 2, so each window
costs at most that long and the validator never falls further behind. Peers are evaluated in
this order (``evaluation_order``): the ``outer.max_peers`` best previous scores first (the
peers the aggregate and the weights rest on), then everyone else in an order drawn from the
window's secret seed, so no miner can predict or buy its place. Peers left when time runs out
are *unevaluated*: recorded with that status in their receipt, their standing unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from protocol.global_model import GlobalModel
from protocol.hparams import HParams
from protocol.model import model_from_state
from scoring.scale import step_factor
from validator import metrics
from validator.collect import Collected
from validator.evaluate import (
    Compute,
    EvalJob,
    EvalResult,
    PageSource,
    RemoteJob,
    WindowEvaluator,
    eval_subset,
)
from validator.stage1 import Stage1Result

log = logging.getLogger(__name__)


@dataclass
class Stage2Plan:
    window: int
    seed_hex: str
    random_page_ids: tuple[int, ...]
    jobs: list[EvalJob] = field(default_factory=list)  # in evaluation order
    #: The window's beacon (``protocol.windows.beacon_block``) and the control pages it draws.
    beacon: Beacon | None = None
    control_page_ids: tuple[int, ...] = ()
    remote: dict[str, RemoteJob] = field(default_factory=dict)  # hotkey -> the job as a worker gets it
    unevaluated: list[str] = field(default_factory=list)  # filled by Stage2Runner.run: jobs the budget left out


def evaluation_order(hotkeys: Iterable[str], prev_scores: Mapping[str, float], *, seed: bytes, top: int) -> list[str]:
    """The ``top`` best previous scores (ties by hotkey), then the rest in a secret-seeded random order."""
    hotkeys = sorted(set(hotkeys))
    ranked = sorted((hk for hk in hotkeys if prev_scores.get(hk, 0.0) > 0.0), key=lambda hk: (-prev_scores[hk], hk))
    first = ranked[:top]
    chosen = set(first)
    draw = lambda hk: hashlib.blake2b(seed + b"eval-order" + hk.encode(), digest_size=8).digest()  # noqa: E731
    return first + sorted((hk for hk in hotkeys if hk not in chosen), key=draw)


def budget_end(started: float, publish_deadline: float, hp: HParams) -> float:
    """When Stage 2 stops (module docstring): the deadline less the reserve, or as long from ``started``."""
    length = hp.windows.publish_timeout_s * (1.0 - hp.scoring.eval_reserve_fraction)
    end = publish_deadline - hp.windows.publish_timeout_s * hp.scoring.eval_reserve_fraction
    return end if end > started else started + length


@dataclass(frozen=True, slots=True)
class Beacon:
    """The window's public randomness: the hash of ``block`` (``protocol.windows.beacon_block``)."""

    block: int
    hash: bytes


def _draw(draw: Callable[..., list[int]], *args: object, exclude: Sequence[int]) -> tuple[int, ...]:
    """Pages no evaluated miner trained on, when the corpus is big enough; any pages otherwise."""
    try:
        return tuple(int(p) for p in draw(*args, exclude=exclude))
    except ValueError:
        return tuple(int(p) for p in draw(*args))


def plan_stage2(
    window: int, s1: Stage1Result, *, hp: HParams, seed: bytes, beacon: Beacon, num_pages: int,
    collected: Mapping[str, Collected], prev_scores: Mapping[str, float] | None = None,
) -> Stage2Plan:
    """Pages, steps and fetch descriptions for every accepted peer (deterministic given the seed and beacon).

    Jobs come in :func:`evaluation_order` of ``prev_scores`` (the peers' final scores before the window).
    """
    from protocol.pages import assigned_pages, control_pages, random_eval_pages

    eta = hp.scoring.eval_step_scale * hp.outer.lr
    assigned = {hk: assigned_pages(window, hk, hp.data.public_seed, num_pages, hp.data.pages_per_window)
                for hk in sorted(s1.accepted)}
    taken = sorted({p for pages in assigned.values() for p in pages})
    control_ids = _draw(control_pages, window, beacon.hash, num_pages, hp.data.eval_pages, exclude=taken)
    random_ids = _draw(random_eval_pages, window, beacon.hash, num_pages, hp.data.eval_pages,
                       exclude=sorted({*taken, *control_ids}))
    plan = Stage2Plan(window, seed.hex(), random_ids, beacon=beacon, control_page_ids=control_ids)
    for hk in evaluation_order(s1.accepted, prev_scores or {}, seed=seed, top=hp.outer.max_peers):
        cand = s1.accepted[hk]
        pages = eval_subset(assigned[hk], hp.data.eval_pages, seed=beacon.hash, hotkey=hk)
        step = eta * step_factor(cand.decoded.norm, s1.median_norm, hp.scoring.eval_norm, hp.scoring.eval_clip_ratio)
        reach = tuple(hp.scoring.eval_reach)
        plan.jobs.append(EvalJob(hk, cand.decoded.load_update, step, pages, reach))  # decoded when evaluated
        plan.remote[hk] = RemoteJob(window, hk, collected[hk].url, cand.payload_hash, step, tuple(pages),
                                    plan.random_page_ids, plan.seed_hex, reach, plan.control_page_ids)
    return plan


class RemoteDispatcher(Protocol):
    """Sends Stage-2 jobs to workers and collects their answers (``validator.worker.QueueDispatcher``)."""

    def evaluate(self, window: int, jobs: Sequence[RemoteJob], timeout_s: float) -> dict[str, EvalResult]:
        """Results that arrived in time, by hotkey; raises QueueUnavailable when Redis is down."""
        ...

    def forget(self, window: int) -> None:
        """Drop the window's queued jobs and results; raises QueueUnavailable when Redis is down."""
        ...


class Stage2Runner:
    """Evaluates a plan against theta_W, remotely first when possible."""

    def __init__(self, pages: PageSource, *, dispatcher: RemoteDispatcher | None = None,
                 remote_timeout_s: float = 120.0, num_pages: int = 0, compute: Compute | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pages = pages
        self.clock = clock  # wall clock of the time budget (tests pass a fake one)
        self.compute = compute or Compute()
        self.num_pages = num_pages
        self.dispatcher = dispatcher
        self.remote_timeout_s = remote_timeout_s

    def run(self, model: GlobalModel, plan: Stage2Plan, *, deadline: float | None = None) -> dict[str, EvalResult]:
        """Results by hotkey; jobs not started by ``deadline`` (``self.clock`` time) go to ``plan.unevaluated``."""
        clock = self.clock
        results: dict[str, EvalResult] = {}
        if self.dispatcher is not None and plan.jobs:
            results.update(self._remote(plan, deadline, clock))
        left = [job for job in plan.jobs if job.hotkey not in results]
        plan.unevaluated = []
        if left and (deadline is None or clock() < deadline):
            module = model_from_state(model.config, model.state, self.compute.torch_device)
            evaluator = WindowEvaluator(module, self.pages, plan.random_page_ids, self.compute, plan.control_page_ids)
            for i, job in enumerate(left):
                if deadline is not None and clock() >= deadline:
                    plan.unevaluated = [j.hotkey for j in left[i:]]
                    break
                try:
                    results[job.hotkey] = evaluator.evaluate(job)
                except Exception:  # one peer's evaluation failing never aborts the window
                    log.exception("window %d: evaluating %s failed", plan.window, job.hotkey)
        elif left:
            plan.unevaluated = [j.hotkey for j in left]
        if plan.unevaluated:
            log.warning("window %d: time budget reached, %d of %d accepted peer(s) left unevaluated", plan.window,
                        len(plan.unevaluated), len(plan.jobs))
        metrics.PEERS_UNEVALUATED.set(len(plan.unevaluated))
        return results

    def forget(self, window: int) -> None:
        """Drop the window's queued results once they are in the database (best effort)."""
        from validator.queue import QueueUnavailable

        if self.dispatcher is not None:
            with contextlib.suppress(QueueUnavailable):
                self.dispatcher.forget(window)

    def _remote(self, plan: Stage2Plan, deadline: float | None, clock: Callable[[], float]) -> dict[str, EvalResult]:
        from validator.queue import QueueUnavailable

        assert self.dispatcher is not None
        timeout = self.remote_timeout_s if deadline is None else max(0.0, min(self.remote_timeout_s, deadline - clock()))
        try:
            got = self.dispatcher.evaluate(plan.window, [plan.remote[j.hotkey] for j in plan.jobs], timeout)
            metrics.DEGRADED.set(0)
        except QueueUnavailable as exc:
            metrics.DEGRADED.set(1)
            log.warning("window %d: Redis unavailable (%s); evaluating in-process (degraded)", plan.window, exc)
            return {}
        return {hk: r for hk, r in got.items() if hk in plan.remote}
