"""``gauntlet validator worker``: Stage-2 evaluations pulled from the Redis work queue.

A worker is stateless apart from caches: for each job it (1) brings its copy of theta_W up
to the job's window from its validator's store (that validator's checkpoints and its copy of
the subnet's applied aggregates, ``sync_global_model``; the validator copies W-1's aggregate
before it dispatches W's jobs), (2) fetches the
peer's delta from the peer's own storage with the size cap, checks that its payload hash
is the one the validator accepted in Stage 1, parses and decodes it, (3) evaluates it with
the same :class:`validator.evaluate.WindowEvaluator` the validator uses, and (4) completes
the job (result + ack in one MULTI). Jobs of a dead worker are reclaimed after
``stale_ms``. The validator side of the exchange is :class:`QueueDispatcher`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from protocol.codec import CodecConfig
from protocol.global_model import GlobalModel, sync_global_model
from protocol.hparams import HParams
from protocol.model import model_from_state
from protocol.peer_storage import EndpointPolicy
from protocol.storage import Storage, delta_key
from validator import metrics
from validator.collect import StorageCache
from validator.evaluate import Compute, EvalJob, EvalResult, PageSource, RemoteJob, WindowEvaluator
from validator.queue import Job, WorkQueue
from validator.stage1 import decode_upload

log = logging.getLogger(__name__)


class JobError(RuntimeError):
    """The job cannot be evaluated here (the validator evaluates it itself)."""


class QueueDispatcher:
    """Validator side: submit a window's jobs, poll for results until done or timed out."""

    def __init__(self, queue: WorkQueue, *, poll_s: float = 0.05) -> None:
        self.queue = queue
        self.poll_s = poll_s

    def evaluate(self, window: int, jobs: Sequence[RemoteJob], timeout_s: float) -> dict[str, EvalResult]:
        for job in jobs:
            self.queue.submit(window, job.hotkey, job.to_json())
        wanted = {j.hotkey for j in jobs}
        deadline = time.monotonic() + timeout_s
        got: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            got = self.queue.results(window)
            if wanted <= set(got):
                break
            time.sleep(self.poll_s)
        return {hk: EvalResult.from_dict(r["result"]) for hk, r in got.items() if hk in wanted and r.get("ok")}

    def forget(self, window: int) -> None:
        self.queue.clear_window(window)


@dataclass
class WorkerConfig:
    """Settings of one worker process."""

    consumer: str
    validator_hotkey: str  # the validator this worker serves: its store holds theta's history
    allow_local_storage: bool = False  # the miner-store policy's dev flag (GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE)
    stale_ms: int = 60_000  # reclaim jobs idle this long (their worker died)
    block_ms: int = 1000
    compute: Compute = field(default_factory=Compute)  # --device / --dtype, as the validator's own Stage 2


class Worker:
    def __init__(self, cfg: WorkerConfig, *, hp: HParams, queue: WorkQueue, publish_storage: Storage,
                 pages: PageSource, codec_cfg: CodecConfig) -> None:
        self.cfg, self.hp, self.queue = cfg, hp, queue
        self.publish_storage, self.pages, self.codec_cfg = publish_storage, pages, codec_cfg
        self.stores = StorageCache(policy=EndpointPolicy(allow_private=cfg.allow_local_storage))
        self.model: GlobalModel | None = None
        self._evaluator: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], WindowEvaluator] | None = None

    def evaluator(self, window: int, random_page_ids: tuple[int, ...],
                  control_page_ids: tuple[int, ...] = ()) -> WindowEvaluator:
        key = (window, random_page_ids, control_page_ids)
        if self._evaluator is None or self._evaluator[0] != key:
            self.model = sync_global_model(self.model if self.model and self.model.window <= window else None,
                                           window, hp=self.hp, storage=self.publish_storage,
                                           owner=self.cfg.validator_hotkey)
            if self.model.window != window:
                raise JobError(f"published history reaches window {self.model.window}, not {window}")
            module = model_from_state(self.model.config, self.model.state, self.cfg.compute.torch_device)
            self._evaluator = (key, WindowEvaluator(module, self.pages, random_page_ids, self.cfg.compute,
                                                    control_page_ids))
        return self._evaluator[1]

    def fetch(self, job: RemoteJob) -> EvalJob:
        from protocol.wire import WireError, parse_delta

        # The policy refuses the URL here too (StorageRefused) if the validator's would.
        data = self.stores.get(job.url).get(delta_key(job.window, job.hotkey), max_bytes=self.hp.max_upload_bytes)
        assert self.model is not None
        try:
            parsed = parse_delta(data, expected_shapes=self.model.shapes, cfg=self.codec_cfg,
                                 max_bytes=self.hp.max_upload_bytes)
        except WireError as exc:
            raise JobError(f"parse: {exc}") from exc
        if parsed.payload_hash != job.payload_hash:
            raise JobError("payload changed since Stage 1")
        decoded = decode_upload(parsed.encoded, self.model.shapes, self.codec_cfg)
        return EvalJob(job.hotkey, decoded.load_update(), job.step, job.assigned_page_ids, job.reach)

    def handle(self, job: Job) -> dict[str, Any]:
        try:
            remote = RemoteJob.from_json(job.payload)
            if (remote.window, remote.hotkey) != (job.window, job.hotkey):
                raise JobError("the job's payload names another window or hotkey than its queue entry")
            evaluator = self.evaluator(remote.window, remote.random_page_ids, remote.control_page_ids)
            result = replace(evaluator.evaluate(self.fetch(remote)), evaluator="worker")
            return {"ok": True, "worker": self.cfg.consumer, "result": result.as_dict()}
        except Exception as exc:  # reported back; the validator evaluates the peer itself
            log.warning("job %s/%s failed: %s", job.window, job.hotkey, exc)
            return {"ok": False, "worker": self.cfg.consumer, "error": repr(exc)[:500]}

    def run_once(self) -> int:
        """Handle the jobs available now (reclaimed stale ones first); returns how many."""
        jobs = self.queue.reclaim_stale(self.cfg.consumer, self.cfg.stale_ms, count=10)
        jobs += self.queue.claim(self.cfg.consumer, count=1, block_ms=self.cfg.block_ms)
        for job in jobs:
            start = time.perf_counter()
            outcome = self.handle(job)
            metrics.observe_worker_job(bool(outcome.get("ok")), time.perf_counter() - start)
            self.queue.complete(job, outcome)
        return len(jobs)

    def run(self, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Loop until ``max_jobs`` done or idle for ``idle_exit_s`` (None: forever)."""
        done, idle_since = 0, time.monotonic()
        while max_jobs is None or done < max_jobs:
            n = self.run_once()
            done += n
            if n:
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
        return done


def default_consumer() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"
