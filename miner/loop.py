"""The miner's window loop: sync θ_W, train H steps on the assigned pages, send compressed Δ.

``Miner.run`` is a short loop of named steps; every step is a method so that the
adversarial miners of the test harness (``testing.adversaries``: free-rider, copycat,
replay, stale, late, poisoner, wrong pages, NaN, malformed, forged signature, sybil) can
subclass and override exactly one of them:

    wait_for_window → await_global_model → window_tokens → train_delta → encode_delta
    → sign → persist_pending → upload → commit_uploaded

Ordering for crash safety (see ``miner.state``): the EF buffer and optimizer state after
sending, and the signed payload, are written *before* the upload; ``progress.json`` then
records the pending window. After the upload it records the window as uploaded. A restart
with a pending window finishes the same upload if it is still on time (the store is asked
first, so a window is never uploaded twice) or puts the unsent values back into the EF
buffer if the window is over.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chain.base import Chain, seconds_per_block
from miner import distributed as mdist
from miner.compress import Compressor
from miner.metrics import MinerMetrics, ProgressLine
from miner.state import MinerState, Progress
from miner.train import inner_train, iter_batches, load_state, make_optimizer, pseudo_gradient, rank_slice
from protocol import faults
from protocol.follow import Follower, store_opener
from protocol.global_model import GlobalModel, OutOfSync
from protocol.hparams import HParams
from protocol.model import build_model, preset
from protocol.pages import PageStore, assigned_pages, derive_seed
from protocol.storage import ObjectNotFound, Storage, StorageError, delta_key
from protocol.sync import SyncError
from protocol.windows import upload_deadline, window_bounds, window_of

log = logging.getLogger(__name__)

TRAIN, SKIP, STOP = 1, 2, 0


@dataclass
class MinerOptions:
    netuid: int
    storage_url: str  # where this miner uploads; committed on chain
    state_dir: Path
    device: str = "cpu"
    max_windows: int | None = None  # stop after this many windows (trained or skipped)
    wait_fraction: float = 0.6  # give up on θ_W this far into the window (bounded by the deadline)
    poll_s: float = 1.0
    upload_margin_s: float = 1.0  # do not start an upload later than deadline - margin


class Miner:
    def __init__(self, hp: HParams, chain: Chain | None, keypair: Any, options: MinerOptions, *,
                 pages: PageStore, storage: Storage | None = None, metrics: MinerMetrics | None = None,
                 dist: mdist.DistInfo | None = None, progress_line: ProgressLine | None = None) -> None:
        self.hp, self.chain, self.keypair, self.opt = hp, chain, keypair, options
        self.hotkey: str = keypair.ss58_address if keypair is not None else ""
        self.pages = pages
        self.dist = dist or mdist.DistInfo()
        self.metrics = metrics or MinerMetrics()
        self.line = progress_line or ProgressLine()
        self.storage = storage
        self.state = MinerState(options.state_dir, self.hotkey) if self.dist.is_main else None
        self.progress = Progress(hotkey=self.hotkey)
        self.compressor = Compressor(hp)
        self.global_model: GlobalModel | None = None
        self.follower = (Follower(hp, chain, options.netuid, open_store=store_opener(allow_local=True))
                         if chain is not None else None)
        self._train_estimate_s = 0.0
        self.device = torch.device(options.device if not options.device.startswith("cuda") or not self.dist.enabled
                                   else f"cuda:{self.dist.local_rank}")
        self.model = build_model(preset(hp.model), seed=hp.model_seed, device=self.device)
        self.ddp = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids, broadcast_buffers=False)
        self.optimizer = make_optimizer(self.model, hp.inner)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        self.restore()
        done, window = 0, None
        while self.opt.max_windows is None or done < self.opt.max_windows:
            window, action = self.next_window(window)
            if action == STOP:
                break
            if action == TRAIN:
                self.train_window(window)
            done += 1
        mdist.barrier(self.dist)

    def next_window(self, previous: int | None) -> tuple[int, int]:
        """Rank 0 picks the window to work on, waits for θ_W, and tells every rank what to do."""
        window, action = 0, STOP
        if self.dist.is_main:
            window = self.current_window() if previous is None else max(previous + 1, self.current_window())
            if self.progress.last_uploaded_window is not None:
                window = max(window, self.progress.last_uploaded_window + 1)
            self.wait_for_window(window)
            self.metrics.window.set(window)
            action = TRAIN if self.ready_to_train(window) else SKIP
        window, action = mdist.broadcast_ints([window, action], self.dist)
        return window, action

    def train_window(self, window: int) -> None:
        """One window's work; only rank 0 signs, uploads and saves."""
        t0 = time.perf_counter()
        gm = mdist.broadcast_tree(self.global_model.state if self.dist.is_main else None, self.dist)
        tokens = mdist.broadcast_tree(self.window_tokens(window) if self.dist.is_main else None, self.dist)
        delta = self.train_delta(window, gm, tokens)
        if not self.dist.is_main:
            return
        if delta is None:
            self.skip(window, "deadline")
            return
        t_enc = time.perf_counter()
        encoded = self.encode_delta(window, delta)
        payload = self.sign(window, encoded)
        encode_s = time.perf_counter() - t_enc
        self.persist_pending(window, payload)
        faults.point("after_persist")  # restart tests kill the process here (testing.faults)
        if not self.upload(window, payload):
            self.compressor.restore(encoded)
            self.persist_rollback(window)
            return
        faults.point("after_upload")
        self.commit_uploaded(window)
        self._train_estimate_s = time.perf_counter() - t0
        self.metrics.windows_trained.inc()
        self.metrics.window_seconds.labels(stage="encode").observe(encode_s)
        self.metrics.window_seconds.labels(stage="window").observe(self._train_estimate_s)

    # ------------------------------------------------------------------ time and sync

    def current_window(self) -> int:
        return window_of(self.chain.block(), self.hp.windows)

    def deadline(self, window: int) -> float:
        """Latest wall time at which an upload for ``window`` still starts (store time is what counts)."""
        end = window_bounds(window, self.hp.windows).end_block
        return upload_deadline(self.chain.block_timestamp(end), self.hp.windows) - self.opt.upload_margin_s

    def wait_for_window(self, window: int) -> None:
        start = window_bounds(window, self.hp.windows).start_block
        while self.chain.block() < start:
            self.chain.wait_for_block(start, timeout_s=max(60.0, 3 * self.window_seconds()))

    def window_seconds(self) -> float:
        """A window's length from the chain's recent pace (never from block 0: see ``seconds_per_block``)."""
        return self.hp.windows.blocks_per_window * seconds_per_block(self.chain)

    def ready_to_train(self, window: int) -> bool:
        """Reach θ_W (waiting a bounded time for the validator to publish it) and check the window is open."""
        if self.already_uploaded(window):
            self.skip(window, "already_uploaded")
            return False
        start = self.chain.block_timestamp(window_bounds(window, self.hp.windows).start_block)
        give_up = min(start + self.opt.wait_fraction * self.window_seconds(),
                      self.deadline(window) - self._train_estimate_s)
        while True:
            try:
                if self.await_global_model(window):
                    break
            except (OutOfSync, SyncError, StorageError) as exc:
                self.metrics.errors.labels(kind="sync").inc()
                log.warning("window %d: cannot sync the global model: %s", window, exc)
            if time.time() >= give_up:
                have = self.global_model.window if self.global_model else None
                self.skip(window, "no_global_model", f"theta_{window} not published in time (have {have})")
                return False
            time.sleep(min(self.opt.poll_s, max(0.0, give_up - time.time()) + 0.01))
        if time.time() + self._train_estimate_s > self.deadline(window):
            self.skip(window, "too_late", "not enough time left to train and upload")
            return False
        return True

    def await_global_model(self, window: int) -> bool:
        """Advance the held global model towards θ_W (``protocol.follow``); True once it is there."""
        current = self.global_model
        if current is not None and current.window > window:
            current = None  # a stale future model (clock skew); restart from checkpoints
        before = current.publisher if current is not None else None
        self.global_model = self.follower.advance(current, window)
        if self.global_model.publisher != before and self.global_model.publisher is not None:
            log.info("following validator %s", self.global_model.publisher)
        return self.global_model.window == window

    # ------------------------------------------------------------------ the delta (overridable steps)

    def window_tokens(self, window: int) -> torch.Tensor:
        """Exactly the pages assigned to this hotkey for ``window``, as [rows, seq_len]."""
        ids = assigned_pages(window, self.hotkey, self.hp.data.public_seed, self.pages.num_pages,
                             self.hp.data.pages_per_window)
        return self.pages.pages(ids)

    def train_delta(self, window: int, global_state: dict[str, torch.Tensor], tokens: torch.Tensor
                    ) -> dict[str, torch.Tensor] | None:
        """H inner steps from θ_W on this rank's share of ``tokens``; Δ = θ_W - θ_local (rank 0 only)."""
        load_state(self.model, global_state)
        rows = rank_slice(tokens, self.dist.rank, self.dist.world)
        micro = max(1, self.hp.inner.micro_batch // self.dist.world)
        seed = derive_seed("gauntlet/miner-batches/v1", window, self.hotkey or "anon", self.dist.rank)
        deadline = self.deadline(window) if self.dist.is_main else None
        stats = inner_train(
            self.ddp, iter_batches(rows, micro, self.hp.inner.steps, seed), self.optimizer, self.hp.inner.steps,
            params=self.hp.inner, step_offset=self.progress.inner_steps_done, device=self.device,
            on_step=lambda s, loss, tps: self._on_step(window, s, loss, tps),
        )
        self.progress.inner_steps_done += stats.steps
        if not self.dist.is_main:
            return None
        self.line.done(f"window {window}: trained {stats.steps} steps, loss {stats.first_loss:.3f} -> "
                       f"{stats.last_loss:.3f}, {stats.tokens_per_s:,.0f} tok/s")
        if deadline is not None and time.time() > deadline:
            return None
        local = {n: p.detach() for n, p in self.model.named_parameters()}
        return pseudo_gradient(global_state, local)

    def encode_delta(self, window: int, delta: dict[str, torch.Tensor]) -> Any:
        return self.compressor.step(delta)

    def sign(self, window: int, encoded: Any) -> bytes:
        return self.compressor.pack(encoded, window=window, hotkey=self.hotkey,
                                    base_model_hash=self.global_model.hash, keypair=self.keypair)

    def upload(self, window: int, payload: bytes) -> bool:
        """Put the payload at ``delta_key(W, hotkey)`` unless the store already has it; False if too late."""
        key = delta_key(window, self.hotkey)
        if self.already_uploaded(window):
            return True
        if time.time() > self.deadline(window):
            self.skip(window, "late", "deadline passed before the upload could start")
            return False
        t0 = time.perf_counter()
        try:
            self.storage.put(key, payload)
        except StorageError as exc:
            self.metrics.errors.labels(kind="upload").inc()
            self.skip(window, "upload_failed", str(exc))
            return False
        seconds = time.perf_counter() - t0
        self.metrics.upload_bytes.inc(len(payload))
        self.metrics.upload_seconds.observe(seconds)
        log.info("window %d: uploaded %s (%.1f KiB in %.2fs)", window, key, len(payload) / 1024, seconds)
        self.line.done(f"window {window}: uploaded {len(payload) / 1024:.1f} KiB in {seconds:.2f}s")
        return True

    def already_uploaded(self, window: int) -> bool:
        """Our own record first, then the store's word (covers a crash between upload and commit)."""
        if self.progress.last_uploaded_window is not None and window <= self.progress.last_uploaded_window:
            return True
        try:
            self.storage.stat(delta_key(window, self.hotkey))
            return True
        except ObjectNotFound:
            return False

    # ------------------------------------------------------------------ persistence

    def restore(self) -> None:
        """Load EF/optimizer/progress; finish or roll back a window interrupted by a crash."""
        opt_state = None
        if self.dist.is_main:
            self.progress, ef, opt_state = self.state.load()
            self.compressor.load_ef(ef)
            self.global_model = None  # reached from the validators' checkpoints and aggregates
            log.info("initial global model %s (preset %s, seed %d)", GlobalModel.initial(self.hp).hash[:16],
                     self.hp.model, self.hp.model_seed)
            if self.progress.pending_window is not None:
                self._resolve_pending()
        opt_state = mdist.broadcast_tree(opt_state, self.dist)
        if opt_state is not None:
            self.optimizer.load_state_dict(opt_state)

    def _resolve_pending(self) -> None:
        w, payload = self.progress.pending_window, self.state.pending_payload(self.progress)
        if self.already_uploaded(w) or (time.time() <= self.deadline(w) and self.upload(w, payload)):
            log.info("recovered window %d: its upload is in the store", w)
            self.commit_uploaded(w)
            return
        log.warning("recovered window %d: never uploaded and now too late; returning its values to EF", w)
        self.compressor.restore(self.compressor.unpack(payload, self.model_shapes()))
        self.persist_rollback(w)

    def model_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.model.named_parameters()}

    def persist_pending(self, window: int, payload: bytes) -> None:
        name, digest = self.state.write_tensors(window, self.compressor.ef, self.optimizer.state_dict())
        pname, pdigest = self.state.write_payload(window, payload)
        p = self.progress
        p.tensors, p.tensors_sha256, p.trained_window = name, digest, window
        p.pending_window, p.pending_payload, p.pending_sha256 = window, pname, pdigest
        self.state.commit(p)

    def persist_rollback(self, window: int) -> None:
        name, digest = self.state.write_tensors(window, self.compressor.ef, self.optimizer.state_dict())
        p = self.progress
        p.tensors, p.tensors_sha256 = name, digest
        p.pending_window = p.pending_payload = p.pending_sha256 = None
        self.state.commit(p)

    def commit_uploaded(self, window: int) -> None:
        p = self.progress
        p.last_uploaded_window = max(window, p.last_uploaded_window or -1)
        p.pending_window = p.pending_payload = p.pending_sha256 = None
        p.history.append({"window": window, "uploaded_at": time.time()})
        self.state.commit(p)
        self.metrics.last_uploaded.set(window)

    # ------------------------------------------------------------------ reporting

    def skip(self, window: int, reason: str, detail: str = "") -> None:
        self.metrics.windows_skipped.labels(reason=reason).inc()
        log.info("window %d: skipped (%s)%s", window, reason, f": {detail}" if detail else "")

    def _on_step(self, window: int, step: int, loss: float, tokens_per_s: float) -> None:
        if not self.dist.is_main:
            return
        self.metrics.inner_loss.set(loss)
        self.metrics.tokens_per_s.set(tokens_per_s)
        self.line.update(f"window {window} step {step}/{self.hp.inner.steps} loss {loss:.4f} "
                         f"{tokens_per_s:,.0f} tok/s")

