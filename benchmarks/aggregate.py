"""Aggregate benchmark: bytes per window, a miner's apply time and the step's rounding error, by format.

Run (from the repository root)::

    python -m benchmarks.aggregate --passive           # TinyLlama-1.1B shapes, 20 peers (about 3 minutes)
    python -m benchmarks.aggregate --passive --small   # tiny shapes, seconds; also runs the old dense aggregation

Side by side in one run, on the same synthetic window: ``--peers`` sparse deltas at the codec's
density (64 of every 4096 positions, one per 64-element stratum, drawn independently per peer, so
little overlap; values from a per-tensor 4-level table as the codec's 2-bit codes, peers of varied
size), aggregated by the validator's default rule (``selected_mean`` with per-tensor median
clipping, ``validator.publish.outer_step``) and published as

* *v1*: int64 index + fp32 value per touched coordinate (packed here with its old code);
* *v2*: bitmap or Elias-Fano positions + one bf16 per value (its size from its layout: the same
  positions, 2 bytes per value, v3's container);
* *v3*: today's code (``protocol.compact``: the same positions, 7-bit values with one bf16 scale
  per 64 touched values);
* *uploads*: the sum of the peers' compressed uploads, measured by packing one real codec
  encoding at these shapes (the codec's size depends only on the shapes, so every peer's is the same);
* *reference gather*: what the reference downloads instead, 20 bits per kept value (12-bit index +
  one byte per 2-bit code, GAUNTLET-NOTES.md) per peer.

A miner's apply is timed as ``GlobalModel.step`` does it: verify and parse, apply with undo,
then (separately, the same for every format) the model hash. The validator's aggregation is timed
and its peak memory measured (VmHWM reset through /proc/self/clear_refs); the old dense path
(a dense fp32 copy of every peer's delta) runs only with ``--small``: at 1B it needs N x 4.4 GB.
The step's rounding error ``||q(step) - step|| / ||step||`` is measured in a second aggregation
pass, for v3's code and for bf16 (v2), against the unrounded fp32 step.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time


def peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set, to the current RSS
        return True
    except OSError:
        return False


def rss_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / (1 << 20)
    return float("nan")


def synthetic_peers(shapes: dict[str, tuple[int, ...]], peers: int, seed: int) -> list[dict]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in range(peers):
        scale = 1e-3 * (0.5 + p % 5 / 2)
        update = {}
        for name, shape in shapes.items():
            numel = math.prod(shape)
            strata = -(-numel // 64)
            idx = torch.arange(strata, dtype=torch.int64) * 64 + torch.randint(0, 64, (strata,), generator=gen)
            idx = idx[idx < numel]
            lut = torch.tensor([0.5, 1.5, -0.5, -1.5]) * scale * float(torch.empty(1).uniform_(0.7, 1.3, generator=gen))
            update[name] = (idx, lut[torch.randint(0, 4, (idx.numel(),), generator=gen)])
        out.append(update)
    return out


def pack_v1(update: dict, keypair) -> bytes:
    """The previous aggregate format (int64 + fp32 in safetensors, domain v1), as sync.py wrote it."""
    import torch
    from safetensors.torch import save as st_save

    from protocol import sync

    tensors = {}
    for name, (idx, values) in update.items():
        tensors[f"{name}.idx"] = idx.to(torch.int64).contiguous()
        tensors[f"{name}.val"] = values.to(torch.float32).contiguous()
    payload = st_save(tensors, metadata={"window": "0"})
    return sync.AGGREGATE_MAGIC + b"\x01" + bytes(keypair.sign(sync._digest(b"gauntlet-aggregate-v1", payload))) + payload


def parse_apply_v1(data: bytes, state: dict, shapes: dict, hotkey: str) -> dict:
    """The previous parse (signature, dtype, range and finiteness checks) and apply-with-undo."""
    import torch
    from bittensor.sp_core import Keypair
    from safetensors.torch import load as st_load

    from protocol import sync

    payload = data[69:]
    assert Keypair(ss58_address=hotkey).verify(sync._digest(b"gauntlet-aggregate-v1", payload), data[5:69])
    tensors = st_load(payload)
    saved = {}
    for name, shape in shapes.items():
        idx, val = tensors.get(f"{name}.idx"), tensors.get(f"{name}.val")
        if idx is None:
            continue
        assert idx.dtype == torch.int64 and val.dtype == torch.float32 and idx.shape == val.shape
        assert int(idx.min()) >= 0 and int(idx.max()) < math.prod(shape) and bool(torch.isfinite(val).all())
        flat = state[name].view(-1)
        saved[name] = flat[idx].clone()
        flat.index_put_((idx,), flat[idx] - val)
    return saved


def old_dense_aggregate(updates: list, norms: list, shapes: dict, hp) -> dict:
    """The validator's aggregation before this change: a dense fp32 copy of every peer's whole delta."""
    import torch

    from scoring.aggregate import aggregate

    dense = []
    for update in updates:
        d = {}
        for name, shape in shapes.items():
            t = torch.zeros(math.prod(shape), dtype=torch.float32)
            if name in update:
                t.index_copy_(0, update[name][0], update[name][1])
            d[name] = t.view(shape)
        dense.append(d)
    return aggregate(dense, rule=hp.outer.rule, trim_fraction=hp.outer.trim_fraction,
                     clip_to_median=hp.scoring.eval_norm == "cap")


def step_errors(updates: list, norms: list, shapes: dict, hp) -> dict[str, float]:
    """Relative norms of the rounding error of v3's code and of bf16, against the fp32 step, one tensor at a time."""
    import torch

    from protocol.compact import CompactTensor
    from validator.publish import robust_aggregate

    sq = {"step": 0.0, "v3": 0.0, "bf16": 0.0}
    dropped = 0
    for _name, combined in robust_aggregate(updates, norms, shapes, hp, statistics.median(norms), reuse_buffer=True):
        exact = combined.mul_(hp.outer.lr).reshape(-1)
        enc = CompactTensor.quantise_dense(exact)
        x = exact[exact != 0].double()
        sq["step"] += float((x**2).sum())
        sq["bf16"] += float(((x.to(torch.bfloat16).double() - x) ** 2).sum())
        if enc is not None:  # error at the coordinates v3 keeps, plus the whole of those it drops
            kept = exact[enc.indices()].double()
            sq["v3"] += float(((enc.values().double() - kept) ** 2).sum()) + float((x**2).sum() - (kept**2).sum())
        else:
            sq["v3"] += float((x**2).sum())
        dropped += x.numel() - (enc.n if enc is not None else 0)
        del combined, exact, enc, x
    return {"v3": math.sqrt(sq["v3"] / sq["step"]), "bf16": math.sqrt(sq["bf16"] / sq["step"]), "dropped": dropped}


