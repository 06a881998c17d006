"""The window loop on SQLite: readiness after the grace, catch-up in order, restart, metrics.

Run: ``pytest tests/unit/test_validator_service.py -q``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protocol.global_model import GlobalModel, sync_global_model
from protocol.hparams import HParams
from protocol.settings import load_settings
from testing import validator_sim as simulate
from validator import metrics, service
from validator.app import RunOptions, build_context
from validator.db import repo, weight_repo

HP = HParams().override(**{"windows.publish_timeout_s": 5.0,
    "windows.blocks_per_window": 10, "windows.upload_grace_s": 3.0, "data.seq_len": 16, "data.page_seqs": 2,
    "data.pages_per_window": 1, "data.eval_pages": 1, "outer.checkpoint_every": 2, "weights.set_every_windows": 2,
})


def _ctx(tmp: Path, net: simulate.LocalNet):
    settings = load_settings(None, home=tmp / "home", database_url=f"sqlite:///{tmp / 'v.db'}",
                             storage=f"file://{tmp / 'vstore'}")
    return build_context(settings, HP, options=RunOptions(allow_local_storage=True), chain=net.chain,
                         keypair=net.validator, pages=net.pages)


def test_loop_waits_for_grace_catches_up_and_survives_restart(tmp_path: Path) -> None:
    net = simulate.local_net(tmp_path, HP, 2, pages=simulate.RandomPages(num_pages=64, page_seqs=2, seq_len=16),
                             block_time_s=1.0)
    ctx = _ctx(tmp_path, net)
    assert service.bootstrap(ctx, 0) == 0
    assert service.bootstrap(ctx, 0) is None  # only on a fresh start
    theta = GlobalModel.initial(HP, window=0)
    for m in net.miners:
        simulate.put(m, 0, simulate.honest_upload(m, theta, 0, net.pages, HP, net.pages.num_pages),
                     uploaded_at=net.window_time(0))
    before = metrics.WINDOWS_SCORED._value.get()

    net.clock.now = net.chain.block_timestamp(10) + 1.0  # in window 1, but inside window 0's grace
    assert not service.ready(ctx, 0) and service.run_pass(ctx, service.LoopConfig()) == []
    net.close_window(0)
    assert service.ready(ctx, 0)
    [report] = service.run_pass(ctx, service.LoopConfig())
    assert report.window == 0 and report.num_evaluated == 2
    assert metrics.WINDOWS_SCORED._value.get() == before + 1

    # Down for three windows: a fresh context (as after a restart) catches up in order.
    net.close_window(3)
    ctx2 = _ctx(tmp_path, net)
    reports = service.run_pass(ctx2, service.LoopConfig(catch_up=8))
    assert [r.window for r in reports] == [1, 2, 3] and all(r.scored for r in reports)
    with ctx2.sessions() as s:
        assert repo.last_scored_window(s) == 3
        assert repo.count_window_evaluations(s, window=2, status="missing") == 2
    # The published history reaches theta_4 from the checkpoint of window 2 (checkpoint_every = 2).
    synced = sync_global_model(None, 4, hp=HP, storage=ctx2.own_storage, owner=ctx2.hotkey)
    assert synced.window == 4 and synced.hash == ctx2.carry.model.hash
    assert ctx2.own_storage.stat("checkpoints/0000000002.safetensors").size > 0


def test_windows_beyond_the_lookback_are_closed_empty(tmp_path: Path) -> None:
    net = simulate.local_net(tmp_path, HP, 1, pages=simulate.RandomPages(num_pages=64, page_seqs=2, seq_len=16))
    ctx = _ctx(tmp_path, net)
    service.bootstrap(ctx, 0)
    net.close_window(4)
    cfg = service.LoopConfig(max_lookback=2)
    # A fresh database knows only the start window; the gap after it appears once it is scored.
    reports = service.run_pass(ctx, cfg) + service.run_pass(ctx, cfg)
    assert [r.window for r in reports] == [0, 1, 2, 3, 4]
    with ctx.sessions() as s:
        skipped = [w.window for w in repo.windows(s) if w.stage_timings.get("skipped")]
    assert skipped == [1, 0]  # 4 - 0 and 4 - 1 > 2: closed empty; windows 2..4 evaluated
    assert ctx.carry.model is not None and ctx.carry.model.window == 5


def test_validators_are_not_scored_as_miners() -> None:
    from types import SimpleNamespace

    from protocol.follow import validator_commitment
    from validator.window import miner_hotkeys

    meta = SimpleNamespace(uids=[0, 1, 2, 3, 4], hotkeys=["v1", "v2", "m1", "m2", "m3"],
                           validator_permit=[True, True, True, False, False])
    commitments = {"v1": validator_commitment("file:///v1"), "m1": "file:///m1", "m2": "file:///m2"}
    # v1 declared the role; v2 holds a permit and committed nothing (a validator not yet started);
    # m1 holds a permit too (small subnets give every neuron one) but committed a miner store.
    assert miner_hotkeys(meta, commitments) == {"m1": 2, "m2": 3, "m3": 4}


def test_a_validator_that_joins_late_warms_up_before_setting_weights(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from validator.db.session import make_engine, migrate, session_factory
    from validator.setweights import warming_up

    url = f"sqlite:///{tmp_path / 'w.db'}"
    migrate(url)
    sessions = session_factory(make_engine(url))
    with sessions() as s:
        repo.mark_window_scored(s, window=12)
    hp = HP.override(**{"weights.warmup_windows": 5})
    late = SimpleNamespace(carry=SimpleNamespace(model=SimpleNamespace(genesis_window=3)), sessions=sessions, hp=hp)
    assert [w for w in range(12, 20) if warming_up(late, w)] == [12, 13, 14, 15]  # weights from 12 + 5 - 1
    at_genesis = SimpleNamespace(carry=SimpleNamespace(model=SimpleNamespace(genesis_window=12)), sessions=sessions, hp=hp)
    assert not warming_up(at_genesis, 12)


def test_genesis_waits_for_higher_stake_validators_that_have_not_committed_yet() -> None:
    from types import SimpleNamespace

    meta = SimpleNamespace(hotkeys=["b", "a", "c", "m"], stakes=[700.0, 1000.0, 700.0, 0.0],
                           validator_permit=[True, True, True, False])
    assert [service.genesis_rank(meta, hk) for hk in ("a", "b", "c", "m")] == [0, 1, 2, None]



# ----------------------------------------------------------------------------- weights across a crash

HP_EVERY = HP.override(**{"weights.set_every_windows": 1})  # window 0 is a weight period of its own


def _weights_net(tmp: Path) -> simulate.LocalNet:
    """A net whose window 0 has closed with two honest uploads (so it scores, and weights are due)."""
    net = simulate.local_net(tmp, HP_EVERY, 2, pages=simulate.RandomPages(num_pages=64, page_seqs=2, seq_len=16))
    theta = GlobalModel.initial(HP_EVERY, window=0)
    for m in net.miners:
        simulate.put(m, 0, simulate.honest_upload(m, theta, 0, net.pages, HP_EVERY, net.pages.num_pages),
                     uploaded_at=net.window_time(0))
    net.close_window(0)
    return net


def _ctx_every(tmp: Path, net: simulate.LocalNet):
    settings = load_settings(None, home=tmp / "home", database_url=f"sqlite:///{tmp / 'v.db'}",
                             storage=f"file://{tmp / 'vstore'}")
    return build_context(settings, HP_EVERY, options=RunOptions(allow_local_storage=True), chain=net.chain,
                         keypair=net.validator, pages=net.pages)


def _crash_once(chain: Any, sends: list[int], *, after_send: bool) -> Any:
    """``chain.set_weights`` whose first call dies like a killed process, before or after reaching the chain."""
    real, crashed = chain.set_weights, []

    def set_weights(*args: Any, **kwargs: Any) -> None:
        if crashed or after_send:
            real(*args, **kwargs)
            sends.append(1)
        if not crashed:
            crashed.append(True)
            raise SystemExit("killed")

    return set_weights


@pytest.mark.parametrize("after_send", [False, True])
def test_weights_claimed_before_a_crash_are_sent_exactly_once_after_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after_send: bool
) -> None:
    net, sends = _weights_net(tmp_path), []
    ctx = _ctx_every(tmp_path, net)
    assert service.bootstrap(ctx, 0) == 0
    monkeypatch.setattr(net.chain, "set_weights", _crash_once(net.chain, sends, after_send=after_send))
    with pytest.raises(SystemExit):
        service.run_pass(ctx, service.LoopConfig())
    with ctx.sessions() as s:
        assert repo.last_scored_window(s) == 0 and weight_repo.latest_weight_set(s).tx_status == "pending"

    restarted = _ctx_every(tmp_path, net)  # a new process on the same database
    service.run_pass(restarted, service.LoopConfig())
    service.run_pass(restarted, service.LoopConfig())
    assert sends == [1]  # exactly once, whether or not the first try had reached the chain
    with restarted.sessions() as s:
        ws = weight_repo.latest_weight_set(s)
        assert ws is not None and ws.window == 0 and ws.tx_status == "success"
        assert repo.get_window(s, window=0).status == "weights_set"
    uid = net.chain.metagraph(1).uid_of(restarted.hotkey)
    total = sum(ws.weights)
    assert net.chain.weights(1)[uid] == pytest.approx(
        {u: w / total for u, w in zip(ws.uids, ws.weights, strict=True)}, abs=1e-6)


def test_an_unsent_weight_set_whose_period_is_over_is_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from validator.setweights import resend_unsent

    net, sends = _weights_net(tmp_path), []
    ctx = _ctx_every(tmp_path, net)
    service.bootstrap(ctx, 0)
    monkeypatch.setattr(net.chain, "set_weights", _crash_once(net.chain, sends, after_send=False))
    with pytest.raises(SystemExit):
        service.run_pass(ctx, service.LoopConfig())
    net.clock.now = net.chain.block_timestamp(30)  # window 3: window 0's weight period (every 1) is over
    assert not resend_unsent(_ctx_every(tmp_path, net)) and sends == []
    with ctx.sessions() as s:
        assert weight_repo.latest_weight_set(s).tx_status == "failed"


def test_a_failed_weight_set_is_retried_by_a_later_pass_of_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chain.base import ChainUnavailableError

    net, calls = _weights_net(tmp_path), []
    ctx = _ctx_every(tmp_path, net)
    service.bootstrap(ctx, 0)
    real = net.chain.set_weights

    def down_once(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ChainUnavailableError("node down")
        real(*args)

    monkeypatch.setattr(net.chain, "set_weights", down_once)
    [report] = service.run_pass(ctx, service.LoopConfig())  # scores window 0; its weight set fails
    assert report.window == 0 and calls == [1]
    with ctx.sessions() as s:
        assert weight_repo.latest_weight_set(s).tx_status == "pending"
    service.run_pass(ctx, service.LoopConfig())
    assert calls == [1]  # inside the backoff: not tried again yet
    net.clock.now += 2 * net.chain.params.block_time_s
    service.run_pass(ctx, service.LoopConfig())
    assert calls == [1, 1]
    with ctx.sessions() as s:
        ws = weight_repo.latest_weight_set(s)
        assert ws.tx_status == "success" and ws.tx_detail.splitlines()[-1].endswith(": success")
        assert repo.get_window(s, window=0).status == "weights_set"
