"""Stage 2 at scale: peers per second, the share of a window N peers take, and memory in N.

Run (from the repository root; ``benchmarks/validator.py`` with ``--device``/``--dtype``/``--preset``
lands here too)::

    python -m benchmarks.stage2_scale --preset small --peers 8,32,128          # this 2-core CPU box
    python -m benchmarks.stage2_scale --device cuda --dtype bf16 --preset 1b --peers 256 --timed 64
    python -m benchmarks.stage2_scale --preset 1b --peers 8,32,128 --rss-only --clone-uploads  # memory at 1B here

Each peer count runs in a fresh process so its peak RSS (``ru_maxrss``) is its own. A child
builds the preset with the seeded init, makes ``N`` peers' uploads with the real codec (a random
normal pseudo-gradient, chunked top-k and 2-bit quantised, ``hparams`` codec: ~1.5 % density),
decodes them exactly as Stage 1 does (``validator.stage1.decode_upload``: that is what a
validator holds per accepted peer), and evaluates them with ``validator.evaluate.WindowEvaluator``
on ``--device`` / ``--dtype`` over random token pages: ``--eval-pages`` assigned and random pages of
``--page-seqs`` sequences of ``--seq-len`` tokens, as Stage 2 does. ``--timed`` peers are
evaluated (all of them by default); peers/s is over those, after one untimed warm-up peer.

Printed per N: peers/s, the seconds all N would take and their share of a ``--window-s`` window
(25 min by default), peak host RSS, its growth per extra peer against the mean compressed upload
(the codec's bytes; RSS measured after ``malloc_trim``, so freed transients do not count), and
peak GPU memory on CUDA. Results are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _current_rss() -> int:
    """Resident bytes now, after returning freed heap to the OS (the peak keeps transients)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: the figure then includes freed but cached heap
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(args: argparse.Namespace, peers: int) -> dict[str, float]:
    sys.path.insert(0, ROOT)
    import torch

    from protocol.codec import CodecConfig, encode
    from protocol.hparams import HParams
    from protocol.model import build_model, model_from_state, param_shapes, preset
    from testing.validator_sim import RandomPages
    from validator.evaluate import Compute, EvalJob, WindowEvaluator
    from validator.stage1 import Decoded, decode_upload

    torch.manual_seed(0)
    cfg = preset(args.preset)
    compute = Compute(args.device, args.dtype)
    hp = HParams()
    codec = CodecConfig.from_params(hp.codec)
    shapes = param_shapes(cfg)
    model = build_model(cfg, seed=0)
    module = model_from_state(cfg, model.state_dict(), compute.torch_device)
    del model
    pages = RandomPages(num_pages=4 * args.eval_pages + 8, page_seqs=args.page_seqs, seq_len=args.seq_len,
                        vocab=cfg.vocab_size)
    rss0 = _current_rss()
    held, compressed, first = [], 0, None
    for i in range(peers):
        if args.clone_uploads and first is not None:
            enc = _cloned(first, torch.Generator().manual_seed(i))
        else:
            g = torch.Generator().manual_seed(i)
            delta = {n: torch.randn(s, generator=g) * 1e-3 for n, s in shapes.items()}
            enc = encode(delta, codec)
            del delta
            first = first if first is not None else enc
        compressed += sum(e.idx.numel() + e.codes.numel() + 4 * e.lut.numel() for e in enc.values())
        d = decode_upload(enc, shapes, codec)
        if args.hold == "decoded":  # what a validator held per peer before uploads were kept compressed
            idx, val = d.rows()
            d = Decoded(d.load_update(), idx, val, d.norm)
        held.append(d)
        del enc
    first = None
    rss_held = _current_rss()
    if args.rss_only:
        return {"peers": peers, "timed": 0, "peers_per_s": float("nan"), "rss_base": rss0, "rss_held": rss_held,
                "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "compressed_per_peer": compressed / peers, "gpu_peak": 0,
                "params": sum(int(torch.Size(s).numel()) for s in shapes.values())}
    random_ids = list(range(args.eval_pages))
    assigned = tuple(range(args.eval_pages, 2 * args.eval_pages))
    control_ids = list(range(2 * args.eval_pages, 3 * args.eval_pages))  # the validator's forward holds all three
    ev = WindowEvaluator(module, pages, random_ids, compute, control_ids)
    timed = min(peers, args.timed or peers)
    ev.evaluate(EvalJob("warmup", held[0].load_update, 1e-3, assigned))
    if compute.torch_device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(timed):
        ev.evaluate(EvalJob(f"peer-{i}", held[i].load_update, 1e-3, assigned))
    if compute.torch_device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() if compute.torch_device.type == "cuda" else 0
    return {"peers": peers, "timed": timed, "peers_per_s": timed / seconds,
            "rss_base": rss0, "rss_held": rss_held, "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "compressed_per_peer": compressed / peers, "gpu_peak": gpu,
            "params": sum(int(torch.Size(s).numel()) for s in shapes.values())}


