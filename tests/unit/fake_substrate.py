"""An in-memory subtensor behind the SDK's own ``Substrate`` seam, shared by the chain tests.

``FakeSubstrate`` implements just the calls the SDK makes for the metagraph (the
``SubnetInfoRuntimeApi.get_metagraph`` runtime call and the Commitments maps),
commitments (a hotkey-signed ``Commitments.set_commitment``), ``SetWeights`` (preflight
storage reads, then ``set_mechanism_weights``) and ``BurnedRegister`` (coldkey-signed,
MEV-shielded: the inner extrinsic is signed by ``sign_extrinsic`` and carried by
``MevShield.submit_encrypted``). Nothing in the SDK or the backend is patched: the backend
gets the fake as ``substrate=``.

The subnet's weight hyper-parameters (``tempo``, ``rate_limit``, ``weights_version``,
``commit_reveal``, ``reveal_period``, ``max_weights_limit``, ``min_allowed_weights``) are plain
attributes a test may change between calls, as a subnet owner would; the SDK's preflight and
the backend's ``subnet_params`` read the same ones.

It behaves like a real node where that has bitten us: block 0 has no timestamp
(``Timestamp.Now`` is 0 in genesis state) and, with ``kept_blocks``, state older than that
many blocks is gone, as on a pruning node.
"""

from __future__ import annotations

from typing import Any

import bittensor as bt
from bittensor._transport.errors import StateDiscardedError
from bittensor.result import chain_error_from_substrate_request