def layout_bytes(n: int, numel: int, values: str) -> int:
    """Tensor bytes of ``n`` touched positions of ``numel`` with v2's (bf16) or v3's values."""
    from protocol.compact import position_code, value_code_size

    scales, codes = value_code_size(n)
    return position_code(n, numel)[1] + (2 * n if values == "v2" else 8 + 2 * scales + codes)


def timed(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its wall seconds and its process CPU seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start, time.process_time() - cpu


def run(shape_set: str, peers: int, run_old: bool, repeat: int) -> None:
    import torch
    from bittensor.sp_core import Keypair

    from benchmarks.codec import SHAPE_SETS
    from protocol.codec import CodecConfig, encode
    from protocol.compact import BLOCK
    from protocol.hparams import HParams
    from protocol.model import model_hash
    from protocol.sync import (
        AggregateMeta,
        apply_update,
        pack_aggregate,
        parse_aggregate,
        revert_update,
        undo_arena,
    )
    from protocol.wire import DeltaMeta, pack_delta
    from validator.publish import outer_step

    hp, cfg = HParams(), CodecConfig()
    shapes = SHAPE_SETS[shape_set]()
    params = sum(math.prod(s) for s in shapes.values())
    kept = sum(cfg.n_chunks(math.prod(s)) * cfg.topk for s in shapes.values())
    key = Keypair.create_from_uri("//Validator")
    print(f"## {shape_set}: {len(shapes)} tensors, {params:,} params, {peers} peers, rule {hp.outer.rule}, "
          f"eval_norm {hp.scoring.eval_norm}, outer lr {hp.outer.lr}")

    gen = torch.Generator().manual_seed(7)
    one = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    upload = len(pack_delta(encode(one, cfg), DeltaMeta(window=0, hotkey=key.ss58_address, base_model_hash="0" * 64,
                                                        spec_version=1), cfg, key))
    del one

    updates = synthetic_peers(shapes, peers, seed=1)
    norms = [math.sqrt(sum(float((v.double() ** 2).sum()) for _i, v in u.values())) for u in updates]
    sent = sum(v.numel() for u in updates for _i, v in u.values())
    can_peak = peak_reset()
    base_rss = rss_gib("VmRSS")
    step, wall, cpu = timed(outer_step, updates, norms, shapes, hp, statistics.median(norms))
    new_peak = rss_gib("VmHWM") - base_rss
    touched = step.touched
    print(f"validator aggregation (sparse, tensor by tensor)  {wall:6.2f} s (CPU {cpu:.2f} s), "
          f"peak +{new_peak:.2f} GiB over the peers' deltas" + ("" if can_peak else " (peak n/a)"))
    if run_old:
        del step
        peak_reset()
        base_rss = rss_gib("VmRSS")
        _, wall, cpu = timed(old_dense_aggregate, updates, norms, shapes, hp)
        print(f"validator aggregation (old, dense per peer)       {wall:6.2f} s (CPU {cpu:.2f} s), "
              f"peak +{rss_gib('VmHWM') - base_rss:.2f} GiB")
        step = outer_step(updates, norms, shapes, hp, statistics.median(norms))
    else:
        print(f"validator aggregation (old, dense per peer)       not run: {peers} dense copies = "
              f"{peers * params * 4 / 2**30:.1f} GiB")
    print(f"coordinates  sent by the peers {sent:,} ({kept:,} kept per peer by the codec), touched by the step "
          f"{touched:,} ({touched / params:.2%} of the model)")
    err, err_s, _ = timed(step_errors, updates, norms, shapes, hp)
    print(f"step rounding error ||q(step) - step|| / ||step||: v3 (7-bit, scale per {BLOCK}) {err['v3']:.4%}, "
          f"bf16 (v2) {err['bf16']:.4%}; {err['dropped']} coordinates rounded to zero by v3 ({err_s:.1f} s)")
    del updates

    meta = AggregateMeta(window=0, base_model_hash="0" * 64, result_model_hash="0" * 64, validator=key.ss58_address,
                         spec_version=1, peers=[f"p{i}" for i in range(peers)])
    v3, pack_s, _ = timed(pack_aggregate, step, meta, key, shapes=shapes)
    v1 = pack_v1(step, key)
    container = len(v3) - step.nbytes
    v2 = container + sum(layout_bytes(t.n, t.numel, "v2") for t in step.tensors.values())  # v3's header: 35 KB more at 1B
    del step
    gather, uploads = peers * kept * 20 / 8, peers * upload
    print("bytes per window                                                     vs v1  vs uploads")
    for label, size in (("v1 int64 + fp32", len(v1)), ("v2 bitmap|EF + bf16 (layout)", v2),
                        (f"v3 bitmap|EF + 7-bit (packed {pack_s:.1f} s)", len(v3)),
                        (f"sum of the uploads ({upload:,} each)", uploads), ("reference gather (20 bit/kept)", gather)):
        print(f"  {label:<38} {size:>15,.0f}  {size / touched:5.2f} B/coordinate  {size / len(v1):.3f}  "
              f"{size / uploads:.3f}")
    print("v3 and the uploads at other peer counts (expected distinct positions per 64-stratum, from the layout):")
    for p in (1, 2, 5, 10, 20, 40):
        frac = 1 - (1 - 1 / 64) ** p
        size = sum(layout_bytes(max(1, round(math.prod(s) * frac)), math.prod(s), "v3") for s in shapes.values())
        print(f"  {p:>3} peers: v3 {size:>15,} bytes = {size / (p * upload):.3f} x the uploads")

    state = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    print(f"miner apply (load average {' '.join(f'{v:.2f}' for v in os.getloadavg())})")
    # As GlobalModel.step: the undo arena is kept between windows; the first run includes making it.
    arena = None
    runs = []
    for _ in range(repeat):
        (_, update), parse_s, parse_cpu = timed(parse_aggregate, v3, shapes=shapes, max_bytes=1 << 34)
        undo: dict = {}
        start, start_cpu = time.perf_counter(), time.process_time()
        if arena is None:
            arena = undo_arena(touched)
            print(f"  (undo arena of {touched * 4 / 2**30:.2f} GiB made in {time.perf_counter() - start:.2f} s)")
        apply_update(state, update, undo=undo, arena=arena)
        apply_s, apply_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        runs.append((parse_s + apply_s, parse_s, parse_cpu, apply_s, apply_cpu))
        after_v3 = model_hash(state)
        revert_update(state, update, undo)
        del update, undo
    for label, (total, parse_s, parse_cpu, apply_s, apply_cpu) in (("first", runs[0]), ("best ", min(runs))):
        print(f"  v3 {label}: parse + verify {parse_s:5.2f} s (CPU {parse_cpu:.2f}), apply with undo {apply_s:5.2f} s "
              f"(CPU {apply_cpu:.2f}); total {total:5.2f} s")
    del v3, arena
    _, v1_s, v1_cpu = timed(parse_apply_v1, v1, state, shapes, key.ss58_address)
    print(f"  v1: parse + verify + apply with undo {v1_s:5.2f} s (CPU {v1_cpu:.2f})")
    del v1
    after_v1, hash_s, _ = timed(model_hash, state)
    print(f"  model hash (either format, not included above) {hash_s:5.2f} s; v1 and v3 results "
          f"{'equal (the same step)' if after_v1 == after_v3 else 'DIFFER'}")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (seconds); also runs the old dense path")
    parser.add_argument("--peers", type=int, default=20, help="peers aggregated (default: outer.max_peers, 20)")
    parser.add_argument("--repeat", type=int, default=3, help="timed v3 parse + apply runs (first and best shown)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--passive", action="store_true", help="set OMP_WAIT_POLICY=PASSIVE (before torch loads)")
    args = parser.parse_args(argv)
    if args.passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# aggregate benchmark  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"command: python -m benchmarks.aggregate {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), python {sys.version.split()[0]}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print()
    start = time.perf_counter()
    run("tiny" if args.small else "llama-1b", args.peers, run_old=args.small, repeat=args.repeat)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