def _cloned(enc: dict, g: object) -> dict:
    """Another peer's upload at the cost of a copy: the first's positions, fresh random 2-bit codes.

    The same sizes in distinct memory, so what a validator holds per peer is measured as with real
    uploads; making 128 real 1B uploads with the codec takes ~20 min on two cores.
    """
    import torch

    from protocol.codec import EncodedTensor

    return {n: EncodedTensor(e.shape, e.idx.clone(), torch.randint(0, 256, e.codes.shape, dtype=torch.uint8,
                                                                    generator=g), e.lut.clone())
            for n, e in enc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--peers", default="8,32,128", help="comma-separated peer counts, one process each")
    ap.add_argument("--timed", type=int, default=0, help="peers evaluated and timed per run (0: all)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--page-seqs", type=int, default=8)
    ap.add_argument("--eval-pages", type=int, default=2)
    ap.add_argument("--window-s", type=float, default=1500.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    ap.add_argument("--compare-decoded", action="store_true",
                    help="also measure RSS holding every peer decoded (the old representation), no timing")
    ap.add_argument("--clone-uploads", action="store_true",
                    help="make the first upload with the codec, the others as copies with random codes (fast at 1b)")
    ap.add_argument("--rss-only", action="store_true", help="measure memory only: no evaluation, no timing")
    ap.add_argument("--hold", default="compressed", help=argparse.SUPPRESS)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(_child(args, args.child)))
        return

    print(f"$ python -m benchmarks.stage2_scale {' '.join(sys.argv[1:])}")
    print(f"preset {args.preset}, {args.device}/{args.dtype}, batch per peer: {args.eval_pages} assigned + "
          f"{args.eval_pages} control + {args.eval_pages} random pages x {args.page_seqs} x {args.seq_len} tokens")
    rows = []
    for n in (int(x) for x in args.peers.split(",")):
        r = _run(args, n)
        rows.append(r)
        total = r["peers"] / r["peers_per_s"]
        timing = ("not timed (--rss-only)" if args.rss_only else
                  f"{r['peers_per_s']:8.2f} peers/s (over {r['timed']}), all {n}: {total:8.1f} s = "
                  f"{100 * total / args.window_s:6.1f} % of a {args.window_s / 60:.0f}-min window")
        print(f"  {n:>4} peers: {timing}; RSS holding them "
              f"{r['rss_held'] / 2**20:6.0f} MiB (model alone {r['rss_base'] / 2**20:.0f}, peak "
              f"{r['rss_peak'] / 2**20:.0f}), compressed upload "
              f"{r['compressed_per_peer'] / 2**20:.2f} MiB" + (f", GPU peak {r['gpu_peak'] / 2**30:.1f} GiB"
                                                                 if r["gpu_peak"] else ""))
    if len(rows) >= 2:
        print(f"RSS growth per extra peer, held compressed: {_growth(rows)}")
    if args.compare_decoded and len(rows) >= 2:
        old = [_run(args, n, "--hold", "decoded", "--timed", "1") for n in (r["peers"] for r in rows)]
        print(f"RSS growth per extra peer, held decoded:    {_growth(old)}  (RSS "
              + ", ".join(f"{r['rss_held'] / 2**20:.0f}" for r in old) + " MiB)")


def _run(args: argparse.Namespace, n: int, *extra: str) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.stage2_scale", *sys.argv[1:], *extra, "--child", str(n)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{n} peers failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _growth(rows: list[dict[str, float]]) -> str:
    a, b = rows[0], rows[-1]
    per_peer = (b["rss_held"] - a["rss_held"]) / (b["peers"] - a["peers"])
    return (f"{per_peer / 2**20:.2f} MiB = {per_peer / b['compressed_per_peer']:.1f}x its compressed upload "
            "(target <= 2x)")


if __name__ == "__main__":
    main()
