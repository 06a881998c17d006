"""``kill -9`` of ``gauntlet validator run`` mid-window, then a restart: nothing lost, nothing twice.

The first validator process is killed with SIGKILL right after it published the aggregate
of its first window and before the window's database transaction (fault point
``after_publish``, armed by ``python -m testing.run --crash-at after_publish``), the worst place: miners may already
have the outer step while the database knows nothing of the window. The restarted
process must re-use that aggregate byte for byte, score the window exactly once, carry on
with the next windows, and never set weights twice for a window. The test's miners send
the same delta every window, so the validator (whose replay history is rebuilt after the
restart) must also flag the second window's uploads as replays.

Run: ``pytest tests/integration/test_validator_restart.py -q`` (real clock, ~40 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from chain.local import LocalChain
from chain.wallets import create_wallet
from protocol.global_model import GlobalModel, sync_global_model
from protocol.hparams import HParams
from protocol.pages import assigned_pages, default_store
from protocol.storage import LocalStorage
from protocol.windows import window_of
from testing import validator_sim as simulate
from tests.integration.test_db import pg_schema_url  # noqa: F401  (fixture)
from validator.db.models import Evaluation, Peer, WeightSet, Window

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HP = HParams().override(**{"windows.publish_timeout_s": 5.0,
    "windows.blocks_per_window": 25, "windows.upload_grace_s": 1.0, "data.pages_per_window": 1,
    "data.eval_pages": 1, "outer.checkpoint_every": 2, "weights.set_every_windows": 1,
})
PAGE_CACHE = Path(tempfile.gettempdir()) / "gauntlet-test-pages"


def _env(tmp: Path, db_url: str, hparams: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GAUNTLET_HOME=str(tmp / "home"), GAUNTLET_CHAIN=f"local:{tmp / 'chain.db'}",
               GAUNTLET_DATABASE_URL=db_url, GAUNTLET_STORAGE=f"file://{tmp / 'vstore'}",
               GAUNTLET_HPARAMS=str(hparams), GAUNTLET_WALLET_PATH=str(tmp / "wallets"),
               GAUNTLET_WALLET_NAME="validator", GAUNTLET_WALLET_HOTKEY="default",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("GAUNTLET_REDIS_URL", None)
    return env


def _validator(env: dict[str, str], windows: int, crash_at: str | None = None) -> subprocess.Popen:
    """``gauntlet validator run``; with ``crash_at``, the same command under the fault-injecting runner."""
    launcher = ["-m", "testing.run", "--crash-at", crash_at, "--"] if crash_at else ["-m", "gauntlet"]
    return subprocess.Popen([sys.executable, *launcher, "validator", "run", "--windows", str(windows),
                             "--allow-local-storage", "--poll-s", "0.2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _uploader(chain: LocalChain, miners: list[simulate.Miner], stop: threading.Event) -> None:
    """Each miner uploads a real training delta (on theta_0) for every window as it opens."""
    theta = GlobalModel.initial(HP, window=0)
    pages = default_store(PAGE_CACHE, HP.data)
    encoded = {}
    for m in miners:
        ids = assigned_pages(0, m.hotkey, HP.data.public_seed, pages.num_pages, HP.data.pages_per_window)
        encoded[m.hotkey] = simulate.encode(simulate.training_delta(theta, pages.pages(ids)), HP)
    done: set[int] = set()
    while not stop.is_set():
        w = window_of(chain.block(), HP.windows)
        if w not in done:
            for m in miners:
                simulate.put(m, w, simulate.sign(encoded[m.hotkey], window=w, hotkey=m.hotkey,
                                                 base_hash=theta.hash, kp=m.keypair, hp=HP))
            done.add(w)
        stop.wait(0.1)


def test_kill_9_mid_window_then_restart(tmp_path: Path, pg_schema_url: str) -> None:  # noqa: F811
    # The KJV page store is built once per machine and shared by the validator processes.
    store = default_store(PAGE_CACHE, HP.data)
    (tmp_path / "home" / "data").mkdir(parents=True)
    os.symlink(store.root, tmp_path / "home" / "data" / store.root.name)
    hparams = tmp_path / "hparams.json"
    hparams.write_text(HP.model_dump_json())
    chain = LocalChain.create(tmp_path / "chain.db", block_time_s=0.2, weights_rate_limit=0)
    wallet = create_wallet("validator", "default", tmp_path / "wallets")
    miners = simulate.make_miners(tmp_path / "miners", 3)
    simulate.register_all(chain, 1, wallet.hotkey, miners)
    stop = threading.Event()
    uploader = threading.Thread(target=_uploader, args=(chain, miners, stop), daemon=True)
    uploader.start()
    env = _env(tmp_path, pg_schema_url, hparams)
    try:
        first = _validator(env, 3, crash_at="after_publish")
        out1, _ = first.communicate(timeout=120)
        assert first.returncode == -signal.SIGKILL, out1[-3000:]
        vstore = LocalStorage(tmp_path / "vstore")
        published = {i.key: vstore.get(i.key, max_bytes=1 << 30) for i in vstore.list("proposals/")}
        assert len(published) == 1, out1[-3000:]
        (crashed_key, crashed_bytes), = published.items()

        second = _validator(env, 2)
        out2, _ = second.communicate(timeout=150)
        assert second.returncode == 0, out2[-3000:]
    finally:
        stop.set()
        for p in ("first", "second"):
            proc = locals().get(p)
            if proc is not None and proc.poll() is None:
                proc.kill()

    assert vstore.get(crashed_key, max_bytes=1 << 30) == crashed_bytes  # re-used, not re-published
    engine = sa.create_engine(pg_schema_url)
    with engine.connect() as c:
        scored = [w for (w,) in c.execute(sa.select(Window.window).where(
            Window.status.in_(("scored", "weights_set"))).order_by(Window.window))]
        per_window = dict(c.execute(sa.select(Evaluation.window, sa.func.count()).group_by(Evaluation.window)).all())
        weight_windows = [w for (w,) in c.execute(sa.select(WeightSet.window))]
        peers = {p.hotkey: p.bma for p in c.execute(sa.select(Peer.hotkey, Peer.bma))}
        reasons = c.execute(sa.select(Evaluation.window, Evaluation.hotkey, Evaluation.status,
                                      Evaluation.reject_reason, Evaluation.reject_detail)).all()
        last_bma = dict(c.execute(sa.select(Evaluation.hotkey, Evaluation.bma_after).where(
            Evaluation.window == max(scored))).all())
    engine.dispose()
    first_window = int(crashed_key.split("/")[1].split(".")[0])
    assert scored[0] == first_window and len(scored) >= 2
    assert scored == list(range(scored[0], scored[-1] + 1))  # none lost
    assert all(per_window[w] == 3 for w in scored)  # one receipt per miner per window
    assert len(weight_windows) == len(set(weight_windows))  # never twice for a window
    # The uploader re-sends the same delta every window: from the second window on it is a replay.
    assert {(w, st, r) for w, _hk, st, r, _d in reasons if w == scored[0]} == {(scored[0], "accepted", None)}
    assert {r for w, _hk, _st, r, _d in reasons if w == scored[0] + 1} == {"replay"}
    for m in miners:  # state equals the last receipt: no window applied twice
        assert peers[m.hotkey] == pytest.approx(last_bma[m.hotkey])
    # The published chain of aggregates has no hole: theta of the last scored window is reached
    # through the crashed window's aggregate. (theta_{last + 1} is decided only at window last's
    # publish deadline, which the process, stopping after --windows, may not wait for.)
    synced = sync_global_model(None, scored[-1], hp=HP, storage=vstore, owner=wallet.hotkey.ss58_address)
    assert synced.window == scored[-1] > first_window
    shutil.rmtree(tmp_path / "home", ignore_errors=True)
