"""kill -9 and restart: the miner resumes with its EF buffer intact and never uploads twice.

A real ``gauntlet miner run`` subprocess against a local SQLite chain (0.5 s blocks) and a
shared local store, with a fake validator publishing (empty) signed aggregates so the global
model advances. Run 1 dies between the upload and the progress commit (fault point
``after_upload`` armed by ``python -m testing.run --crash-at``, the worst moment); run 2 is SIGKILLed while training; run 3 finishes a window. Afterwards every
delta was put exactly once (object mtimes never change), ``progress.json`` and the tensor
file it names are valid, and the EF buffer is non-zero and finite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("protocol.wire")

from chain.local import LocalChain
from chain.wallets import create_wallet
from miner.state import MinerState
from protocol.follow import validator_commitment
from protocol.global_model import GlobalModel, checkpoint_bytes
from protocol.hparams import load_hparams
from protocol.storage import aggregate_key, checkpoint_key
from protocol.storage_open import open_storage
from protocol.sync import AggregateMeta, pack_aggregate

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]


def _hparams(path: Path) -> None:
    hp = load_hparams().override(**{
        "windows.blocks_per_window": 40, "windows.upload_grace_s": 10.0, "inner.steps": 6, "inner.lr": 3e-3,
        "inner.micro_batch": 4, "data.seq_len": 64,
    })
    path.write_text(hp.model_dump_json())


def _miner(tmp: Path, env: dict[str, str], windows: int, crash: str | None = None) -> subprocess.Popen:
    """``gauntlet miner run``; with ``crash``, the same command under the fault-injecting runner."""
    launcher = ["-m", "testing.run", "--crash-at", crash, "--"] if crash else ["-m", "gauntlet"]
    cmd = [sys.executable, *launcher, "miner", "run", "--hparams", str(tmp / "hp.json"),
           "--wallet-path", str(tmp / "wallets"), "--wallet-name", "m", "--hotkey", "h",
           "--chain", f"local:{tmp / 'chain.db'}", "--storage", f"file://{tmp / 'store'}",
           "--register", "--windows", str(windows), "--state-dir", str(tmp / "state")]
    log = open(tmp / "miner.log", "a")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _deltas(store: Path) -> dict[int, int]:
    """Window -> mtime of this test's (single) miner's uploads."""
    root = store / "deltas"
    return {int(p.parent.name): p.stat().st_mtime_ns for p in root.rglob("*.gdlt")} if root.exists() else {}


def _wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_kill_9_and_restart(tmp_path: Path) -> None:
    _hparams(tmp_path / "hp.json")
    hp = load_hparams(tmp_path / "hp.json")
    chain = LocalChain.create(tmp_path / "chain.db", block_time_s=0.5)
    create_wallet("m", "h", tmp_path / "wallets")
    vkey = create_wallet("v", "h", tmp_path / "wallets").hotkey
    chain.register(vkey, 1)
    chain.stake(vkey, 1000.0)
    chain.commit(vkey, 1, validator_commitment(f"file://{tmp_path / 'store'}"))
    # The fake validator: genesis at window 0, then an empty outer step for every window.
    store = open_storage(f"file://{tmp_path / 'store'}")
    gm = GlobalModel.initial(hp)
    gm.publisher, gm.genesis_window = vkey.ss58_address, 0
    store.put(checkpoint_key(0), checkpoint_bytes(gm, validator_hotkey=vkey.ss58_address,
                                                  spec_version=hp.spec_version, keypair=vkey))
    for w in range(200):
        meta = AggregateMeta(window=w, base_model_hash=gm.hash, result_model_hash=gm.hash,
                             validator=vkey.ss58_address, spec_version=hp.spec_version)
        store.put(aggregate_key(w), pack_aggregate({}, meta, vkey))
    env = {**os.environ, "GAUNTLET_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    state_dir = tmp_path / "state"

    # Run 1: dies right after its first upload, before recording it.
    p = _miner(tmp_path, env, windows=5, crash="after_upload")
    assert p.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "miner.log").read_text()[-3000:]
    first = _deltas(tmp_path / "store")
    assert len(first) == 1
    progress = json.loads((state_dir / "progress.json").read_text())
    assert progress["pending_window"] is not None and progress["last_uploaded_window"] is None

    # Run 2: recovers the pending window from the store's word, trains on, and is SIGKILLed mid-training.
    p = _miner(tmp_path, env, windows=5)
    _wait(lambda: len(_deltas(tmp_path / "store")) >= 2, 240, "a second upload")
    log_size = (tmp_path / "miner.log").stat().st_size
    _wait(lambda: "step" in (tmp_path / "miner.log").read_text()[log_size:], 120, "training of the next window")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    second = _deltas(tmp_path / "store")

    # Run 3: finishes one more window cleanly.
    p = _miner(tmp_path, env, windows=1)
    assert p.wait(timeout=300) == 0, (tmp_path / "miner.log").read_text()[-3000:]
    final = _deltas(tmp_path / "store")
    log = (tmp_path / "miner.log").read_text()

    for name, mtime in {**first, **second}.items():
        assert final[name] == mtime, f"{name} was uploaded twice"
    assert "recovered window" in log
    progress, ef, opt = MinerState(state_dir, progress["hotkey"]).load()  # checksums verified here
    assert progress.pending_window is None
    assert progress.last_uploaded_window == max(final)
    assert ef and all(torch.isfinite(t).all() for t in ef.values())
    assert sum(float(t.abs().sum()) for t in ef.values()) > 0, "EF buffer lost"
    assert opt is not None
