"""Score API load benchmark: requests/s and p50/p99 latency with 256 peers x 1,000 windows.

Run: ``python benchmarks/api.py`` (SQLite; add ``--pg URL`` for PostgreSQL too, and
``--redis URL`` for the cached runs; ``--quick`` for a smoke run). Steps: bulk-insert a
database (peers, windows, weight sets and one score receipt per peer and window), start
``python -m validator.api api`` under uvicorn in a subprocess, then load it from a
*separate* load process on loopback: ``--concurrency`` keep-alive connections, each
sending its next request as soon as the last one is answered (closed loop) for
``--seconds``, after a warm-up. The load process speaks HTTP/1.1 over raw asyncio streams,
so on a 2-core machine the client costs far less CPU than the server it measures.

Endpoints: the leaderboard (top 50), one window's receipt for one peer, and a peer's
history (last 50 windows); the chart series (the global model's loss over the last 200 and
1,000 windows, receipts per window by status, a peer's score and weight over 200 windows);
and the dashboard pages that draw them (front page, a peer's page, the windows page, each
over the last 200 windows). Window and peer are drawn at random per request. Each is run
uncached (no Redis) and, with ``--redis``, through the Redis response cache; ``--only`` picks
workloads by name. Rows also give the mean response size (a page must stay small to stay usable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
PUBLISHER = "5" + "V" * 47  # the validator whose aggregates every window applied


def hotkeys(n: int) -> list[str]:
    rng = random.Random(7)
    return ["5" + "".join(rng.choice(BASE58) for _ in range(47)) for _ in range(n)]


# --------------------------------------------------------------------------- fill


def fill(url: str, num_peers: int, num_windows: int) -> float:
    """Migrate and bulk-insert the benchmark database; returns seconds taken."""
    import sqlalchemy as sa

    from validator.db.models import Evaluation, FollowState, Peer, WeightSet, Window
    from validator.db.session import make_engine, migrate

    t0 = time.perf_counter()
    migrate(url)
    engine = make_engine(url)
    rng = random.Random(0)
    hks = hotkeys(num_peers)
    with engine.begin() as conn:
        conn.execute(sa.insert(Window), [
            {"window": w, "status": "weights_set" if w < num_windows - 1 else "scored",
             "base_model_hash": f"{w:064x}", "random_seed_hex": f"{rng.getrandbits(256):064x}",
             "started_at": T0 + timedelta(minutes=w), "scored_at": T0 + timedelta(minutes=w, seconds=50),
             "stage_timings": {"stage1": 1.0, "stage2": 20.0}, "aggregate_hash": f"{w:064x}",
             "publisher": PUBLISHER, "next_model_hash": f"{w + 1:064x}",
             "num_submitted": num_peers, "num_evaluated": num_peers - 20}
            for w in range(num_windows)
        ])
        conn.execute(sa.insert(FollowState), [
            {"id": 1, "state": "following", "window": num_windows, "model_hash": f"{num_windows:064x}",
             "publisher": PUBLISHER, "failovers": 0, "null_windows": 0, "updated_at": T0}
        ])
        conn.execute(sa.insert(WeightSet), [
            {"window": w, "block": 1000 + w, "version_key": 1, "uids": list(range(num_peers)),
             "weights": [1.0 / num_peers] * num_peers, "set_at": T0 + timedelta(minutes=w), "tx_status": "success"}
            for w in range(num_windows)
        ])
        conn.execute(sa.insert(Peer), [
            {"hotkey": hk, "uid": uid, "first_seen_window": 0, "last_seen_window": num_windows - 1,
             "rating_mu": 25 + rng.gauss(0, 3), "rating_sigma": rng.uniform(1, 3), "bma": rng.random(),
             "score": rng.random(), "weight": 1.0 / num_peers, "updated_at": T0}
            for uid, hk in enumerate(hks)
        ])
        batch: list[dict[str, object]] = []
        for w in range(num_windows):
            for uid, hk in enumerate(hks):
                status = "accepted" if uid % 16 else ("rejected" if w % 2 else "missing")
                before = 4.0 - w * 1e-3
                batch.append({
                    "window": w, "hotkey": hk, "uid": uid, "status": status,
                    "reject_reason": "norm" if status == "rejected" else None,
                    "filters_passed": ["registered", "on_time", "norm", "copy"] if status == "accepted" else [],
                    "assigned_page_ids": [uid, uid + 1], "random_page_ids": [w, w + 1],
                    "random_seed_hex": "ab" * 32, "base_model_hash": f"{w:064x}",
                    "loss_before_assigned": before, "loss_after_assigned": before - 0.02,
                    "loss_before_random": before, "loss_after_random": before - 0.01,
                    "contribution": 0.01, "indicator": 1.0, "rating_mu_before": 25.0, "rating_sigma_before": 2.0,
                    "rating_mu_after": 25.1, "rating_sigma_after": 1.99, "final_score": rng.random(),
                    "weight": 1.0 / num_peers, "details": {}, "created_at": T0, "updated_at": T0,
                })
            if len(batch) >= 20_000:
                conn.execute(sa.insert(Evaluation), batch)
                batch.clear()
        if batch:
            conn.execute(sa.insert(Evaluation), batch)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.perf_counter() - t0


def query_plans(url: str, hotkey: str) -> dict[str, str]:
    """The database's plan for the leaderboard and history queries (are the indexes used?)."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from validator.api import queries
    from validator.db.models import Evaluation, Peer
    from validator.db.session import make_engine

    engine = make_engine(url)
    stmts = {
        "leaderboard": sa.select(Peer).where(Peer.uid.is_not(None)).order_by(Peer.score.desc(), Peer.hotkey).limit(50),
        "history": sa.select(Evaluation).where(Evaluation.hotkey == hotkey).order_by(Evaluation.window.desc()).limit(50),
        "model loss": queries.model_loss_stmt(last=200),
        "peer scores": queries.peer_scores_stmt(hotkey=hotkey, last=200),
    }
    plans = {}
    with Session(engine) as s:
        for name, stmt in stmts.items():
            sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
            prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
            rows = s.execute(sa.text(prefix + sql)).all()
            plans[name] = " | ".join(str(r[-1]) for r in rows)
    engine.dispose()
    return plans


