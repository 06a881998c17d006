"""The embedded local chain, driven by a fake clock so block arithmetic is deterministic."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from bittensor.sp_core import Keypair

from chain.base import (
    U16_MAX,
    Chain,
    ChainError,
    ChainTimeoutError,
    InvalidWeightsError,
    NotRegisteredError,
    NoValidatorPermitError,
    RateLimitedError,
    SubnetFullError,
    SubnetNotFoundError,
    SubnetParams,
)
from chain.connect import open_chain
from chain.local import LocalChain


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance_blocks(self, n: float, block_time: float = 1.0) -> None:
        self.t += n * block_time


def key(i: int) -> Keypair:
    return Keypair.create_from_uri(f"//gauntlet-test-{i}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chain(tmp_path: Path, clock: Clock) -> LocalChain:
    return LocalChain.create(tmp_path / "chain.db", block_time_s=1.0, tempo=10, max_uids=4,
                             weights_rate_limit=3, immunity_period=5, clock=clock)


def test_satisfies_the_protocol_and_blocks_follow_the_clock(chain: LocalChain, clock: Clock) -> None:
    assert isinstance(chain, Chain)
    assert chain.block() == 0
    clock.advance_blocks(7.5)
    assert chain.block() == 7
    assert chain.block_timestamp(7) == pytest.approx(chain.params.genesis_time + 7)
    assert chain.wait_for_block(3, timeout_s=0.1) == 7


def test_wait_for_block_times_out(tmp_path: Path) -> None:
    real = LocalChain.create(tmp_path / "c.db", block_time_s=100.0)
    with pytest.raises(ChainTimeoutError):
        real.wait_for_block(5, timeout_s=0.05)


def test_reopening_keeps_the_genesis_and_params(chain: LocalChain, clock: Clock) -> None:
    again = LocalChain.open_or_create(chain.path, block_time_s=99.0, clock=clock)
    assert again.params == chain.params


def test_block_hashes_are_secret_until_produced_and_the_same_for_every_reader(
        chain: LocalChain, clock: Clock, tmp_path: Path) -> None:
    clock.advance_blocks(5.5)
    h = chain.block_hash(5)
    assert h.startswith("0x") and len(h) == 66
    assert LocalChain.open(chain.path, clock=clock).block_hash(5) == h  # another process reads the same hash
    assert chain.block_hash(4) != h
    with pytest.raises(ChainError, match="not been produced"):
        chain.block_hash(6)
    other = LocalChain.create(tmp_path / "other.db", block_time_s=1.0, clock=clock)
    assert other.block_hash(0) != chain.block_hash(0)  # keyed by each file's own secret, not predictable
    assert chain.block_time_s() == 1.0


def test_a_chain_file_without_a_block_secret_gets_one(chain: LocalChain, clock: Clock) -> None:
    with sqlite3.connect(chain.path) as c:
        c.execute("DELETE FROM params WHERE key = 'block_secret'")
    first = LocalChain.open(chain.path, clock=clock).block_hash(0)
    assert LocalChain.open(chain.path, clock=clock).block_hash(0) == first


def test_open_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match="not found"):
        LocalChain.open(tmp_path / "missing.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE params (key TEXT, value TEXT)").connection.commit()
    with pytest.raises(ChainError, match="not a gauntlet local chain"):
        LocalChain.open(other)
    with pytest.raises(ChainError, match="unrecognised chain URL"):
        open_chain("http://nope")


def test_open_chain_local_url_creates_the_file(tmp_path: Path) -> None:
    c = open_chain(f"local:{tmp_path / 'x' / 'chain.db'}", block_time_s=0.5)
    assert isinstance(c, LocalChain) and c.params.block_time_s == 0.5 and c.subnets() == [1]


def test_register_assigns_uids_and_is_idempotent(chain: LocalChain) -> None:
    assert [chain.register(key(i), 1) for i in range(3)] == [0, 1, 2]
    assert chain.register(key(1), 1) == 1
    mg = chain.metagraph(1)
    assert mg.uids == [0, 1, 2] and mg.uid_of(key(2).ss58_address) == 2 and mg.uid_of("nobody") is None
    with pytest.raises(SubnetNotFoundError):
        chain.register(key(9), 42)


def test_full_subnet_prunes_lowest_incentive_non_immune_uid(chain: LocalChain, clock: Clock) -> None:
    validator = key(0)
    for i in range(4):
        chain.register(key(i), 1)
    with pytest.raises(SubnetFullError):
        chain.register(key(10), 1)  # everyone still immune (immunity_period = 5)
    chain.stake(validator, 100)
    chain.set_weights(validator, 1, [1, 2, 3], [0.5, 0.3, 0.2], version_key=0)
    clock.advance_blocks(10)  # past immunity and one tempo: incentive 1 > 2 > 3
    assert chain.register(key(10), 1) == 3
    mg = chain.metagraph(1)
    assert mg.hotkeys[3] == key(10).ss58_address and mg.incentive[3] == 0.0
    assert 3 not in chain.weights(1)[0]  # weights to the pruned uid are dropped
    assert chain.register(key(11), 1) == 2


def test_commitments_replace_and_require_registration(chain: LocalChain) -> None:
    with pytest.raises(NotRegisteredError):
        chain.commit(key(0), 1, "s3://bucket/a")
    chain.register(key(0), 1)
    chain.commit(key(0), 1, "s3://bucket/a")
    chain.commit(key(0), 1, "s3://bucket/b")
    assert chain.commitments(1) == {key(0).ss58_address: "s3://bucket/b"}


def test_set_weights_errors(chain: LocalChain, clock: Clock) -> None:
    v, m = key(0), key(1)
    with pytest.raises(NotRegisteredError):
        chain.set_weights(v, 1, [0], [1.0], 0)
    chain.register(v, 1)
    chain.register(m, 1)
    with pytest.raises(NoValidatorPermitError):
        chain.set_weights(v, 1, [1], [1.0], 0)
    chain.stake(v, 10)
    for uids, ws in (([7], [1.0]), ([1, 1], [1.0, 1.0]), ([1], [-1.0]), ([1], [0.0]), ([1, 0], [1.0])):
        with pytest.raises(InvalidWeightsError):
            chain.set_weights(v, 1, uids, ws, 0)
    chain.set_weights(v, 1, [1, 0], [3.0, 1.0], 0)
    assert chain.weights(1) == {0: {1: 0.75, 0: 0.25}}
    clock.advance_blocks(1)
    with pytest.raises(RateLimitedError) as info:
        chain.set_weights(v, 1, [1], [1.0], 0)
    assert info.value.retry_after_blocks == 2
    clock.advance_blocks(2)
    chain.set_weights(v, 1, [1], [1.0], 0)
    assert chain.weights(1) == {0: {1: 1.0}}
    assert chain.metagraph(1).last_update[0] == 3


def test_epoch_runs_once_per_boundary_and_clips_the_colluder(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "c.db"
    a = LocalChain.create(path, block_time_s=1.0, tempo=10, weights_rate_limit=0, clock=clock)
    b = LocalChain.open(path, clock=clock)  # a second "process" on the same file
    honest1, honest2, colluder, m1, m2 = (key(i) for i in range(5))
    for k in (honest1, honest2, colluder, m1, m2):
        a.register(k, 1)
    for k, s in ((honest1, 40), (honest2, 40), (colluder, 20)):
        a.stake(k, s)
    a.set_weights(honest1, 1, [3, 4], [0.8, 0.2], 0)
    b.set_weights(honest2, 1, [3, 4], [0.8, 0.2], 0)
    b.set_weights(colluder, 1, [4], [1.0], 0)
    assert a.metagraph(1).incentive == [0.0] * 5  # no boundary passed yet
    clock.advance_blocks(25)  # two boundaries passed with nobody watching: one epoch, for block 20
    mg_b = b.metagraph(1)
    mg_a = a.metagraph(1)
    assert a.epochs_run(1) == [20]
    assert mg_a == mg_b
    assert mg_a.incentive[3:] == pytest.approx([16 / 21, 5 / 21])
    assert mg_a.dividends[:3] == pytest.approx([10 / 21, 10 / 21, 1 / 21])
    assert mg_a.consensus[3:] == pytest.approx([0.8, 0.2])
    assert sum(mg_a.emission) == pytest.approx(0.82 * 10)  # 41% + 41% of tempo x 1 alpha
    assert mg_a.validator_permit == [True, True, True, False, False]


def test_create_subnet_with_owner(chain: LocalChain) -> None:
    assert chain.create_subnet(key(5)) == 2
    assert chain.subnets() == [1, 2]
    with pytest.raises(ChainError, match="already exists"):
        chain.create_subnet(key(5), netuid=2)


def test_subnet_params_are_the_files_and_set_weights_enforces_them(tmp_path: Path, clock: Clock) -> None:
    chain = LocalChain.create(tmp_path / "p.db", block_time_s=1.0, tempo=10, weights_rate_limit=3, weights_version=4,
                              min_allowed_weights=2, max_weights_limit=U16_MAX // 2, clock=clock)
    assert chain.subnet_params(1) == SubnetParams(
        netuid=1, tempo=10, weights_rate_limit=3, weights_version=4, commit_reveal_enabled=False,
        commit_reveal_period=0, max_weights_limit=U16_MAX // 2, min_allowed_weights=2)
    assert chain.subnet_params(1).max_weight_fraction == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(SubnetNotFoundError):
        chain.subnet_params(9)
    v = key(0)
    for i in range(4):
        chain.register(key(i), 1)
    chain.stake(v, 10)
    with pytest.raises(InvalidWeightsError, match="version_key 3"):
        chain.set_weights(v, 1, [1, 2], [0.5, 0.5], 3)
    with pytest.raises(InvalidWeightsError, match="at least 2"):
        chain.set_weights(v, 1, [1, 2], [1.0, 0.0], 4)
    with pytest.raises(InvalidWeightsError, match="caps one weight"):
        chain.set_weights(v, 1, [1, 2, 3], [0.6, 0.2, 0.2], 4)
    chain.set_weights(v, 1, [0], [1.0], 4)  # a lone self-weight is exempt from both, as on subtensor
    clock.advance_blocks(3)
    chain.set_weights(v, 1, [1, 2, 3], [0.5, 0.25, 0.25], 4)  # at the cap is allowed
    assert chain.weights(1)[0] == pytest.approx({1: 0.5, 2: 0.25, 3: 0.25})


def test_a_chain_file_from_before_the_weight_limits_opens_with_subtensors_defaults(
    tmp_path: Path, clock: Clock
) -> None:
    import json

    path = tmp_path / "old.db"
    LocalChain.create(path, block_time_s=1.0, clock=clock).close()
    conn = sqlite3.connect(path)
    params = json.loads(conn.execute("SELECT value FROM params WHERE key = 'params'").fetchone()[0])
    del params["min_allowed_weights"], params["max_weights_limit"]
    conn.execute("UPDATE params SET value = ? WHERE key = 'params'", (json.dumps(params),))
    conn.commit()
    conn.close()
    p = LocalChain.open(path, clock=clock).subnet_params(1)
    assert (p.min_allowed_weights, p.max_weights_limit, p.weights_rate_limit) == (1, U16_MAX, 100)
