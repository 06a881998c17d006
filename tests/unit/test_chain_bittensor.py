"""The Bittensor backend through the SDK's own ``Substrate`` seam.

``FakeSubstrate`` implements just the calls the SDK makes for the metagraph (the
``SubnetInfoRuntimeApi.get_metagraph`` runtime call and the Commitments maps),
commitments (a hotkey-signed ``Commitments.set_commitment``) and ``SetWeights``
(preflight storage reads, then ``set_mechanism_weights``). Nothing in the SDK or the
backend is patched: the backend gets the fake as ``substrate=``.
"""

from __future__ import annotations

from typing import Any

import bittensor as bt
import pytest
from bittensor.sp_core import Keypair

from chain.base import (
    Chain,
    ChainUnavailableError,
    NotRegisteredError,
    RateLimitedError,
    SubnetNotFoundError,
)
from chain.bittensor_chain import BittensorChain

RAO = 10**9


class FakeSubstrate:
    """A one-subnet in-memory chain answering the SDK's reads and writes."""

    token_symbols: dict[int, str]

    def __init__(
        self,
        hotkeys: list[str],
        stakes: list[float],
        *,
        netuid: int = 1,
        rate_limit: int = 0,
        fail_connects: int = 0,
    ) -> None:
        self.token_symbols = {}
        self.netuid, self.head, self.rate_limit = netuid, 100, rate_limit
        self.hotkeys, self.stakes = hotkeys, stakes
        self.last_update = [0] * len(hotkeys)
        self.weights: dict[int, list[tuple[int, int]]] = {}
        self.commitments: dict[str, dict] = {}
        self.submitted: list[tuple[str, str, dict]] = []
        self.fail_connects = fail_connects

    def balance(self, rao: int, netuid: int = 0) -> bt.Balance:
        return bt.Balance(int(rao), netuid, None)

    async def connect(self) -> None:
        if self.fail_connects:
            self.fail_connects -= 1
            raise bt.RpcConnectionError("connection refused")

    async def close(self) -> None:
        pass

    async def block_number(self) -> int:
        return self.head

    async def block_hash(self, block: int | None = None) -> str:
        return f"0x{(self.head if block is None else block):064x}"

    async def block_time(self) -> float:
        return 12.0

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        assert (api, method) == ("SubnetInfoRuntimeApi", "get_metagraph")
        if params != [self.netuid]:
            return None
        n = len(self.hotkeys)
        return {
            "netuid": self.netuid,
            "block": self.head,
            "tempo": 360,
            "last_step": 0,
            "blocks_since_last_step": 1,
            "owner_hotkey": self.hotkeys[0],
            "owner_coldkey": self.hotkeys[0],
            "network_registered_at": 0,
            "hotkeys": self.hotkeys,
            "coldkeys": [f"cold-{i}" for i in range(n)],
            "validator_permit": [s > 0 for s in self.stakes],
            "last_update": self.last_update,
            "incentives": [0] * (n - 1) + [U16],
            "dividends": [U16] + [0] * (n - 1),
            "emission": [RAO] * n,
            "total_stake": [int(s * RAO) for s in self.stakes],
            "consensus": [0] * n,
            "active": [True] * n,
        }

    async def query(
        self, module: str, name: str, params: list | None = None, block_hash: str | None = None
    ) -> Any:
        match name:
            case "Uids":
                hk = params[1]
                return self.hotkeys.index(hk) if hk in self.hotkeys else None
            case "CommitRevealWeightsEnabled":
                return False
            case "WeightsSetRateLimit":
                return self.rate_limit
            case "LastUpdate":
                return self.last_update
            case "MinAllowedWeights":
                return 0
            case "MaxWeightsLimit":
                return U16
            case "SubnetEpochConsensus":
                return "Yuma"
            case "Now":
                return 1_700_000_000_000 + (int(block_hash, 16) * 12_000)
        raise AssertionError(f"unexpected query {module}.{name}")

    async def query_map(
        self, module: str, name: str, params: list | None = None, block_hash: str | None = None
    ) -> list:
        match name:
            case "TokenSymbol" | "RevealedCommitments":
                return []
            case "CommitmentOf":
                return list(self.commitments.items())
            case "Uids":
                return [(hk, uid) for uid, hk in enumerate(self.hotkeys)]
            case "Weights":
                return sorted(self.weights.items())
        raise AssertionError(f"unexpected map {module}.{name}")

    async def compose(self, call: Any) -> Any:
        return call

    async def submit(self, call: Any, keypair: Any, **_: Any) -> bt.ExtrinsicResult:
        who = keypair.ss58_address
        self.submitted.append((call.module, call.function, call.params))
        if call.function == "set_mechanism_weights":
            uid = self.hotkeys.index(who)
            self.weights[uid] = list(zip(call.params["dests"], call.params["weights"], strict=True))
            self.last_update[uid] = self.head
        elif call.function == "set_commitment":
            # Stored as the node decodes it: BoundedVec<Data> comes back as a flat list of
            # one-key dicts, Raw bytes as 0x-hex strings.
            fields = [{k: "0x" + bytes(v).hex() for k, v in f.items()}
                      for entry in call.params["info"]["fields"] for f in entry]
            self.commitments[who] = {"block": self.head, "deposit": 0, "info": {"fields": fields}}
        else:
            raise AssertionError(f"unexpected call {call}")
        return bt.ExtrinsicResult(True, "ok")


U16 = 65535
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
    with pytest.raises(RateLimitedError, match="Retry in ~7 blocks"):
        chain.set_weights(KEYS[0], 1, [1], [1.0], version_key=7)


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
