"""Stage 2 planning and execution: in-process, or shared with workers over Redis.

``plan_stage2`` fixes everything a Stage-2 evaluation depends on (random pages from the
window's secret seed, each peer's assigned eval pages, its evaluation step) so that the
validator and any worker compute the same numbers. ``Stage2Runner.run`` evaluates the
plan: when a :class:`RemoteDispatcher` is configured (Redis), jobs go to the work queue
and the validator waits up to ``remote_timeout_s`` for results, then evaluates whatever
is left itself; with no dispatcher, or when Redis is down (degraded, logged and exported
as ``gauntlet_queue_degraded``), everything runs in-process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from protocol.global_model import GlobalModel
from protocol.hparams import HParams
from protocol.model import Model, ModelConfig, rope_tables
from scoring.scale import step_factor
from validator import metrics
from validator.collect import Collected
from validator.evaluate import EvalJob, EvalResult, PageSource, WindowEvaluator, eval_subset
from validator.stage1 import Stage1Result

log = logging.getLogger(__name__)


@dataclass
class Stage2Plan:
    window: int
    seed_hex: str
    random_page_ids: tuple[int, ...]
    jobs: list[EvalJob] = field(default_factory=list)
    remote: dict[str, dict[str, Any]] = field(default_factory=dict)  # hotkey -> what a worker needs to fetch


def plan_stage2(
    window: int, s1: Stage1Result, *, hp: HParams, seed: bytes, num_pages: int,
    collected: Mapping[str, Collected],
) -> Stage2Plan:
    """Pages, steps and fetch descriptions for every accepted peer (deterministic given the seed)."""
    from protocol.pages import assigned_pages, random_eval_pages

    eta = hp.scoring.eval_step_scale * hp.outer.lr
    assigned = {hk: assigned_pages(window, hk, hp.data.public_seed, num_pages, hp.data.pages_per_window)
                for hk in sorted(s1.accepted)}
    taken = sorted({p for pages in assigned.values() for p in pages})
    try:  # random pages no evaluated miner trained on, when the corpus is big enough
        random_ids = random_eval_pages(window, seed, num_pages, hp.data.eval_pages, exclude=taken)
    except ValueError:
        random_ids = random_eval_pages(window, seed, num_pages, hp.data.eval_pages)
    plan = Stage2Plan(window, seed.hex(), tuple(int(p) for p in random_ids))
    for hk in sorted(s1.accepted):
        cand = s1.accepted[hk]
        pages = eval_subset(assigned[hk], hp.data.eval_pages, seed=seed, hotkey=hk)
        step = eta * step_factor(cand.decoded.norm, s1.median_norm, hp.scoring.eval_norm, hp.scoring.eval_clip_ratio)
        plan.jobs.append(EvalJob(hk, cand.decoded.update, step, pages))
        plan.remote[hk] = {"window": window, "hotkey": hk, "url": collected[hk].url,
                           "payload_hash": cand.payload_hash, "step": step, "assigned_page_ids": list(pages),
                           "random_page_ids": list(plan.random_page_ids), "seed_hex": plan.seed_hex}
    return plan


def model_from_state(config: ModelConfig, state: Mapping[str, torch.Tensor]) -> Model:
    """A module holding a copy of ``state`` (no random init: built on the meta device)."""
    with torch.device("meta"):
        model = Model(config)
    model = model.to_empty(device="cpu")
    cos, sin = rope_tables(config)
    model.rope_cos.copy_(cos)
    model.rope_sin.copy_(sin)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name])
    return model


class RemoteDispatcher(Protocol):
    """Sends Stage-2 jobs to workers and collects their answers (``validator.worker.QueueDispatcher``)."""

    def evaluate(self, window: int, jobs: Sequence[dict[str, Any]], timeout_s: float) -> dict[str, EvalResult]:
        """Results that arrived in time, by hotkey; raises QueueUnavailable when Redis is down."""
        ...


class Stage2Runner:
    """Evaluates a plan against theta_W, remotely first when possible."""

    def __init__(self, pages: PageSource, *, dispatcher: RemoteDispatcher | None = None,
                 remote_timeout_s: float = 120.0, num_pages: int = 0) -> None:
        self.pages = pages
        self.num_pages = num_pages
        self.dispatcher = dispatcher
        self.remote_timeout_s = remote_timeout_s

    def run(self, model: GlobalModel, plan: Stage2Plan) -> dict[str, EvalResult]:
        results: dict[str, EvalResult] = {}
        if self.dispatcher is not None and plan.jobs:
            results.update(self._remote(plan))
        left = [job for job in plan.jobs if job.hotkey not in results]
        if left:
            evaluator = WindowEvaluator(model_from_state(model.config, model.state), self.pages,
                                        plan.random_page_ids)
            for job in left:
                try:
                    results[job.hotkey] = evaluator.evaluate(job)
                except Exception:  # one peer's evaluation failing never aborts the window
                    log.exception("window %d: evaluating %s failed", plan.window, job.hotkey)
        return results

    def forget(self, window: int) -> None:
        """Drop the window's queued results once they are in the database (best effort)."""
        from validator.queue import QueueUnavailable

        queue = getattr(self.dispatcher, "queue", None)
        if queue is not None:
            with contextlib.suppress(QueueUnavailable):
                queue.clear_window(window)

    def _remote(self, plan: Stage2Plan) -> dict[str, EvalResult]:
        from validator.queue import QueueUnavailable

        assert self.dispatcher is not None
        try:
            got = self.dispatcher.evaluate(plan.window, [plan.remote[j.hotkey] for j in plan.jobs],
                                           self.remote_timeout_s)
            metrics.DEGRADED.set(0)
        except QueueUnavailable as exc:
            metrics.DEGRADED.set(1)
            log.warning("window %d: Redis unavailable (%s); evaluating in-process (degraded)", plan.window, exc)
            return {}
        return {hk: r for hk, r in got.items() if hk in plan.remote}
