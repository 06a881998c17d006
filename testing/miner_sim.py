"""In-process simulation of several miners and the outer step, for tests and benchmarks.

Test scaffolding (formerly ``miner.simulate``), kept out of the production packages.

No chain, storage or signatures: M miners train from the same global weights on their
assigned pages (``miner.train``), send Δ through the real codec with error feedback
(``miner.compress``), and the outer step combines what was decoded with a rule of
``scoring.aggregate`` (``mean`` by default; ``selected_mean`` averages each coordinate over
the peers that selected it) and applies it with the same exact sparse update the validator
publishes (``protocol.sync.apply_update``). The
same driver runs the two baselines of ``benchmarks/convergence.py``: uncompressed DiLoCo
(full Δ averaged, Nesterov outer momentum) and plain data-parallel AdamW.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from miner.compress import Compressor
from miner.train import evaluate, inner_train, iter_batches, load_state, make_optimizer, pseudo_gradient
from protocol.hparams import HParams
from protocol.model import build_model, preset
from protocol.pages import PageStore, assigned_pages, derive_seed
from protocol.sync import apply_update, dense_to_update
from scoring.aggregate import Rule, aggregate

Mode = Literal["sparseloco", "diloco", "dp_adamw"]


@dataclass
class SimConfig:
    mode: Mode = "sparseloco"
    miners: int = 4
    windows: int = 10
    outer_lr: float = 1.0
    outer_momentum: float = 0.0  # Nesterov momentum on the mean delta (DiLoCo: 0.9)
    outer_warmup: int = 0  # outer lr ramps linearly over this many windows: lr * (w + 1) / warmup
    rule: Rule = "mean"  # scoring.aggregate rule combining the miners' decoded deltas
    clip_to_median: bool = False  # clip each miner's tensor to the median norm first (the validator's old rule)
    normalise: bool = False  # scale each miner's whole delta to the median norm (the validator's rule, scoring.scale)
    eval_rows: int = 128
    threads: int | None = None


@dataclass
class SimResult:
    mode: Mode
    heldout: list[float]  # held-out loss of the global model before window 0 and after every window
    bytes_per_miner_window: float
    compress_s: float = 0.0  # per miner per window: EF + encode (+ decode for the aggregate)
    train_s: float = 0.0  # per miner per window: the inner steps
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def compress_share(self) -> float:
        total = self.compress_s + self.train_s
        return self.compress_s / total if total else 0.0


def heldout_rows(store: PageStore, rows: int) -> torch.Tensor:
    ids = store.heldout_ids()
    need = -(-rows // store.page_seqs)
    return store.pages(ids[: min(need, len(ids))])[:rows]


def miner_tokens(store: PageStore, hp: HParams, window: int, hotkey: str) -> torch.Tensor:
    ids = assigned_pages(window, hotkey, hp.data.public_seed, store.num_pages, hp.data.pages_per_window)
    return store.pages(ids)


def simulate(hp: HParams, store: PageStore, cfg: SimConfig,
             on_window: Callable[[int, float], None] | None = None) -> SimResult:
    """Run ``cfg.windows`` windows of ``cfg.mode`` from the seeded initial model; evaluate after each."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    config = preset(hp.model)
    heldout = heldout_rows(store, cfg.eval_rows)
    global_model = build_model(config, seed=hp.model_seed)
    state = {n: p.detach().clone() for n, p in global_model.named_parameters()}
    losses = [evaluate(global_model, heldout)]
    hotkeys = [f"sim-miner-{i}" for i in range(cfg.miners)]
    n_params = sum(t.numel() for t in state.values())
    H = hp.inner.steps

    if cfg.mode == "dp_adamw":
        # One model, M x the micro-batch per step: the same tokens per window as M miners x H steps.
        opt = make_optimizer(global_model, hp.inner)
        train_s = 0.0
        for w in range(cfg.windows):
            tokens = torch.cat([miner_tokens(store, hp, w, hk) for hk in hotkeys])
            batches = iter_batches(tokens, hp.inner.micro_batch * cfg.miners, H, derive_seed("sim/dp", w))
            stats = inner_train(global_model, batches, opt, H, params=hp.inner, step_offset=w * H)
            train_s += stats.seconds
            losses.append(evaluate(global_model, heldout))
            if on_window:
                on_window(w, losses[-1])
        # A ring all-reduce of fp32 gradients moves ~2x the gradient per step per worker.
        return SimResult(cfg.mode, losses, bytes_per_miner_window=2.0 * 4 * n_params * H,
                         train_s=train_s / cfg.windows, wall_s=time.perf_counter() - t_start)

    models = [build_model(config, seed=hp.model_seed) for _ in hotkeys]
    opts = [make_optimizer(m, hp.inner) for m in models]
    comps = [Compressor(hp) for _ in hotkeys] if cfg.mode == "sparseloco" else []
    momentum = {n: torch.zeros_like(t) for n, t in state.items()}
    sent_bytes = compress_s = train_s = 0.0
    for w in range(cfg.windows):
        deltas: list[dict[str, torch.Tensor]] = []
        for i, hk in enumerate(hotkeys):
            load_state(models[i], state)
            batches = iter_batches(miner_tokens(store, hp, w, hk), hp.inner.micro_batch, H,
                                   derive_seed("sim/miner", w, hk))
            stats = inner_train(models[i], batches, opts[i], H, params=hp.inner, step_offset=w * H)
            train_s += stats.seconds
            delta = pseudo_gradient(state, dict(models[i].named_parameters()))
            if cfg.mode == "sparseloco":
                t0 = time.perf_counter()
                encoded = comps[i].step(delta)
                compress_s += time.perf_counter() - t0
                sent_bytes += Compressor.nbytes(encoded)
                delta = comps[i].decode(encoded)  # what the validator sees (decode time is the validator's)
            else:
                sent_bytes += 4 * n_params
            deltas.append({n: d.reshape(state[n].shape) for n, d in delta.items()})
        with torch.no_grad():
            if cfg.normalise:
                deltas = _normalised(deltas)
            combined = aggregate(deltas, cfg.rule, clip_to_median=cfg.clip_to_median)
            del deltas
            step = {}
            for n, mean in combined.items():
                if cfg.outer_momentum:
                    momentum[n].mul_(cfg.outer_momentum).add_(mean)
                    mean = mean + cfg.outer_momentum * momentum[n]  # Nesterov
                step[n] = mean
            lr = cfg.outer_lr * min(1.0, (w + 1) / cfg.outer_warmup) if cfg.outer_warmup else cfg.outer_lr
            apply_update(state, dense_to_update(step, lr=lr))
            load_state(global_model, state)
        losses.append(evaluate(global_model, heldout))
        if on_window:
            on_window(w, losses[-1])
    per = cfg.windows * cfg.miners
    return SimResult(cfg.mode, losses, bytes_per_miner_window=sent_bytes / per, compress_s=compress_s / per,
                     train_s=train_s / per, wall_s=time.perf_counter() - t_start)


def _normalised(deltas: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Each delta scaled to the median of their norms, as the validator aggregates (``scoring.scale``)."""
    import statistics

    from scoring.scale import normalising_factor

    norms = [float(torch.sqrt(sum((t.double() ** 2).sum() for t in d.values()))) for d in deltas]
    median = statistics.median(norms)
    return [{n: t * normalising_factor(norm, median) for n, t in d.items()} for d, norm in zip(deltas, norms, strict=True)]