# --------------------------------------------------------------------------- load process


async def _load(port: int, paths: list[str], concurrency: int, seconds: float, warmup: float) -> dict[str, object]:
    latencies: list[float] = []
    sizes: list[int] = []
    errors = 0
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    t_measure, t_end = start + warmup, start + warmup + seconds

    async def worker(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            path = rng.choice(paths)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            t0 = time.perf_counter()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= t_measure:
                latencies.append(t1 - t0)
                sizes.append(length)
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200:
                    errors += 1
        writer.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t_measure
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"), "errors": errors,
            "kib": statistics.fmean(sizes) / 1024 if sizes else float("nan"),
            "statuses": statuses}


def load_main(args: argparse.Namespace) -> None:
    paths = json.loads(Path(args.paths_file).read_text())
    result = asyncio.run(_load(args.port, paths, args.concurrency, args.seconds, args.warmup))
    print(json.dumps(result))


# --------------------------------------------------------------------------- driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the API process exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the API did not come up")


def run_case(url: str, redis_url: str | None, workloads: dict[str, list[str]], args: argparse.Namespace,
             tmp: Path) -> dict[str, dict[str, object]]:
    port = _free_port()
    cmd = [sys.executable, "-m", "validator.api", "api", "--host", "127.0.0.1", "--port", str(port),
           "--database-url", url]
    if redis_url:
        import redis

        from validator.api import invalidate

        invalidate(redis.Redis.from_url(redis_url))  # start from a cold cache
        cmd += ["--redis-url", redis_url]
    env = {**os.environ, "GAUNTLET_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        _wait_up(port, proc)
        for i, (name, paths) in enumerate(workloads.items()):
            paths_file = tmp / f"workload-{i}.json"  # names have slashes
            paths_file.write_text(json.dumps(paths))
            out = subprocess.run(
                [sys.executable, __file__, "load", "--port", str(port), "--paths-file", str(paths_file),
                 "--concurrency", str(args.concurrency), "--seconds", str(args.seconds), "--warmup", str(args.warmup)],
                check=True, capture_output=True, text=True,
            )
            results[name] = json.loads(out.stdout)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    load = sub.add_parser("load", help="(internal) the load process")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--paths-file", required=True)
    for p in (parser, load):
        p.add_argument("--concurrency", type=int, default=4)
        p.add_argument("--seconds", type=float, default=5.0)
        p.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--peers", type=int, default=256)
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--pg", help="PostgreSQL URL (a fresh schema is created and dropped)")
    parser.add_argument("--redis", help="Redis URL for the cached runs, e.g. redis://127.0.0.1:6379/15")
    parser.add_argument("--quick", action="store_true", help="small database, short runs")
    parser.add_argument("--only", help="comma-separated substrings: run only the workloads whose name has one")
    args = parser.parse_args()
    if args.cmd == "load":
        load_main(args)
        return
    if args.quick:
        args.peers, args.windows, args.seconds, args.warmup = 32, 50, 1.0, 0.3

    hks = hotkeys(args.peers)
    rng = random.Random(1)
    workloads = {
        "leaderboard": ["/api/v1/leaderboard?limit=50"],
        "receipt (window x peer)": [
            f"/api/v1/windows/{rng.randrange(args.windows)}/evaluations?hotkey={rng.choice(hks)}" for _ in range(2000)
        ],
        "peer history (50)": [f"/api/v1/peers/{hk}/history?limit=50" for hk in hks],
        "model loss (200)": ["/api/v1/model/loss?last=200"],
        "model loss (1000)": ["/api/v1/model/loss?last=1000"],
        "window outcomes (200)": ["/api/v1/windows/outcomes?last=200"],
        "peer scores (200)": [f"/api/v1/peers/{hk}/scores?last=200" for hk in hks],
        "validators": ["/api/v1/validators"],
        "page / (200)": ["/?last=200"],
        "page /peer (200)": [f"/peer/{hk}?last=200" for hk in hks],
        "page /windows (200)": ["/windows?last=200"],
    }
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        workloads = {k: v for k, v in workloads.items() if any(w in k for w in wanted)}
    tmp = Path(tempfile.mkdtemp(prefix="gauntlet-bench-"))
    databases: list[tuple[str, str]] = [("SQLite", f"sqlite:///{tmp / 'validator.db'}")]
    schema = None
    if args.pg:
        import sqlalchemy as sa

        schema = f"gauntlet_bench_{os.getpid()}"
        admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        pg = sa.make_url(args.pg).update_query_dict({"options": f"-csearch_path={schema}"})
        databases.append(("PostgreSQL", pg.render_as_string(hide_password=False)))
    rows = []
    try:
        for db_name, url in databases:
            seconds = fill(url, args.peers, args.windows)
            print(f"# {db_name}: filled {args.peers} peers x {args.windows} windows in {seconds:.1f} s", flush=True)
            for name, plan in query_plans(url, hks[0]).items():
                print(f"#   plan {name}: {plan}", flush=True)
            for cache_name, redis_url in (("no cache", None), ("Redis cache", args.redis)):
                if cache_name == "Redis cache" and not redis_url:
                    continue
                for name, r in run_case(url, redis_url, workloads, args, tmp).items():
                    rows.append((db_name, cache_name, name, r))
                    print(f"{db_name:<10} {cache_name:<11} {name:<24} {r['rps']:>8.0f} req/s  "
                          f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  {r['kib']:7.1f} KiB  "
                          f"errors {r['errors']}", flush=True)
    finally:
        if schema:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.dispose()
    print()
    print(f"| Database | Cache | Query | req/s | p50 ms | p99 ms | KiB | errors |  ({platform.node()}, "
          f"{os.cpu_count()} cores, concurrency {args.concurrency}, {args.seconds:g} s per row)")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for db_name, cache_name, name, r in rows:
        print(f"| {db_name} | {cache_name} | {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {r['kib']:.1f} | {r['errors']} |")


if __name__ == "__main__":
    main()
