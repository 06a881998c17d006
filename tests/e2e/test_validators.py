"""End-to-end: several validators share one model on the local chain (``gauntlet localnet --validators 3``).

Run A: three validators (stakes 1000/700/500), the third started two windows late, three honest
miners and a few adversaries, 8 windows. Every validator computes the same model hash in every
window, no honest miner is ever out of sync after its first synced window, weights agree
(Spearman >= 0.9 and shared weight >= 0.8 between every pair in every epoch)
and the Yuma trust of the validators there from genesis ends >= 0.95 (the late one's >= 0.9).

Run B: the publishing validator is killed with SIGKILL mid-run and restarted only 45 s later
(``--restart-delay``, like systemd's RestartSec): the next validator by stake takes over within
one window, there is one hash chain and no fork, and the returning validator follows.
Each run takes about 5-6 minutes on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chain.agreement import pairwise_agreement
from protocol.global_model import GlobalModel
from protocol.hparams import load_hparams
from protocol.storage import LocalStorage
from protocol.sync import parse_aggregate
from tests.e2e.test_localnet import _finish, _free_port, _no_strays, _start
from validator.db.models import Evaluation, FollowState, WeightSet, Window

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Agreement between two validators' weights in one epoch: the issue's bar, Spearman's rho >= 0.9
# in every epoch and every validator's Yuma trust >= 0.95, plus the share of weight both give to
# the same miners (what Yuma's clipping looks at). Each validator still ranks peers on its own
# random pages, but the proof of work, and with it the gate on pay, is measured on the window's
# public control pages, so all of them gate alike (scoring.work). Before that, a miner near the
# pay threshold could get 1-2 % from one validator and nothing from another: rho 0.898 in a CI
# run, and the genesis validators' trust 0.955-0.957 (benchmarks/RESULTS.md, "Validators").
# The late validator's trust is the exception: its ratings rest on 6 windows where the others' rest
# on 8, so its uncertainty (sigma) is larger, every ordinal mu - 3 sigma is lower by the same amount,
# and its linear weights are more concentrated on the leader (0.776 against 0.728 for honest-8 in a
# run where it had trust 0.952). That gap closes as both histories grow; the bar for it is 0.9.
MIN_OVERLAP = 0.8
MIN_RHO = 0.9
MIN_TRUST = 0.95
MIN_TRUST_LATE = 0.9


def _db(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    with engine.connect() as c:
        out = {
            "hashes": dict(c.execute(sa.select(Window.window, Window.base_model_hash)
                                     .where(Window.status.in_(("scored", "weights_set")))).all()),
            "publishers": dict(c.execute(sa.select(Window.window, Window.publisher)).all()),
            "evals": c.execute(sa.select(Evaluation.window, Evaluation.hotkey, Evaluation.status,
                                         Evaluation.reject_reason)).all(),
            "weights": {w: dict(zip(u, x, strict=True)) for w, u, x in
                        c.execute(sa.select(WeightSet.window, WeightSet.uids, WeightSet.weights))},
            "follow": c.execute(sa.select(FollowState.state, FollowState.publisher)).first(),
        }
    engine.dispose()
    return out


def _load(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    peers = json.loads((run_dir / "peers.json").read_text())
    validators = json.loads((run_dir / "validators.json").read_text())
    dbs = {name: _db(v["db_url"]) for name, v in validators.items()}
    return summary, peers, validators, dbs


def _check_one_model(dbs: dict[str, Any]) -> None:
    """Every window that several validators scored has one model hash at all of them."""
    windows = sorted({w for d in dbs.values() for w in d["hashes"]})
    for w in windows:
        hashes = {name: d["hashes"][w] for name, d in dbs.items() if w in d["hashes"]}
        assert len(set(hashes.values())) == 1, (w, hashes)


def _check_validators_not_scored(dbs: dict[str, Any], validators: dict[str, Any]) -> None:
    hotkeys = {v["hotkey"] for v in validators.values()}
    for name, d in dbs.items():
        assert not [e for e in d["evals"] if e[1] in hotkeys], f"{name} scored a validator as a miner"


@pytest.mark.timeout(900)
def test_three_validators_one_model_and_agreeing_weights(tmp_path: Path) -> None:
    run_dir, port = tmp_path / "run", _free_port()
    # 40 s windows: three validators share two cores; with a Stage-2 budget of half a 30 s
    # window one of them could leave an honest miner unevaluated in the first window, and its weights
    # then differ from the others' in that epoch.
    proc = _start(run_dir, port, "--windows", "8", "--validators", "3", "--late-validator", "2",
                  "--blocks-per-window", "80", "--adversaries", "copycat,free-rider-zero,stale", "--keep")
    out = _finish(proc, timeout=720)
    assert proc.returncode == 0, out[-4000:]
    _no_strays(run_dir)
    check_agreement_run(run_dir)


def check_agreement_run(run_dir: Path) -> None:
    summary, peers, validators, dbs = _load(run_dir)
    _check_one_model(dbs)
    _check_validators_not_scored(dbs, validators)
    first = min(dbs["validator"]["hashes"])
    late = dbs["validator-3"]
    assert min(late["hashes"]) <= first + 3, sorted(late["hashes"])  # joined late, scored the next window
    common = set.intersection(*(set(d["hashes"]) for d in dbs.values()))
    assert len(common) >= 4, common  # all three computed the same hash in each of these windows

    # No honest miner is ever out of sync at any validator after its first synced window.
    honest = {p["hotkey"]: n for n, p in peers.items() if p["kind"] == "honest"}
    for name, d in dbs.items():
        for hk in honest:
            rows = sorted((w, st, r) for w, h, st, r in d["evals"] if h == hk)
            synced = [w for w, st, _r in rows if st == "accepted"]
            assert synced, (name, honest[hk], rows)
            bad = [(w, r) for w, _st, r in rows if w > synced[0] and r == "out_of_sync"]
            assert not bad, (name, honest[hk], bad)
        # The stale miner trains on the initial weights: in sync at genesis only.
        stale = peers["stale"]["hotkey"]
        late_windows = sorted(d["hashes"])[-4:]
        assert {r for w, h, _st, r in d["evals"] if h == stale and w in late_windows} <= {"out_of_sync", "missing"}

    # Weights agree in every epoch (the local chain's tempo is one window) both set weights for.
    miner_uids = sorted(p["uid"] for p in peers.values())
    pairs = pairwise_agreement({name: d["weights"] for name, d in dbs.items()}, miner_uids)
    assert len(pairs) >= 8, pairs
    low = [p for p in pairs if p.overlap < MIN_OVERLAP or p.rho < MIN_RHO]
    assert not low, (low, {name: d["weights"] for name, d in dbs.items()})
    for name, v in summary["validators"].items():
        bar = MIN_TRUST_LATE if name == "validator-3" else MIN_TRUST
        assert v["validator_trust"] is not None and v["validator_trust"] >= bar, (name, v["validator_trust"])
        assert v["follow"]["state"] in ("following", "waiting"), (name, v["follow"])
    # The honest miners are paid, the cheats are not.
    for n, p in peers.items():
        if p["kind"] == "adversary":
            assert summary["incentive"][n] <= 0.01, (n, summary["incentive"][n])
    assert max(summary["incentive"][n] for n in peers if peers[n]["kind"] == "honest") > 0.3


@pytest.mark.timeout(900)
def test_publisher_killed_the_next_validator_takes_over(tmp_path: Path) -> None:
    run_dir, port = tmp_path / "run", _free_port()
    proc = _start(run_dir, port, "--windows", "8", "--validators", "3", "--restart-delay", "45",
                  "--adversaries", "copycat,free-rider-zero", "--keep")
    killed_at = None
    try:
        deadline = time.monotonic() + 400
        db = run_dir / "validator.db"
        engine = sa.create_engine(f"sqlite:///{db}")
        while killed_at is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            if not db.exists():
                continue
            try:
                with engine.connect() as c:
                    scored = c.execute(sa.select(Window.window).where(
                        Window.status.in_(("scored", "weights_set")), Window.num_evaluated > 0)).all()
            except sa.exc.OperationalError:
                continue
            if len(scored) >= 2:
                time.sleep(8)  # into the next window: miners train, validators wait for it to close
                with engine.connect() as c:
                    killed_at = c.scalar(sa.select(sa.func.max(Window.window)).where(
                        Window.status.in_(("scored", "weights_set"))))
                os.kill(json.loads((run_dir / "pids.json").read_text())["validator"], signal.SIGKILL)
        engine.dispose()
        assert killed_at is not None, "no window was scored before the deadline"
        out = _finish(proc, timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]
    assert "validator exited (-9); restarting in 45s" in out
    _no_strays(run_dir)
    summary, peers, validators, dbs = _load(run_dir)
    assert summary["validator_restarts"] == 1
    _check_one_model(dbs)
    _check_validators_not_scored(dbs, validators)

    # One history: every validator's copy of every applied aggregate is the same bytes; at most one
    # window after the kill went without an aggregate, and from then on validator-2 publishes.
    copies = {name: LocalStorage(Path(v["store"].removeprefix("file://"))) for name, v in validators.items()}
    history: dict[int, set[bytes]] = {}
    nulls, publishers = [], {}
    for store in copies.values():
        for info in store.list("aggregates/"):
            w = int(info.key.split("/")[1].split(".")[0])
            history.setdefault(w, set()).add(store.get(info.key, max_bytes=1 << 30))
    shapes = GlobalModel.initial(load_hparams(run_dir / "hparams.json")).shapes
    for w, datas in sorted(history.items()):
        metas = [parse_aggregate(d, shapes=shapes, max_bytes=1 << 30)[0] for d in datas]
        assert len({(m.base_model_hash, m.result_model_hash) for m in metas}) == 1, (w, metas)  # no fork
        if any(m.null for m in metas):
            nulls.append(w)
        else:
            assert len(datas) == 1, w  # the very bytes their publisher signed
            publishers[w] = metas[0].validator
    names = {v["hotkey"]: n for n, v in validators.items()}
    after = sorted(w for w in publishers if w > killed_at)
    assert len([w for w in nulls if w > killed_at]) <= 1, nulls
    assert after and all(names[publishers[w]] == "validator-2" for w in after[1:]), \
        {w: names[publishers[w]] for w in after}
    assert all(names[publishers[w]] == "validator" for w in publishers if w < killed_at)

    # Miners carried on: honest uploads accepted by validator-2 in all but at most one window after the kill.
    honest = {p["hotkey"] for p in peers.values() if p["kind"] == "honest"}
    windows_after = sorted(w for w in dbs["validator-2"]["hashes"] if w > killed_at)
    empty = [w for w in windows_after
             if not any(h in honest and st == "accepted" for ww, h, st, _r in dbs["validator-2"]["evals"] if ww == w)]
    assert len(windows_after) >= 4 and len(empty) <= 1, (windows_after, empty)
    # The killed validator came back as a follower of validator-2 and scored again.
    state, publisher = dbs["validator"]["follow"]
    assert state in ("following", "waiting") and names.get(publisher) == "validator-2", (state, publisher)
    assert max(dbs["validator"]["hashes"]) > killed_at + 1
