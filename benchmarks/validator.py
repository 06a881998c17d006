"""Validator throughput: peers fully evaluated per window, seconds per peer, 1 vs 2 workers.

    python benchmarks/validator.py                 # 8, 32, 128 peers + worker comparison
    python benchmarks/validator.py --peers 8 --no-workers
    python benchmarks/validator.py --device cuda --dtype bf16 --preset 1b --peers 256   # Stage 2 at scale

With ``--device``, ``--dtype`` or ``--preset`` it runs ``benchmarks/stage2_scale.py`` instead
(Stage 2 alone on any preset and device: peers/s, share of a window, RSS in N, GPU memory).

Setup (not timed): a local chain with N registered miners, each with its own local store,
the real KJV page store and the default hyper-parameters (tiny preset, seq_len 128,
eval_pages 2 assigned + 2 random pages = 32 sequences per peer). Uploads are signed,
compressed deltas: 8 distinct real training steps (one SGD step on a miner's assigned
pages), and for N > 8 each miner sends one of them plus its own Gaussian noise of the same
norm (so top-k index sets differ and copy detection does not fire). Timed: one full
``run_pass`` of the validator (collect, Stage 1 with parse/signature/decode/norms/copy
detection, Stage 2 with exact before/after losses on assigned and random pages plus the
first-order estimate, scoring, aggregate + publish, one DB transaction, weights) on SQLite.

Workers: the Stage-2 jobs of one 32-peer window are put on a Redis stream; 1 then 2
``validator worker`` processes (torch threads = 1 each, since the box has 2 cores) drain
it; the timing starts when the workers are warm (imported, theta_W synced) and ends when
every result is in.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from protocol.global_model import GlobalModel
from protocol.hparams import HParams
from protocol.pages import assigned_pages, default_store
from protocol.settings import load_settings

HP = HParams().override(**{"windows.blocks_per_window": 100, "windows.upload_grace_s": 5.0})
CACHE_HOME = Path(os.environ.get("GAUNTLET_BENCH_HOME", Path(tempfile.gettempdir()) / "gauntlet-bench-home"))
REDIS_URL = os.environ.get("GAUNTLET_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _deltas(net, theta: GlobalModel, n: int) -> list[bytes]:
    from testing import validator_sim as simulate

    base = []
    for m in net.miners[: min(8, n)]:
        ids = assigned_pages(0, m.hotkey, HP.data.public_seed, net.pages.num_pages, HP.data.pages_per_window)
        base.append(simulate.training_delta(theta, net.pages.pages(ids)))
    out = []
    for i, m in enumerate(net.miners):
        d = base[i % len(base)]
        if i >= len(base):
            g = torch.Generator().manual_seed(i)
            d = {k: v + torch.randn(v.shape, generator=g) * v.norm() / max(1, v.numel()) ** 0.5 for k, v in d.items()}
        out.append(simulate.sign(simulate.encode(d, HP), window=0, hotkey=m.hotkey, base_hash=theta.hash,
                                 kp=m.keypair, hp=HP))
    return out


def setup(root: Path, n: int, pages, redis_url: str | None = None):
    from testing import validator_sim as simulate
    from validator import service
    from validator.app import RunOptions, build_context

    net = simulate.local_net(root, HP, n, pages=pages)
    settings = load_settings(None, home=CACHE_HOME, database_url=f"sqlite:///{root / 'v.db'}",
                             storage=f"file://{root / 'vstore'}", redis_url=redis_url)
    ctx = build_context(settings, HP, options=RunOptions(allow_local_storage=True), chain=net.chain,
                        keypair=net.validator, pages=pages)
    service.bootstrap(ctx, 0)
    theta = GlobalModel.initial(HP, window=0)
    for m, data in zip(net.miners, _deltas(net, theta, n), strict=True):
        simulate.put(m, 0, data, uploaded_at=net.window_time(0))
    net.close_window(0)
    return net, ctx, settings


def bench_window(n: int, pages) -> dict[str, float]:
    from validator import service

    with tempfile.TemporaryDirectory() as tmp:
        _net, ctx, _ = setup(Path(tmp), n, pages)
        t0 = time.perf_counter()
        reports = service.run_pass(ctx, service.LoopConfig())
        wall = time.perf_counter() - t0
    r = reports[0]
    return {"peers": n, "evaluated": r.num_evaluated, "wall_s": wall, "s_per_peer": wall / n,
            **{f"t_{k}": v for k, v in r.timings.items()}}


def _worker_proc(settings_kw: dict, hotkey: str, name: str, ready, stream: str) -> None:
    torch.set_num_threads(1)
    from validator.app import build_worker
    from validator.queue import WorkQueue, connect

    settings = load_settings(None, **settings_kw)
    pages = default_store(CACHE_HOME, HP.data)
    w = build_worker(settings, validator_hotkey=hotkey, allow_local_storage=True, consumer=name, hp=HP, pages=pages)
    w.queue = WorkQueue(connect(settings.redis_url), stream)
    w.evaluator(0, tuple(ready["random"]))  # warm: theta_W synced, "before" losses and gradient ready
    ready[name] = True
    w.run(idle_exit_s=3.0)


def bench_workers(n: int, pages, workers: int) -> float:
    """Seconds for ``workers`` processes to drain the Stage-2 jobs of an ``n``-peer window."""
    from validator.collect import collect_window
    from validator.queue import WorkQueue, connect
    from validator.stage1 import run_stage1
    from validator.stage2 import Beacon, plan_stage2
    from validator.window import ensure_model, window_times

    with tempfile.TemporaryDirectory() as tmp:
        net, ctx, settings = setup(Path(tmp), n, pages, redis_url=REDIS_URL)
        model = ensure_model(ctx, 0)
        meta = net.chain.metagraph(1)
        hotkeys = {hk: u for u, hk in zip(meta.uids, meta.hotkeys, strict=True) if hk != ctx.hotkey}
        collected = collect_window(0, hotkeys=hotkeys, commitments=net.chain.commitments(1),
                                   times=window_times(net.chain, 0, HP), hp=HP, allow_local_storage=True)
        s1 = run_stage1(collected, window=0, hp=HP, shapes=model.shapes, cfg=ctx.codec_cfg,
                        recent_hashes={model.hash: 0})
        plan = plan_stage2(0, s1, hp=HP, seed=os.urandom(32), beacon=Beacon(0, os.urandom(32)),
                           num_pages=pages.num_pages, collected=collected)
        stream = f"gauntlet-bench-{os.getpid()}-{workers}"
        queue = WorkQueue(connect(REDIS_URL), stream)
        mgr = mp.Manager()
        ready = mgr.dict(random=list(plan.random_page_ids))
        kw = {"home": str(CACHE_HOME), "storage": settings.storage, "redis_url": REDIS_URL,
              "database_url": settings.database_url}
        procs = [mp.Process(target=_worker_proc, args=(kw, ctx.hotkey, f"w{i}", ready, stream)) for i in range(workers)]
        for p in procs:
            p.start()
        while sum(1 for k in ready.keys() if k.startswith("w")) < workers:  # noqa: SIM118 (a Manager proxy)
            time.sleep(0.05)
        t0 = time.perf_counter()
        for job in plan.jobs:
            queue.submit(0, job.hotkey, plan.remote[job.hotkey].to_json())
        while len(queue.results(0)) < len(plan.jobs):
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(30)
        queue.client.delete(stream, f"{stream}:results:0", f"{stream}:submitted:0")
    return wall


def main() -> None:
    if any(a.split("=")[0] in ("--device", "--dtype", "--preset") for a in sys.argv[1:]):
        os.execv(sys.executable, [sys.executable, str(Path(__file__).with_name("stage2_scale.py")), *_scale_args(sys.argv[1:])])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, nargs="*", default=[8, 32, 128])
    ap.add_argument("--worker-peers", type=int, default=32)
    ap.add_argument("--no-workers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    pages = default_store(CACHE_HOME, HP.data)
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| submitted | evaluated | wall s | s/peer | collect | stage1 | stage2 | score | aggregate | persist |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.peers:
        r = bench_window(n, pages)
        print(f"| {n} | {r['evaluated']} | {r['wall_s']:.1f} | {r['s_per_peer']:.3f} | "
              + " | ".join(f"{r.get('t_' + k, 0.0):.2f}" for k in ("collect", "stage1", "stage2", "score",
                                                                   "aggregate", "persist")) + " |", flush=True)
    if args.no_workers or (shutil.which("redis-server") is None and "127.0.0.1" not in REDIS_URL):
        return
    one = bench_workers(args.worker_peers, pages, 1)
    two = bench_workers(args.worker_peers, pages, 2)
    print(f"\nStage-2 workers ({args.worker_peers} peers, torch threads = 1 per worker): "
          f"1 worker {one:.1f} s ({args.worker_peers / one:.2f} peers/s) | 2 workers {two:.1f} s "
          f"({args.worker_peers / two:.2f} peers/s) | speed-up x{one / two:.2f}")


def _scale_args(argv: list[str]) -> list[str]:
    """``--peers 8 32`` (this script's form) as ``--peers 8,32`` (stage2_scale's)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--peers":
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            out += ["--peers", ",".join(argv[i + 1 : j])]
            i = j
        else:
            out.append(argv[i])
            i += 1
    return out


if __name__ == "__main__":
    main()
