"""Several processes share one local chain file: registering, committing and setting weights
concurrently must lose nothing, and each tempo's epoch must run exactly once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from chain.local import LocalChain

N_PROCS = 6
COMMITS = 8
ROUNDS = 2


def _worker(path: str, i: int, result: mp.Queue) -> None:
    # The SDK's key type itself (bittensor.sp_core.Keypair is this class); importing the
    # binding directly keeps six process start-ups from re-importing the whole SDK.
    from bittensor_core import Keypair

    from chain.base import RateLimitedError

    try:
        chain = LocalChain.open(path)
        me = Keypair.create_from_uri(f"//mp-{i}")
        uid = chain.register(me, 1)
        chain.stake(me, 10.0 + i)
        for n in range(COMMITS):
            chain.commit(me, 1, f"worker-{i}-commit-{n}")
        # Everyone registers before weights are set: wait until all N are on the subnet.
        while chain.metagraph(1).n < N_PROCS:
            chain.wait_for_block(chain.block() + 1, timeout_s=10)
        done = 0
        while done < ROUNDS:
            try:
                # Each worker weights every other uid; the last round favours uid (i+1) % N.
                ws = [2.0 if u == (i + 1) % N_PROCS else 1.0 for u in range(N_PROCS)]
                chain.set_weights(me, 1, list(range(N_PROCS)), ws, version_key=1)
                done += 1
            except RateLimitedError as exc:
                chain.wait_for_block(chain.block() + exc.retry_after_blocks, timeout_s=10)
        result.put((i, uid, None))
    except Exception as exc:  # report, don't hang the parent
        result.put((i, -1, repr(exc)))


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    chain = LocalChain.create(path, block_time_s=0.25, tempo=4, max_uids=16, weights_rate_limit=2)
    ctx = mp.get_context("spawn")
    result: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), i, result)) for i in range(N_PROCS)]
    for p in procs:
        p.start()
    outcomes = [result.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [o for o in outcomes if o[2] is not None] == []

    from bittensor_core import Keypair

    hotkeys = {i: Keypair.create_from_uri(f"//mp-{i}").ss58_address for i in range(N_PROCS)}
    mg = chain.metagraph(1)
    assert sorted(mg.uids) == list(range(N_PROCS))
    assert {mg.uid_of(hotkeys[i]) for i, _, _ in outcomes} == set(range(N_PROCS))
    assert {mg.uid_of(hotkeys[i]): uid for i, uid, _ in outcomes} == {uid: uid for _, uid, _ in outcomes}
    assert mg.stakes == pytest.approx([10.0 + i for i in sorted(hotkeys, key=lambda i: mg.uid_of(hotkeys[i]))])
    assert chain.commitments(1) == {hotkeys[i]: f"worker-{i}-commit-{COMMITS - 1}" for i in range(N_PROCS)}
    weights = chain.weights(1)
    assert sorted(weights) == list(range(N_PROCS))
    for uid, row in weights.items():
        assert sum(row.values()) == pytest.approx(1.0)
        assert uid not in row or row[uid] > 0  # stored as given; Yuma drops self-weights

    # Wait for the next tempo boundary, then check one epoch per boundary and paid miners.
    boundary = (chain.block() // 4 + 1) * 4
    chain.wait_for_block(boundary, timeout_s=10)
    mg = chain.metagraph(1)
    runs = chain.epochs_run(1)
    assert runs == sorted(set(runs)) and runs[-1] >= boundary
    assert sum(mg.incentive) == pytest.approx(1.0)
    assert sum(mg.dividends) == pytest.approx(1.0)
