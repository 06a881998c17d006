"""Convergence benchmark: SparseLoCo vs uncompressed DiLoCo vs data-parallel AdamW on the tiny preset.

All three runs see the same tokens (each window, M miners x H steps x micro-batch rows of their
assigned pages) from the same seeded initial model, and report the held-out loss after the
same number of windows, bytes sent per miner per window, and (SparseLoCo) the share of a
miner's window wall time spent in error feedback + encoding.

    python benchmarks/convergence.py --miners 3 --windows 8 --steps 10 --micro-batch 4

SparseLoCo's outer step combines the decoded sparse deltas with ``--sparse-rule`` (``mean``
divides every coordinate by all M miners; ``selected_mean`` by the miners that selected it, the
reference's rule) times ``--sparse-outer-lr`` (error feedback plays the role of outer momentum);
every combination of rule x outer lr x ``--ef-beta`` is run. DiLoCo uses Nesterov outer momentum
0.9 and each ``--diloco-outer-lr`` (0.7 in the DiLoCo paper); DP AdamW takes H steps per window
on M x the micro-batch. ``--outer-warmup N`` ramps both outer lrs linearly over N windows.
``--step-values`` rounds SparseLoCo's outer step as an aggregate format carries it before it is
applied: ``fp32`` (unrounded, as before), ``bf16`` (aggregate format v2) or ``v3`` (today's 7-bit
values with a bf16 scale per 64, ``protocol.compact.round_update``); each is run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import testing.miner_sim as miner_sim
from protocol.compact import round_update
from protocol.hparams import load_hparams
from protocol.pages import default_store
from protocol.sync import dense_to_update
from testing.miner_sim import SimConfig, SimResult, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miners", type=int, default=3)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="H, inner steps per window")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--inner-lr", type=float, default=2e-3)
    ap.add_argument("--sparse-outer-lr", type=float, nargs="*", default=[1.0], help="none: skip SparseLoCo")
    ap.add_argument("--sparse-rule", nargs="+", default=["mean"], choices=["mean", "selected_mean"])
    ap.add_argument("--ef-beta", type=float, nargs="+", default=[0.95], help="error-feedback decay(s)")
    ap.add_argument("--clip-to-median", action="store_true", help="clip each miner's tensors to the median norm "
                    "before combining (as the validator does)")
    ap.add_argument("--normalise", action="store_true", help="scale each miner's delta to the median norm before "
                    "combining (the validator's rule, scoring.scale)")
    ap.add_argument("--outer-warmup", type=int, default=0, help="windows of linear outer-lr warm-up")
    ap.add_argument("--step-values", nargs="+", default=["fp32"], choices=["fp32", "bf16", "v3"],
                    help="SparseLoCo's outer step rounded as this aggregate format carries it (each is run)")
    ap.add_argument("--diloco-outer-lr", type=float, nargs="+", default=[0.7])
    ap.add_argument("--diloco-momentum", type=float, default=0.9)
    ap.add_argument("--eval-rows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    ap.add_argument("--home", default=str(Path.home() / ".gauntlet"))
    ap.add_argument("--no-dp", action="store_true", help="skip the data-parallel AdamW baseline")
    ap.add_argument("--no-diloco", action="store_true", help="skip DiLoCo (then losses are compared to the first run)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    hp = load_hparams().override(**{
        "inner.lr": args.inner_lr, "inner.steps": args.steps, "inner.micro_batch": args.micro_batch,
        "inner.warmup_steps": 0, "data.seq_len": args.seq_len,
    })
    store = default_store(args.home, hp.data)
    base = {"miners": args.miners, "windows": args.windows, "eval_rows": args.eval_rows, "threads": args.threads,
            "outer_warmup": args.outer_warmup}
    runs: dict[str, SimResult] = {}
    for beta in args.ef_beta:
        hp_b = hp.override(**{"codec.ef_beta": beta})
        for rule in args.sparse_rule:
            for lr in args.sparse_outer_lr:
                for values in args.step_values:
                    name = (f"sparseloco({rule},lr={lr}" + (f",beta={beta}" if len(args.ef_beta) > 1 else "")
                            + (f",{values}" if len(args.step_values) > 1 else "") + ")")
                    with _step_values(values):
                        runs[name] = _run(hp_b, store, SimConfig(mode="sparseloco", outer_lr=lr, rule=rule,  # type: ignore[arg-type]
                                                                 clip_to_median=args.clip_to_median,
                                                                 normalise=args.normalise, **base))
    if not args.no_diloco:
        for lr in args.diloco_outer_lr:
            runs[f"diloco(lr={lr})"] = _run(hp, store, SimConfig(mode="diloco", outer_lr=lr,
                                                                  outer_momentum=args.diloco_momentum, **base))
    if not args.no_dp:
        runs["dp_adamw"] = _run(hp, store, SimConfig(mode="dp_adamw", **base))

    best_sparse = min((k for k in runs if k.startswith("sparseloco")), key=lambda k: runs[k].heldout[-1], default=None)
    dilocos = [k for k in runs if k.startswith("diloco")]
    ref = min(dilocos, key=lambda k: runs[k].heldout[-1]) if dilocos else next(iter(runs))
    ref_loss, ref_bytes = runs[ref].heldout[-1], runs[ref].bytes_per_miner_window
    width = max(len(k) for k in runs) + 2
    print(f"\n{args.miners} miners, {args.windows} windows, H={args.steps}, micro-batch {args.micro_batch} x "
          f"{args.seq_len} tokens, inner AdamW lr {args.inner_lr}; tiny preset; "
          f"initial held-out loss {runs[ref].heldout[0]:.4f}; reference: {ref}")
    print(f"{'run':<{width}}{'held-out':>10}{'vs ref':>11}{'bytes/miner/window':>20}{'bytes ratio':>13}"
          f"{'compress share':>16}")
    for name, r in runs.items():
        print(f"{name:<{width}}{r.heldout[-1]:>10.4f}{(r.heldout[-1] / ref_loss - 1) * 100:>+10.2f}%"
              f"{r.bytes_per_miner_window:>20,.0f}{ref_bytes / r.bytes_per_miner_window:>12.1f}x"
              f"{r.compress_share * 100:>15.2f}%")
    print(f"best SparseLoCo: {best_sparse}; curves (held-out before window 0, then after each window):")
    for name, r in runs.items():
        print(f"  {name:<{width}} " + " ".join(f"{x:.3f}" for x in r.heldout))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": dt.date.today().isoformat(), "args": vars(args),
            "runs": {k: {"heldout": r.heldout, "bytes_per_miner_window": r.bytes_per_miner_window,
                         "compress_s": r.compress_s, "train_s": r.train_s, "wall_s": r.wall_s}
                     for k, r in runs.items()}}, indent=1))


@contextlib.contextmanager
def _step_values(values: str) -> Iterator[None]:
    """The simulation's outer step (``dense_to_update`` in ``testing.miner_sim``) rounded as ``values`` carries it."""
    def rounded(dense: dict[str, torch.Tensor], lr: float = 1.0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        update = dense_to_update(dense, lr)
        if values == "bf16":
            return {n: (i, v.to(torch.bfloat16).to(torch.float32)) for n, (i, v) in update.items()}
        return round_update(update)

    if values == "fp32":
        yield
        return
    miner_sim.dense_to_update = rounded  # type: ignore[assignment]
    try:
        yield
    finally:
        miner_sim.dense_to_update = dense_to_update


def _run(hp, store, cfg: SimConfig) -> SimResult:
    print(f"running {cfg.mode} (rule {cfg.rule}, outer lr {cfg.outer_lr}, momentum {cfg.outer_momentum}, "
          f"EF beta {hp.codec.ef_beta}, outer warm-up {cfg.outer_warmup}) ...", flush=True)
    return simulate(hp, store, cfg, on_window=lambda w, loss: print(f"  window {w}: held-out {loss:.4f}", flush=True))


if __name__ == "__main__":
    main()
