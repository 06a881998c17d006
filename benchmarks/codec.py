"""Codec benchmark: wire size against dense bf16, the 20-bit reference and the information bound, and speed.

Run (from the repository root)::

    python -m benchmarks.codec                  # tiny and ~1.1B Llama-like shape sets
    python -m benchmarks.codec --sets tiny      # sizes only, seconds
    python -m benchmarks.codec --thp            # enable PyTorch's transparent huge pages
    python -m benchmarks.codec --passive        # OMP_WAIT_POLICY=PASSIVE (shared machines)

Sizes are exact (computed from real encodings, wire bytes from ``pack_delta``). Timings use a
float32 random-normal delta, tensor by tensor as miners and validators do; the best of
``--repeat`` runs is reported with its process CPU time and the machine's load average,
because the development machine is shared. Results are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable


def llama_shapes(vocab: int, dim: int, layers: int, mlp: int, kv_dim: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a Llama-style decoder (untied embeddings, GQA with ``kv_dim``)."""
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (vocab, dim)}
    for i in range(layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attn_norm.weight": (dim,),
            p + "wq.weight": (dim, dim),
            p + "wk.weight": (kv_dim, dim),
            p + "wv.weight": (kv_dim, dim),
            p + "wo.weight": (dim, dim),
            p + "mlp_norm.weight": (dim,),
            p + "w_gate.weight": (mlp, dim),
            p + "w_up.weight": (mlp, dim),
            p + "w_down.weight": (dim, mlp),
        }
    shapes |= {"norm.weight": (dim,), "lm_head.weight": (vocab, dim)}
    return shapes


