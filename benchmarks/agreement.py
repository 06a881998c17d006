"""How well several validators agree, and what a publisher failure costs, on the local chain.

Runs ``gauntlet localnet`` twice with three validators (stakes 1000/700/500):

* **agreement**: the third validator starts two windows late; prints, per epoch, the lowest
  Spearman rank correlation between two validators' weight vectors, each validator's final Yuma
  validator trust, and in how many windows all validators held the same model hash;
* **failover**: the publishing validator is killed with SIGKILL mid-run and kept down for 45 s;
  prints the window it died in, whose aggregates every node applied before and after, windows
  with no aggregate (null), windows after the kill in which no honest miner was accepted (lost
  for training), and whether the model history forked.

    python benchmarks/agreement.py [--windows 8] [--dir DIR]

About 12 minutes on a 2-core machine. Results: benchmarks/RESULTS.md ("Validators").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chain.agreement import pairwise_agreement  # noqa: E402
from protocol.global_model import GlobalModel  # noqa: E402
from protocol.hparams import load_hparams  # noqa: E402
from protocol.storage import LocalStorage  # noqa: E402
from protocol.sync import parse_aggregate  # noqa: E402
from validator.db.models import Evaluation, WeightSet, Window  # noqa: E402


def run_localnet(run_dir: Path, windows: int, *extra: str, kill_after_scored: int | None = None) -> int | None:
    """Run the localnet to the end; optionally SIGKILL ``validator`` after that many scored windows."""
    env = dict(os.environ)
    env.pop("GAUNTLET_DATABASE_URL", None)
    env.pop("GAUNTLET_REDIS_URL", None)
    argv = [sys.executable, "-m", "gauntlet", "localnet", "--dir", str(run_dir), "--windows", str(windows),
            "--validators", "3", "--keep", "--api-port", "8093", *extra]
    print("$", " ".join(argv[1:]), flush=True)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    killed_at = None
    try:
        if kill_after_scored is not None:
            killed_at = _kill_publisher(run_dir, proc, kill_after_scored)
        if proc.wait(timeout=1200) != 0:
            raise SystemExit(f"localnet failed; logs in {run_dir / 'logs'}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return killed_at


def _kill_publisher(run_dir: Path, proc: subprocess.Popen, after: int) -> int:
    db = run_dir / "validator.db"
    while proc.poll() is None:
        time.sleep(1)
        if not db.exists():
            continue
        engine = sa.create_engine(f"sqlite:///{db}")
        try:
            with engine.connect() as c:
                scored = c.scalars(sa.select(Window.window).where(
                    Window.status.in_(("scored", "weights_set")), Window.num_evaluated > 0)).all()
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
        if len(scored) >= after:
            time.sleep(8)  # into the next window
            os.kill(json.loads((run_dir / "pids.json").read_text())["validator"], signal.SIGKILL)
            print(f"  killed the publisher after window {max(scored)}", flush=True)
            return max(scored)
    raise SystemExit("localnet ended before the kill")


def read(run_dir: Path) -> tuple[dict, dict, dict]:
    validators = json.loads((run_dir / "validators.json").read_text())
    peers = json.loads((run_dir / "peers.json").read_text())
    dbs = {}
    for name, v in validators.items():
        engine = sa.create_engine(v["db_url"])
        with engine.connect() as c:
            dbs[name] = {
                "hashes": dict(c.execute(sa.select(Window.window, Window.base_model_hash).where(
                    Window.status.in_(("scored", "weights_set")))).all()),
                "weights": {w: dict(zip(u, x, strict=True)) for w, u, x in
                            c.execute(sa.select(WeightSet.window, WeightSet.uids, WeightSet.weights))},
                "evals": c.execute(sa.select(Evaluation.window, Evaluation.hotkey, Evaluation.status)).all(),
            }
        engine.dispose()
    return validators, peers, dbs


def agreement(run_dir: Path, windows: int) -> None:
    run_localnet(run_dir, windows, "--late-validator", "2", "--adversaries", "copycat,free-rider-zero,stale")
    _validators, peers, dbs = read(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    pairs = pairwise_agreement({n: d["weights"] for n, d in dbs.items()}, sorted(p["uid"] for p in peers.values()))
    print("\nagreement per epoch: lowest Spearman rho and lowest weight overlap between two validators")
    for epoch in sorted({p.epoch for p in pairs}):
        now = [p for p in pairs if p.epoch == epoch]
        low = min(now, key=lambda p: p.rho)
        print(f"  epoch {epoch:>3}: min rho {low.rho:.3f} ({low.a} vs {low.b}), "
              f"min overlap {min(p.overlap for p in now):.3f}, {len(now)} pair(s)")
    print("final Yuma validator trust: " + ", ".join(
        f"{n} {v['validator_trust']:.3f}" for n, v in summary["validators"].items()))
    common = set.intersection(*(set(d["hashes"]) for d in dbs.values()))
    same = [w for w in common if len({d["hashes"][w] for d in dbs.values()}) == 1]
    print(f"windows scored by all {len(dbs)} validators: {len(common)}, with one model hash: {len(same)}")
    print(f"late validator's first scored window: {min(dbs['validator-3']['hashes'])} "
          f"(first window of the run: {min(dbs['validator']['hashes'])})")


def failover(run_dir: Path, windows: int) -> None:
    killed = run_localnet(run_dir, windows, "--restart-delay", "45", "--adversaries", "copycat,free-rider-zero",
                          kill_after_scored=2)
    assert killed is not None
    validators, peers, dbs = read(run_dir)
    names = {v["hotkey"]: n for n, v in validators.items()}
    shapes = GlobalModel.initial(load_hparams(run_dir / "hparams.json")).shapes
    applied: dict[int, set[tuple[str, str, str, bool]]] = {}
    for v in validators.values():
        store = LocalStorage(Path(v["store"].removeprefix("file://")))
        for info in store.list("aggregates/"):
            meta, _ = parse_aggregate(store.get(info.key, max_bytes=1 << 30), shapes=shapes, max_bytes=1 << 30)
            applied.setdefault(meta.window, set()).add(
                (meta.base_model_hash, meta.result_model_hash, "null" if meta.null else names[meta.validator],
                 meta.null))
    print(f"\nfailover: publisher killed after window {killed}, restarted 45 s later")
    forks = [w for w, a in applied.items() if len({(b, r) for b, r, _n, _x in a}) > 1]
    for w in sorted(applied):
        who = sorted({n for _b, _r, n, _x in applied[w]})
        print(f"  window {w:>3}: applied {'/'.join(who)}" + ("  <- killed here" if w == killed + 1 else ""))
    honest = {p["hotkey"] for p in peers.values() if p["kind"] == "honest"}
    after = sorted(w for w in dbs["validator-2"]["hashes"] if w > killed)
    lost = [w for w in after if not any(h in honest and st == "accepted"
                                        for ww, h, st in dbs["validator-2"]["evals"] if ww == w)]
    nulls = sorted(w for w, a in applied.items() if any(x for *_r, x in a))
    print(f"null windows: {nulls or 'none'}; windows after the kill with no honest upload accepted: "
          f"{lost or 'none'} of {len(after)}; forks: {forks or 'none'}")
    same = all(len({d["hashes"][w] for d in dbs.values() if w in d["hashes"]}) == 1
               for w in {w for d in dbs.values() for w in d["hashes"]})
    print(f"every validator held the same model hash in every window it scored: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--dir", type=Path, default=None, help="where to keep the two runs (default: a temp dir)")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="gauntlet-agreement-"))
    agreement(root / "agreement", args.windows)
    failover(root / "failover", args.windows)
    print(f"\nruns kept in {root}")


if __name__ == "__main__":
    main()
