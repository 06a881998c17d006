"""A full window scored end to end on the real PostgreSQL (and Redis for the worker queue).

Uploads are real: honest miners take a training step on their assigned pages and sign the
compressed delta; hostile ones are made by hand. The validator collects them from each
miner's local store, runs both stages, publishes the aggregate, writes one receipt per
registered miner in one transaction and sets weights once.

Run: ``pytest tests/integration/test_validator_window.py -q``
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from protocol.global_model import GlobalModel, sync_global_model
from protocol.hparams import HParams
from protocol.settings import load_settings
from protocol.storage import aggregate_key
from testing import validator_sim as simulate
from tests.integration.test_db import pg_schema_url  # noqa: F401  (fixture)
from validator import service
from validator.app import RunOptions, build_context, build_worker
from validator.db import repo
from validator.db.models import Evaluation, WeightSet
from validator.setweights import maybe_set_weights

pytestmark = pytest.mark.integration

HP = HParams().override(**{"windows.publish_timeout_s": 5.0,
    "windows.blocks_per_window": 100, "windows.upload_grace_s": 5.0, "data.seq_len": 32, "data.page_seqs": 4,
    "data.pages_per_window": 2, "data.eval_pages": 1, "outer.checkpoint_every": 2,
    "weights.set_every_windows": 1, "scoring.max_norm_ratio": 5.0,
})


def _net_and_ctx(tmp: Path, db_url: str, n: int, redis_url: str | None = None):
    net = simulate.local_net(tmp, HP, n, pages=simulate.RandomPages(page_seqs=4, seq_len=32))
    settings = load_settings(None, home=tmp / "home", database_url=db_url, storage=f"file://{tmp / 'vstore'}",
                             redis_url=redis_url)
    ctx = build_context(settings, HP, options=RunOptions(allow_local_storage=True, remote_timeout_s=60.0),
                        chain=net.chain, keypair=net.validator, pages=net.pages)
    return net, settings, ctx


def _upload_window0(net: simulate.LocalNet) -> dict[str, str]:
    """9 miners: 3 honest, then garbage, near-copy, late, huge norm, wrong base, missing."""
    theta = GlobalModel.initial(HP, window=0)
    m = net.miners
    t = net.window_time(0)
    honest = {}
    for miner in m[:3]:
        data = simulate.honest_upload(miner, theta, 0, net.pages, HP, net.pages.num_pages)
        simulate.put(miner, 0, data, uploaded_at=t)
        honest[miner.hotkey] = data
    simulate.put(m[3], 0, b"GDLT" + b"\x00" * 300, uploaded_at=t)
    from protocol.pages import assigned_pages

    ids = assigned_pages(0, m[0].hotkey, HP.data.public_seed, net.pages.num_pages, HP.data.pages_per_window)
    stolen = simulate.training_delta(theta, net.pages.pages(ids))  # miner0's delta, re-signed by miner4
    simulate.put(m[4], 0, simulate.sign(simulate.encode({k: 1.01 * v for k, v in stolen.items()}, HP), window=0,
                                        hotkey=m[4].hotkey, base_hash=theta.hash, kp=m[4].keypair, hp=HP),
                 uploaded_at=t + 1)
    late = simulate.honest_upload(m[5], theta, 0, net.pages, HP, net.pages.num_pages)
    simulate.put(m[5], 0, late, uploaded_at=net.window_time(1, 0.5))
    ids6 = assigned_pages(0, m[6].hotkey, HP.data.public_seed, net.pages.num_pages, HP.data.pages_per_window)
    huge = {k: 1e3 * v for k, v in simulate.training_delta(theta, net.pages.pages(ids6)).items()}
    simulate.put(m[6], 0, simulate.sign(simulate.encode(huge, HP), window=0, hotkey=m[6].hotkey,
                                        base_hash=theta.hash, kp=m[6].keypair, hp=HP), uploaded_at=t)
    ids7 = assigned_pages(0, m[7].hotkey, HP.data.public_seed, net.pages.num_pages, HP.data.pages_per_window)
    other_base = simulate.encode(simulate.training_delta(theta, net.pages.pages(ids7)), HP)
    simulate.put(m[7], 0, simulate.sign(other_base, window=0, hotkey=m[7].hotkey, base_hash="ab" * 32,
                                        kp=m[7].keypair, hp=HP), uploaded_at=t)
    return honest


def test_full_window_end_to_end(tmp_path: Path, pg_schema_url: str) -> None:  # noqa: F811
    net, _settings, ctx = _net_and_ctx(tmp_path, pg_schema_url, 9)
    assert service.bootstrap(ctx, 0) == 0
    honest = _upload_window0(net)
    net.close_window(0)
    reports = service.run_pass(ctx, service.LoopConfig())
    assert [r.window for r in reports] == [0] and reports[0].scored

    with ctx.sessions() as s:
        rows = {e.hotkey: e for e in s.scalars(sa.select(Evaluation).where(Evaluation.window == 0))}
        window = repo.get_window(s, window=0)
    m = [x.hotkey for x in net.miners]
    assert set(rows) == set(m)  # a receipt for every registered miner, the missing one included
    assert {hk for hk, e in rows.items() if e.status == "accepted"} == set(honest)
    assert rows[m[3]].reject_reason in ("malformed", "bad_signature")
    assert rows[m[4]].reject_reason == "copy" and rows[m[4]].copy_of_hotkey == m[0]
    assert rows[m[5]].reject_reason == "late"
    assert rows[m[6]].reject_reason == "norm_too_large"
    assert rows[m[7]].reject_reason == "out_of_sync"
    assert rows[m[8]].status == "missing"
    accepted = [rows[hk] for hk in honest]
    assert len({e.loss_before_random for e in accepted}) == 1  # shared "before" loss
    for e in accepted:
        # A real training step on its own pages: the assigned loss falls more than the random one.
        assert e.loss_after_assigned < e.loss_before_assigned and e.indicator == 1
        assert e.estimate is not None and e.random_seed_hex == window.random_seed_hex
        assert e.base_model_hash == window.base_model_hash and e.assigned_page_ids
    assert window.status in ("scored", "weights_set") and window.aggregate_hash
    # After the window, the validators' standing on chain: this one alone, its weights its own.
    [me] = window.agreement["validators"]
    assert me["hotkey"] == ctx.hotkey and me["has_weights"] and me["overlap"] == pytest.approx(1.0)
    assert me["validator_trust"] == pytest.approx(1.0)

    # The published aggregate takes a fresh node from theta_0 to the validator's theta_1.
    synced = sync_global_model(None, 1, hp=HP, storage=ctx.own_storage, owner=ctx.hotkey)
    assert synced.window == 1 and synced.hash == ctx.carry.model.hash

    # Weights: set once for window 0, never twice.
    with ctx.sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(WeightSet)) == 1
    assert maybe_set_weights(ctx, 0) is False
    assert service.run_pass(ctx, service.LoopConfig()) == []  # nothing left to score


def test_two_workers_share_stage2(tmp_path: Path, pg_schema_url: str, redis_url: str) -> None:  # noqa: F811
    import uuid

    from validator.queue import WorkQueue, connect

    net, settings, ctx = _net_and_ctx(tmp_path, pg_schema_url, 6, redis_url=redis_url)
    stream = f"gauntlet-test-{uuid.uuid4().hex[:8]}"
    queue = WorkQueue(connect(redis_url), stream)
    ctx.stage2.dispatcher.queue = queue  # type: ignore[union-attr]
    service.bootstrap(ctx, 0)
    theta = GlobalModel.initial(HP, window=0)
    for miner in net.miners:
        simulate.put(miner, 0, simulate.honest_upload(miner, theta, 0, net.pages, HP, net.pages.num_pages),
                     uploaded_at=net.window_time(0))
    net.close_window(0)
    workers = [build_worker(settings, validator_hotkey=ctx.hotkey, allow_local_storage=True, consumer=f"w{i}",
                            hp=HP, pages=net.pages) for i in range(2)]
    done: dict[int, int] = {}
    for w in workers:
        w.queue = queue
    threads = [threading.Thread(target=lambda i=i: done.__setitem__(i, workers[i].run(idle_exit_s=8.0)))
               for i in range(2)]
    for t in threads:
        t.start()
    try:
        reports = service.run_pass(ctx, service.LoopConfig())
    finally:
        for t in threads:
            t.join(60)
        queue.client.delete(stream)
    assert reports[0].num_evaluated == 6
    assert sum(done.values()) == 6 and all(n > 0 for n in done.values())  # both workers took jobs
    with ctx.sessions() as s:
        assert repo.count_window_evaluations(s, window=0, status="accepted") == 6
    assert ctx.own_storage.stat(aggregate_key(0)).size > 0


class _SteppingClock:
    """Wall clock for the Stage-2 budget: ``start``, then one second later at every reading."""

    def __init__(self, start: float) -> None:
        self.now = start - 1.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_time_budget_leaves_peers_unevaluated_and_loses_nothing(tmp_path: Path, pg_schema_url: str) -> None:  # noqa: F811
    from protocol.follow import publish_deadline
    from protocol.windows import window_bounds

    net, _settings, ctx = _net_and_ctx(tmp_path, pg_schema_url, 6)
    service.bootstrap(ctx, 0)
    theta = GlobalModel.initial(HP, window=0)
    for miner in net.miners:
        simulate.put(miner, 0, simulate.honest_upload(miner, theta, 0, net.pages, HP, net.pages.num_pages),
                     uploaded_at=net.window_time(0))
    net.close_window(0)
    # The budget ends 3 clock readings after Stage 2 starts (one to set it, one to start evaluating,
    # one per peer): one peer is evaluated, five are not.
    end0 = net.chain.block_timestamp(window_bounds(0, HP.windows).end_block)
    budget = publish_deadline(end0, HP) - HP.windows.publish_timeout_s * HP.scoring.eval_reserve_fraction
    ctx.stage2.clock = _SteppingClock(budget - 3.0)
    reports = service.run_pass(ctx, service.LoopConfig())
    assert [r.window for r in reports] == [0] and reports[0].scored and reports[0].num_evaluated == 1

    with ctx.sessions() as s:
        rows = {e.hotkey: e for e in s.scalars(sa.select(Evaluation).where(Evaluation.window == 0))}
        peers = {hk: repo.peer(s, hotkey=hk) for hk in rows}
        window = repo.get_window(s, window=0)
    assert set(rows) == {m.hotkey for m in net.miners}  # a receipt for everyone: nothing lost
    by_status = {st: sorted(hk for hk, e in rows.items() if e.status == st) for st in ("accepted", "unevaluated")}
    assert len(by_status["accepted"]) == 1 and len(by_status["unevaluated"]) == 5, by_status
    for hk in by_status["unevaluated"]:
        e = rows[hk]
        assert e.reject_reason is None and e.loss_after_random is None and "time budget" in e.details["unevaluated"]
        assert e.payload_hash and e.loss_before_assigned is None  # its upload was accepted, never scored
        assert peers[hk].score == 0.0 and peers[hk].inactive_windows == 0  # standing unchanged, no decay
    assert window.status in ("scored", "weights_set") and window.aggregate_hash

    # The next window runs on time with the real clock, and everyone is evaluated again.
    import time

    ctx.stage2.clock = time.time
    model1 = ctx.carry.model
    assert model1 is not None and model1.window == 1
    for miner in net.miners:
        simulate.put(miner, 1, simulate.honest_upload(miner, model1, 1, net.pages, HP, net.pages.num_pages),
                     uploaded_at=net.window_time(1))
    net.close_window(1)
    reports = service.run_pass(ctx, service.LoopConfig())
    assert [r.window for r in reports] == [1] and reports[0].num_evaluated == 6
