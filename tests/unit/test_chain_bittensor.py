"""The Bittensor backend through the SDK's own ``Substrate`` seam (``tests.unit.fake_substrate``).

Nothing in the SDK or the backend is patched: the backend gets the fake as ``substrate=``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from bittensor.sp_core import Keypair

from chain.base import (
    U16_MAX,
    Chain,
    ChainError,
    ChainUnavailableError,
    NotRegisteredError,
    RateLimitedError,
    SubnetNotFoundError,
    SubnetParams,
    WalletError,
    seconds_per_block,
)
from chain.bittensor_chain import BittensorChain
from tests.unit.fake_substrate import GENESIS_MS, FakeSubstrate

KEYS = [Keypair.create_from_uri(f"//bt-{i}") for i in range(3)]


@pytest.fixture
def fake() -> FakeSubstrate:
    return FakeSubstrate([k.ss58_address for k in KEYS], [100.0, 0.0, 0.0], rate_limit=10)


@pytest.fixture
def chain(fake: FakeSubstrate) -> BittensorChain:
    c = BittensorChain("ws://127.0.0.1:9944", substrate=fake, sleep=lambda _: None)
    yield c
    c.close()


def test_metagraph_through_the_runtime_call(chain: BittensorChain) -> None:
    assert isinstance(chain, Chain)
    mg = chain.metagraph(1)
    assert mg.block == 100 and mg.uids == [0, 1, 2]
    assert mg.hotkeys == [k.ss58_address for k in KEYS] and mg.coldkeys[1] == "cold-1"
    assert mg.stakes == [100.0, 0.0, 0.0] and mg.validator_permit == [True, False, False]
    assert mg.incentive == [0.0, 0.0, 1.0] and mg.dividends == [1.0, 0.0, 0.0] and mg.emission == [1.0] * 3
    assert mg.uid_of(KEYS[2].ss58_address) == 2
    with pytest.raises(SubnetNotFoundError):
        chain.metagraph(7)


def test_commit_then_read_commitments(chain: BittensorChain, fake: FakeSubstrate) -> None:
    chain.commit(KEYS[1], 1, "s3://bucket/miner-1")
    assert fake.submitted[-1][:2] == ("Commitments", "set_commitment")
    assert chain.commitments(1) == {KEYS[1].ss58_address: "s3://bucket/miner-1"}
    with pytest.raises(Exception, match="at most 128"):
        chain.commit(KEYS[1], 1, "x" * 200)


def test_set_weights_plaintext_with_version_key_and_rate_limit(
    chain: BittensorChain, fake: FakeSubstrate
) -> None:
    chain.set_weights(KEYS[0], 1, [1, 2], [0.25, 0.75], version_key=7)
    module, function, params = fake.submitted[-1]
    assert (module, function) == ("SubtensorModule", "set_mechanism_weights")
    assert params["version_key"] == 7 and params["dests"] == [1, 2]
    assert chain.weights(1)[0] == pytest.approx({1: 0.25, 2: 0.75}, abs=1e-4)  # u16-quantised by the SDK
    fake.head += 3
    with pytest.raises(RateLimitedError, match="Retry in ~7 blocks") as info:
        chain.set_weights(KEYS[0], 1, [1], [1.0], version_key=7)
    assert info.value.retry_after_blocks == 7  # parsed from the SDK's preflight, for the caller's retry


def test_subnet_params_are_the_storage_items_the_sdk_preflights(chain: BittensorChain, fake: FakeSubstrate) -> None:
    assert chain.subnet_params(1) == SubnetParams(
        netuid=1, tempo=360, weights_rate_limit=10, weights_version=0, commit_reveal_enabled=False,
        commit_reveal_period=1, max_weights_limit=U16_MAX, min_allowed_weights=0)
    # The subnet owner changes them: the next read sees it (nothing cached).
    fake.tempo, fake.rate_limit, fake.weights_version, fake.commit_reveal, fake.reveal_period = 99, 50, 12, True, 3
    fake.max_weights_limit, fake.min_allowed_weights = 6553, 8
    p = chain.subnet_params(1)
    assert (p.tempo, p.weights_rate_limit, p.weights_version, p.commit_reveal_enabled, p.commit_reveal_period) == (
        99, 50, 12, True, 3)
    assert (p.max_weights_limit, p.min_allowed_weights) == (6553, 8)
    assert p.max_weight_fraction == pytest.approx(0.1, abs=1e-4)  # a u16 fraction of the row, not a uid count
    assert p.next_set_block(400) == 450 and p.next_set_block(0) == 0  # never set: not rate limited
    with pytest.raises(SubnetNotFoundError):
        chain.subnet_params(7)


def test_set_weights_unregistered_hotkey(chain: BittensorChain) -> None:
    with pytest.raises(NotRegisteredError):
        chain.set_weights(Keypair.create_from_uri("//stranger"), 1, [1], [1.0], version_key=0)
    with pytest.raises(NotRegisteredError, match="needs the coldkey"):
        chain.register(Keypair.create_from_uri("//stranger"), 1)
    assert chain.register(KEYS[2], 1) == 2


def test_block_and_timestamps(chain: BittensorChain, fake: FakeSubstrate) -> None:
    assert chain.block() == 100
    assert chain.block_timestamp(100) == pytest.approx(1_700_000_000 + 1200)
    assert chain.block_timestamp(110) == pytest.approx(1_700_000_000 + 1200 + 120)  # extrapolated


def test_unreachable_endpoint_retries_then_fails_clearly(fake: FakeSubstrate) -> None:
    sleeps: list[float] = []
    fake.fail_connects = 2
    c = BittensorChain("ws://127.0.0.1:9944", substrate=fake, retries=3, backoff_s=0.5, sleep=sleeps.append)
    assert c.block() == 100 and sleeps == [0.5, 1.0]
    fake.fail_connects = 100
    d = BittensorChain("ws://127.0.0.1:9944", substrate=fake, retries=2, backoff_s=0.1, sleep=sleeps.append)
    with pytest.raises(ChainUnavailableError, match=r"ws://127.0.0.1:9944 unreachable after 3 attempts"):
        d.block()


# ----------------------------------------------------------------------------- registration


def _wallet(root: Path, password: str | None = None) -> Any:
    """A real SDK wallet on disk: coldkey (encrypted with ``password`` if given) and a hotkey."""
    from bittensor import Wallet

    w = Wallet(name="miner", hotkey="h", path=str(root))
    w.create_new_coldkey(use_password=password is not None, coldkey_password=password, suppress=True)
    w.create_new_hotkey(use_password=False, suppress=True)
    return Wallet(name="miner", hotkey="h", path=str(root))  # fresh: nothing unlocked yet


def test_register_is_signed_by_the_coldkey_for_the_hotkey(
    chain: BittensorChain, fake: FakeSubstrate, tmp_path: Path
) -> None:
    wallet = _wallet(tmp_path)
    hot, cold = wallet.hotkeypub.ss58_address, wallet.coldkeypub.ss58_address
    assert chain.register(wallet, 1) == 3
    [(module, function, params, signer)] = fake.signed
    assert (module, function) == ("SubtensorModule", "burned_register")
    assert signer == cold and params == {"netuid": 1, "hotkey": hot}
    assert fake.submitted[-1][:2] == ("MevShield", "submit_encrypted")  # the SDK shields registration
    assert chain.metagraph(1).coldkeys[3] == cold
    assert chain.register(wallet, 1) == 3 and len(fake.signed) == 1  # already registered: nothing sent


def test_register_with_an_encrypted_coldkey_needs_its_password_without_a_terminal(
    chain: BittensorChain, fake: FakeSubstrate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("BT_WALLET_PASSWORD", "BT_WALLET_PASSWORD_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO())  # no terminal: a prompt could never be answered
    wallet = _wallet(tmp_path, password="correct horse")
    with pytest.raises(WalletError, match="BT_WALLET_PASSWORD"):
        chain.register(wallet, 1)
    monkeypatch.setenv("BT_WALLET_PASSWORD", "wrong")
    with pytest.raises(WalletError, match="wrong password"):
        chain.register(wallet, 1)
    assert fake.signed == []
    monkeypatch.setenv("BT_WALLET_PASSWORD", "correct horse")
    assert chain.register(wallet, 1) == 3
    assert fake.signed[0][3] == wallet.coldkeypub.ss58_address


# ----------------------------------------------------------------------------- time on a real chain


def test_timestamps_on_a_pruning_node_whose_genesis_has_no_time(fake: FakeSubstrate) -> None:
    fake.kept_blocks, fake.head = 50, 1000
    chain = BittensorChain("ws://127.0.0.1:9944", substrate=fake, sleep=lambda _: None)
    now = (GENESIS_MS + 1000 * 12_000) / 1000
    assert chain.block_timestamp(990) == pytest.approx(now - 120)  # kept: read
    assert chain.block_timestamp(500) == pytest.approx(now - 6000)  # pruned: extrapolated, not an error
    assert chain.block_timestamp(0) == pytest.approx(now - 12_000)  # genesis has Timestamp.Now = 0
    assert seconds_per_block(chain) == pytest.approx(12.0)


def test_block_hash_from_the_header_and_none_before_the_block(chain: BittensorChain, fake: FakeSubstrate) -> None:
    assert chain.block_hash(99) == f"0x{99:064x}"
    assert chain.block_time_s() == 12.0
    with pytest.raises(ChainError, match="not been produced"):
        chain.block_hash(101)
