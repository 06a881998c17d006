"""The miner against chains that behave like subtensor, not like the local chain.

Two things the local chain hid: subtensor's block 0 has no timestamp (``Timestamp.Now`` is 0)
and a pruning node cannot read old blocks at all, so a window length measured from block 0
was ~1.7e9 s or an error; and registering there is paid and signed by the coldkey, so
``miner run --register`` must hand the chain the wallet, not the bare hotkey.

Run: ``pytest tests/unit/test_miner_chain.py -q``
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chain.base import ChainError, seconds_per_block
from chain.bittensor_chain import BittensorChain
from miner.loop import Miner
from protocol.hparams import HParams
from tests.unit.fake_substrate import FakeSubstrate

HP = HParams()


class PruningChain:
    """Blocks every 12 s from a real start, block 0 stamped 0, state older than ``kept`` blocks gone."""

    def __init__(self, head: int, kept: int = 256, t1: float = 1_760_000_000.0) -> None:
        self.head, self.kept, self.t1 = head, kept, t1

    def block(self) -> int:
        return self.head

    def block_timestamp(self, block: int) -> float:
        if self.head - block > self.kept:
            raise ChainError(f"state discarded for block {block}: use an archive node")
        return 0.0 if block == 0 else self.t1 + (block - 1) * 12.0


@pytest.mark.parametrize("head", [5_000_000, 200])
def test_window_seconds_from_recent_blocks_not_genesis(head: int) -> None:
    miner = SimpleNamespace(chain=PruningChain(head), hp=HP)
    assert Miner.window_seconds(miner) == pytest.approx(HP.windows.blocks_per_window * 12.0)


def test_window_seconds_through_the_bittensor_backend_on_a_pruning_node() -> None:
    fake = FakeSubstrate(["a"], [1.0], kept_blocks=10)
    fake.head = 3_000
    chain = BittensorChain("ws://127.0.0.1:9944", substrate=fake, sleep=lambda _: None)
    assert Miner.window_seconds(SimpleNamespace(chain=chain, hp=HP)) == pytest.approx(
        HP.windows.blocks_per_window * 12.0)


def test_seconds_per_block_falls_back_to_the_nominal_block_time() -> None:
    class Down:
        def block(self) -> int:
            raise ChainError("unreachable")

    assert seconds_per_block(Down()) == 12.0
    assert seconds_per_block(PruningChain(head=1)) == 12.0  # too young to measure (block 0 has no time)
    assert seconds_per_block(PruningChain(head=100, kept=5), lookback=50) == 12.0  # lookback pruned


def test_miner_run_register_signs_with_the_wallet_coldkey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gauntlet miner run --register`` up to registration, on the Bittensor backend."""
    from chain.wallets import create_wallet
    from miner import cli, setup

    wallet = create_wallet("m", "h", tmp_path / "wallets")
    fake = FakeSubstrate(["someone-else"], [1.0])
    chain = BittensorChain("ws://127.0.0.1:9944", substrate=fake, sleep=lambda _: None)

    class Registered(Exception):
        pass

    def stop(*_: Any) -> None:
        raise Registered

    monkeypatch.setattr(setup, "connect_chain", lambda url: chain)
    monkeypatch.setattr(setup, "connect_storage", lambda url: None)
    monkeypatch.setattr(setup, "publish_commitment", stop)
    with pytest.raises(Registered):
        cli._build(cli.MinerRequest(wallet_name="m", hotkey="h", wallet_path=tmp_path / "wallets",
                                    chain="ws://127.0.0.1:9944", storage=f"file://{tmp_path / 's'}", netuid=1,
                                    register=True, windows=1, state_dir=tmp_path / "state"))
    [(module, function, params, signer)] = fake.signed
    assert (module, function) == ("SubtensorModule", "burned_register")
    assert signer == wallet.coldkeypub.ss58_address
    assert params["hotkey"] == wallet.hotkeypub.ss58_address != signer