RAO = 10**9
U16 = 65535
GENESIS_MS = 1_700_000_000_000  # block b (b >= 1) was produced at GENESIS_MS + 12 s * b
MLKEM768_PUBLIC_KEY = bytes(1184)  # any 1184 bytes encapsulate; nobody decrypts in a test


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
        kept_blocks: int | None = None,
        commit_reveal: bool = False,
    ) -> None:
        self.token_symbols = {}
        self.netuid, self.head, self.rate_limit = netuid, 100, rate_limit
        self.hotkeys, self.stakes = hotkeys, stakes
        self.coldkeys = [f"cold-{i}" for i in range(len(hotkeys))]
        self.last_update = [0] * len(hotkeys)
        self.weights: dict[int, list[tuple[int, int]]] = {}
        self.commitments: dict[str, dict] = {}
        self.submitted: list[tuple[str, str, dict]] = []
        self.signed: list[tuple[str, str, dict, str]] = []  # (module, function, params, signer ss58)
        self.composed: list[tuple[str, str, dict]] = []
        self.fail_connects = fail_connects
        self.kept_blocks, self.commit_reveal = kept_blocks, commit_reveal
        self.tempo, self.weights_version, self.reveal_period = 360, 0, 1
        self.max_weights_limit, self.min_allowed_weights = U16, 0

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

    async def get_block(self, block_number: int | None = None, block_hash: str | None = None) -> dict | None:
        number = self.head if block_number is None else block_number
        if number > self.head:
            return None
        return {"header": {"number": number, "hash": await self.block_hash(number)}, "extrinsics": []}

    def _check_state(self, block_hash: str | None) -> None:
        """A pruning node answers only for its last ``kept_blocks`` blocks (as the real Substrate reports it)."""
        if block_hash is None or self.kept_blocks is None:
            return
        if self.head - int(block_hash, 16) > self.kept_blocks:
            raise chain_error_from_substrate_request(StateDiscardedError(block_hash))

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        assert (api, method) == ("SubnetInfoRuntimeApi", "get_metagraph")
        if params != [self.netuid]:
            return None
        n = len(self.hotkeys)
        return {
            "netuid": self.netuid,
            "block": self.head,
            "tempo": self.tempo,
            "last_step": 0,
            "blocks_since_last_step": 1,
            "owner_hotkey": self.hotkeys[0],
            "owner_coldkey": self.hotkeys[0],
            "network_registered_at": 0,
            "hotkeys": self.hotkeys,
            "coldkeys": self.coldkeys,
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
        self._check_state(block_hash)
        match name:
            case "Uids":
                hk = params[1]
                return self.hotkeys.index(hk) if hk in self.hotkeys else None
            case "CommitRevealWeightsEnabled":
                return self.commit_reveal
            case "WeightsSetRateLimit":
                return self.rate_limit
            case "LastUpdate":
                return self.last_update
            case "NetworksAdded":
                return params == [self.netuid]
            case "MinAllowedWeights":
                return self.min_allowed_weights
            case "MaxWeightsLimit":
                return self.max_weights_limit
            case "WeightsVersionKey":
                return self.weights_version
            case "SubnetEpochConsensus":
                return "Yuma"
            case "Tempo":
                return self.tempo
            case "RevealPeriodEpochs":
                return self.reveal_period
            case "LastEpochBlock" | "PendingEpochAt" | "SubnetEpochIndex" | "BlocksSinceLastStep":
                return 0
            case "Burn":
                return RAO
            case "CollateralLockShare":
                return 0
            case "Account":
                return {"nonce": 0, "data": {"free": 100 * RAO, "reserved": 0, "frozen": 0, "flags": 0}}
            case "NextKey":
                return MLKEM768_PUBLIC_KEY
            case "Now":
                block = self.head if block_hash is None else int(block_hash, 16)
                return 0 if block == 0 else GENESIS_MS + block * 12_000
        raise AssertionError(f"unexpected query {module}.{name}")

    async def query_map(
        self, module: str, name: str, params: list | None = None, block_hash: str | None = None
    ) -> list:
        self._check_state(block_hash)
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
        self.composed.append((call.module, call.function, call.params))
        return call

    async def mev_next_key(self) -> bytes | None:
        return await self.query("MevShield", "NextKey")

    async def account_next_index(self, address: str) -> int:
        return 0

    async def sign_extrinsic(self, call: Any, keypair: Any, *, nonce: int, period: int) -> tuple[bytes, str]:
        """Record the inner extrinsic of a shielded submission and apply it (the block author would)."""
        self.signed.append((call.module, call.function, call.params, keypair.ss58_address))
        self._apply(call, keypair.ss58_address)
        return f"signed:{call.function}".encode(), "0x" + "00" * 32

    async def estimate_fee(self, call: Any, keypair: Any) -> bt.Balance:
        return bt.Balance.from_rao(0)

    async def submit(self, call: Any, keypair: Any, **_: Any) -> bt.ExtrinsicResult:
        self.submitted.append((call.module, call.function, call.params))
        if (call.module, call.function) != ("MevShield", "submit_encrypted"):
            self._apply(call, keypair.ss58_address)
        return bt.ExtrinsicResult(True, "ok")

    def _apply(self, call: Any, who: str) -> None:
        if call.function == "set_mechanism_weights":
            uid = self.hotkeys.index(who)
            self.weights[uid] = list(zip(call.params["dests"], call.params["weights"], strict=True))
            self.last_update[uid] = self.head
        elif call.function == "commit_timelocked_mechanism_weights":
            self.last_update[self.hotkeys.index(who)] = self.head
        elif call.function == "set_commitment":
            # Stored as the node decodes it: BoundedVec<Data> comes back as a flat list of
            # one-key dicts, Raw bytes as 0x-hex strings.
            fields = [{k: "0x" + bytes(v).hex() for k, v in f.items()}
                      for entry in call.params["info"]["fields"] for f in entry]
            self.commitments[who] = {"block": self.head, "deposit": 0, "info": {"fields": fields}}
        elif call.function == "burned_register":
            self.hotkeys.append(call.params["hotkey"])
            self.coldkeys.append(who)
            self.stakes.append(0.0)
            self.last_update.append(self.head)
        else:
            raise AssertionError(f"unexpected call {call}")
