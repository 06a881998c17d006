"""End-to-end: ``gauntlet audit`` recomputes a local network's receipts from a process that shares nothing
with the validator but the score API, the chain and the stores.

``gauntlet localnet --keep`` runs three windows (two honest miners and a free rider); a fresh
``gauntlet api`` then serves the validator's database, and the auditor runs with its own home
(its own page store, built from the public corpus), the run's chain file and the subnet's
hyper-parameter file. Every receipt of a scored window must match; a tampered receipt (a changed
loss, a changed page id, served from an edited copy of the database) and a swapped upload must
be reported as mismatches. About 3-4 minutes on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol.storage import delta_key
from tests.e2e.test_localnet import CACHE, REPO, _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]



def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without any GAUNTLET_* setting: nothing of the validator's leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAUNTLET_")}
    env.update(PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(CACHE), **extra)
    return env


def _serve_api(db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "gauntlet", "api", "--port", str(port), "--database-url",
                             f"sqlite:///{db}"], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/windows", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    _stop(proc)
    pytest.fail("the score API did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _audit(run: Path, home: Path, port: int, window: int, *target: str) -> tuple[int, dict[str, Any], str]:
    report = home / f"report-{time.monotonic_ns()}.json"
    done = subprocess.run(
        [sys.executable, "-m", "gauntlet", "audit", "--api", f"http://127.0.0.1:{port}", "--window", str(window),
         *(target or ("--all",)), "--chain", f"local:{run / 'chain.db'}", "--hparams", str(run / "hparams.json"),
         "--home", str(home), "--allow-local-storage", "--json", str(report)],
        cwd=REPO, env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    body = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, body, done.stdout + done.stderr


def _mismatches(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["hotkey"], c["field"]) for c in report["checks"] if c["status"] == "mismatch"}


def test_audit_recomputes_every_receipt_and_catches_tampering(tmp_path: Path) -> None:
    run, port = tmp_path / "run", _free_port()
    env = _env()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gauntlet", "localnet", "--dir", str(run), "--api-port",
                           str(_free_port()), "--seed", "0", "--windows", "3", "--honest", "2", "--adversaries",
                           "free-rider-zero", "--keep"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=480, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    peers = json.loads((run / "peers.json").read_text())
    db = run / "validator.db"
    with sqlite3.connect(db) as c:  # the last window in which both honest miners were evaluated
        window = c.execute("SELECT window FROM evaluations WHERE status = 'accepted' GROUP BY window "
                           "HAVING count(*) >= 2 ORDER BY window DESC LIMIT 1").fetchone()[0]
    home = tmp_path / "auditor"  # its own state: nothing of the validator's home, database or keys
    api = _serve_api(db, port)
    try:
        rc, report, out = _audit(run, home, port, window)
        assert rc == 0 and report["ok"], out[-6000:]
        assert set(report["hotkeys"]) == {p["hotkey"] for p in peers.values()}
        honest = [peers[n]["hotkey"] for n in ("honest-2", "honest-4")]
        matched = {(c["hotkey"], c["field"]) for c in report["checks"] if c["status"] == "match"}
        for hk in honest:  # Stage 1, Stage 2 and the scores were recomputed, not skipped
            for field in ("payload_hash", "details.norm", "random_page_ids", "assigned_page_ids",
                          "loss_after_random", "details.assigned_pages[0].after", "contribution", "indicator",
                          "rating_mu_after", "final_score"):
                assert (hk, field) in matched, (hk, field)
        rider = peers["free-rider-zero"]["hotkey"]
        assert (rider, "reject_reason") in matched
    finally:
        _stop(api)

    # A tampered receipt: the same database with one loss and one page id changed, served by a fresh API.
    tampered = tmp_path / "tampered.db"
    with sqlite3.connect(db) as src, sqlite3.connect(tampered) as dst:
        src.backup(dst)
    with sqlite3.connect(tampered) as c:
        c.execute("UPDATE evaluations SET loss_after_random = loss_after_random - 0.01 WHERE window = ? AND hotkey = ?",
                  (window, honest[0]))
        pages = json.loads(c.execute("SELECT assigned_page_ids FROM evaluations WHERE window = ? AND hotkey = ?",
                                     (window, honest[1])).fetchone()[0])
        c.execute("UPDATE evaluations SET assigned_page_ids = ? WHERE window = ? AND hotkey = ?",
                  (json.dumps([pages[0] + 1, *pages[1:]]), window, honest[1]))
    api = _serve_api(tampered, port)
    try:
        rc, report, out = _audit(run, home, port, window)
    finally:
        _stop(api)
    assert rc == 1, out[-4000:]
    assert _mismatches(report) == {(honest[0], "loss_after_random"), (honest[1], "assigned_page_ids")}, out[-4000:]

    # A swapped upload: honest-2's object replaced by honest-4's signed one, the store's timestamp kept.
    mine = run / "store" / "honest-2" / delta_key(window, honest[0])
    theirs = run / "store" / "honest-4" / delta_key(window, honest[1])
    stamp = mine.stat().st_mtime
    shutil.copyfile(theirs, mine)
    os.utime(mine, (stamp, stamp))
    api = _serve_api(db, port)
    try:
        rc, report, out = _audit(run, home, port, window, "--hotkey", honest[0])
    finally:
        _stop(api)
    assert rc == 1, out[-4000:]
    assert {(honest[0], f) for f in ("payload_hash", "status", "reject_reason")} <= _mismatches(report), out[-4000:]
    print(f"audit e2e: window {window}, {time.monotonic() - started:.0f}s in all")