SHAPE_SETS = {
    "tiny": lambda: llama_shapes(vocab=4096, dim=256, layers=4, mlp=768, kv_dim=256),
    # TinyLlama-1.1B geometry: 22 layers, dim 2048, MLP 5632, 4 KV heads of 64.
    "llama-1b": lambda: llama_shapes(vocab=32000, dim=2048, layers=22, mlp=5632, kv_dim=256),
}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Best wall-clock seconds of ``repeat`` runs, and the process CPU seconds of that run."""
    best, cpu = math.inf, math.inf
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = time.perf_counter() - start
        if wall < best:
            best, cpu = wall, time.process_time() - start_cpu
    return best, cpu


def timing_line(label: str, params: int, timing: tuple[float, float]) -> str:
    wall, cpu = timing
    return f"{label:22s}{wall:6.2f} s  {params / wall / 1e6:6,.0f} M params/s   (CPU {cpu:.2f} s)"


def size_report(name: str, shapes: dict[str, tuple[int, ...]]) -> None:
    import torch
    from bittensor.sp_core import Keypair

    from protocol.codec import (
        CodecConfig,
        bits_per_kept_value,
        encode_tensor,
        information_bound_bits,
    )
    from protocol.wire import DeltaMeta, pack_delta

    cfg = CodecConfig()
    params = sum(math.prod(s) for s in shapes.values())
    kept = sum(cfg.n_chunks(math.prod(s)) * cfg.topk for s in shapes.values())
    gen = torch.Generator().manual_seed(0)
    encoded = {}
    for pname, shape in shapes.items():
        encoded[pname] = encode_tensor(torch.randn(shape, generator=gen), cfg)
    payload = sum(e.idx.numel() + e.codes.numel() + 4 * e.lut.numel() for e in encoded.values())
    keypair = Keypair.create_from_uri("//Alice")
    meta = DeltaMeta(window=0, hotkey=keypair.ss58_address, base_model_hash="0" * 64, spec_version=1)
    wire = len(pack_delta(encoded, meta, cfg, keypair))
    del encoded
    bf16 = 2 * params
    reference = kept * 20 / 8  # 12-bit index + 8-bit code (one byte per 2-bit code) per kept value
    bound = kept * information_bound_bits(cfg) / 8
    print(f"## shapes: {name}  ({len(shapes)} tensors, {params:,} params, {kept:,} kept values)")
    print(f"codec                 chunk={cfg.chunk} topk={cfg.topk} density={cfg.topk / cfg.chunk:.4%}")
    print(f"bits per kept value   {bits_per_kept_value(cfg):.2f} (+ LUTs: {8 * payload / kept:.3f} overall)")
    print(f"information bound     {information_bound_bits(cfg):.2f} bits per kept value")
    print(f"payload bytes         {payload:,} tensor data, {wire:,} on the wire (header + signature)")
    print(f"bytes per param       {wire / params:.5f}")
    print(f"vs dense bf16         {bf16 / wire:.1f}x fewer bytes ({bf16:,} B)")
    print(f"vs 20-bit reference   {reference / wire:.2f}x fewer bytes ({reference:,.0f} B)")
    print(f"vs information bound  {wire / bound:.3f}x the bound ({bound:,.0f} B)")
    print()


def speed_report(name: str, shapes: dict[str, tuple[int, ...]], repeat: int) -> None:
    import torch
    from bittensor.sp_core import Keypair

    from protocol.codec import CodecConfig, decode_sparse, decode_tensor, encode
    from protocol.wire import DeltaMeta, pack_delta, parse_delta

    cfg = CodecConfig()
    params = sum(math.prod(s) for s in shapes.values())
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    delta = {pname: torch.randn(shape, generator=gen) for pname, shape in shapes.items()}
    print(f"## speed: {name}  ({params:,} fp32 params; delta generated in {time.perf_counter() - t0:.1f} s)")
    print(f"load average before   {load_average()}")
    encoded: dict = {}

    def run_encode() -> None:
        encoded.update(encode(delta, cfg))

    def run_decode_fresh() -> None:
        for enc in encoded.values():
            decode_tensor(enc, cfg)  # a new dense tensor each, dropped at once

    buffers = {pname: torch.empty(shape) for pname, shape in shapes.items()}

    def run_decode_into() -> None:
        for pname, enc in encoded.items():
            decode_tensor(enc, cfg, out=buffers[pname])

    def run_decode_sparse() -> None:
        for enc in encoded.values():
            decode_sparse(enc, cfg)

    print(timing_line("encode", params, best_of(repeat, run_encode)))
    print(timing_line("decode (new tensors)", params, best_of(repeat, run_decode_fresh)))
    print(timing_line("decode (into buffers)", params, best_of(repeat, run_decode_into)))
    print(timing_line("decode_sparse", params, best_of(repeat, run_decode_sparse)))
    buffers.clear()  # free 4 bytes per parameter before packing
    keypair = Keypair.create_from_uri("//Alice")
    meta = DeltaMeta(window=0, hotkey=keypair.ss58_address, base_model_hash="0" * 64, spec_version=1)
    t0 = time.perf_counter()
    blob = pack_delta(encoded, meta, cfg, keypair)
    pack_s = time.perf_counter() - t0
    parse_s, _ = best_of(
        repeat, lambda: parse_delta(blob, expected_shapes=shapes, cfg=cfg, max_bytes=len(blob))
    )
    print(f"pack_delta            {pack_s:6.2f} s  ({len(blob):,} bytes, includes validation)")
    print(f"parse_delta           {parse_s:6.2f} s  (every check, codec validation included)")
    print(f"load average after    {load_average()}")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="tiny,llama-1b", help="comma-separated shape sets: tiny, llama-1b")
    parser.add_argument("--speed", default="llama-1b", help="shape sets to time ('' for none)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per measurement (best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--thp", action="store_true", help="set THP_MEM_ALLOC_ENABLE=1 (before torch loads)")
    parser.add_argument(
        "--passive", action="store_true", help="set OMP_WAIT_POLICY=PASSIVE (before torch loads)"
    )
    args = parser.parse_args(argv)
    if args.thp:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    if args.passive:  # idle OpenMP threads sleep instead of spinning: far better on a shared host
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch  # after the environment switches, which torch and OpenMP read once

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# codec benchmark  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), python {sys.version.split()[0]}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print()
    for name in filter(None, args.sets.split(",")):
        size_report(name, SHAPE_SETS[name]())
    for name in filter(None, args.speed.split(",")):
        speed_report(name, SHAPE_SETS[name](), args.repeat)


if __name__ == "__main__":
    main()
