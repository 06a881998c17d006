"""The Bittensor backend: the :class:`chain.base.Chain` interface over the bittensor SDK.

Everything goes through the SDK's ``SyncClient`` and its ``Substrate`` seam: reads are
the SDK's typed reads (``subnets.metagraph``, ``subnets.commitments``, ``weights.weights``),
writes are the SDK's ``SetWeights`` intent and a raw hotkey-signed
``Commitments.set_commitment`` call. ``SetWeights`` does the u16 conversion itself (the
SDK's ``normalize``: largest weight to 65535, zeros dropped, after clipping to the subnet's
``MaxWeightsLimit``) and reads ``CommitRevealWeightsEnabled`` at the head on every call, so
a subnet that turns commit-reveal on gets timelocked commits from the next set. Passing ``substrate=`` swaps the
transport for any implementation of the SDK's ``Substrate`` protocol; the tests use an
in-memory fake, so this module is exercised without a node.

``subnet_params`` reads the hyper-parameters through the SDK's own table of them
(``bittensor.hyperparams.STORAGE_ITEMS``: name -> storage item), all at one block. These are
the very storage items ``SetWeights`` preflights (``WeightsSetRateLimit``,
``CommitRevealWeightsEnabled``, ``MaxWeightsLimit``, ``MinAllowedWeights``, ``Tempo``,
``RevealPeriodEpochs``), so what the validator plans with is what the SDK then enforces.
The SDK's one-call ``subnet_hyperparameters`` read is not used: it needs the
``get_subnet_hyperparams_v3`` runtime API, which the recorded runtime (spec 343) lacks, and
it returns every parameter where seven are needed.

Failures are translated once, here: SDK error codes become ``chain.base`` errors, and
transport failures are retried with exponential backoff before becoming a
``ChainUnavailableError`` that names the endpoint.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from chain.base import (
    ChainError,
    ChainTimeoutError,
    ChainUnavailableError,
    InvalidWeightsError,
    Metagraph,
    NotRegisteredError,
    NoValidatorPermitError,
    RateLimitedError,
    SubnetNotFoundError,
    SubnetParams,
    coldkey_address,
    hotkey_address,
)
from chain.wallets import unlock_coldkey

__all__ = [
    "BittensorChain",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
U16_MAX = 65535
MAX_COMMITMENT_BYTES = 128  # the Commitments pallet's largest Raw field
#: SubnetParams field -> the SDK's hyper-parameter name (its key in ``hyperparams.STORAGE_ITEMS``).
SUBNET_PARAM_NAMES = {
    "tempo": "tempo",
    "weights_rate_limit": "weights_rate_limit",
    "weights_version": "weights_version",
    "commit_reveal_enabled": "commit_reveal_weights_enabled",
    "commit_reveal_period": "commit_reveal_period",
    "max_weights_limit": "max_weights_limit",
    "min_allowed_weights": "min_allowed_weights",
}
_RETRY_IN = re.compile(r"Retry in ~(\d+) blocks")


def _translate(exc: Exception) -> ChainError:
    """Map an SDK ChainError (by its ErrorCode) to the interface's error classes."""
    from bittensor.result import ErrorCode

    code = getattr(exc, "code", None)
    message = str(exc)
    if code == ErrorCode.RATE_LIMITED:  # the SDK's preflight says how long: "Retry in ~N blocks"
        wait = _RETRY_IN.search(message)
        return RateLimitedError(message, int(wait.group(1)) if wait else 0)
    if code == ErrorCode.NOT_REGISTERED:
        return NotRegisteredError(message)
    if code == ErrorCode.NOT_AUTHORIZED or "permit" in message.lower():
        return NoValidatorPermitError(message)
    if code == ErrorCode.SUBNET_NOT_EXISTS:
        return SubnetNotFoundError(message)
    if code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.LIMIT_EXCEEDED):
        return InvalidWeightsError(message)
    return ChainError(message)


class BittensorChain:
    """A :class:`chain.base.Chain` on a subtensor node (local, test or finney)."""

    def __init__(
        self,
        network: str = "finney",
        *,
        substrate: Any = None,
        retries: int = 4,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        block_time_s: float | None = None,
    ) -> None:
        import bittensor as bt

        self.network = network
        # Pin the client to one endpoint for ws:// URLs: falling back to public nodes
        # from a private node's config would be a surprise.
        pinned = network.startswith(("ws://", "wss://"))
        self._client = bt.SyncClient(
            network, substrate=substrate,
            fallback_endpoints=[] if pinned else None, archive_endpoints=[] if pinned else None,
        )
        self.endpoint = self._client.endpoint
        self._retries, self._backoff_s, self._sleep = retries, backoff_s, sleep
        self._block_time_s = block_time_s

    def close(self) -> None:
        self._client.close()

    # --- error handling -------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries on transport failures; translate chain errors."""
        import bittensor as bt

        delay = self._backoff_s
        for attempt in range(self._retries + 1):
            try:
                return fn()
            except TimeoutError:
                raise  # a wait that ran out is not a transport failure (TimeoutError is an OSError)
            except (bt.RpcConnectionError, bt.ConnectionNotReady, ConnectionError, OSError) as exc:
                if attempt == self._retries:
                    raise ChainUnavailableError(
                        f"{what}: chain endpoint {self.endpoint} unreachable after {attempt + 1} attempts: {exc}"
                    ) from exc
                self._sleep(delay)
                delay *= 2
            except bt.ChainError as exc:
                raise _translate(exc) from exc
        raise AssertionError("unreachable")

    # --- time ---------------------------------------------------------------------------

    def block(self) -> int:
        return int(self._call("block", lambda: self._client.block))

    def block_time_s(self) -> float:
        if self._block_time_s is None:
            self._block_time_s = float(self._call("block time", self._client.block_time))
        return self._block_time_s

    def block_timestamp(self, block: int) -> float:
        """The block's ``Timestamp.Now``; extrapolated from the head where the chain has none to give.

        Three cases have no readable timestamp: a block not produced yet, the genesis block
        (its ``Timestamp.Now`` is 0) and a block whose state a pruning node has discarded
        (older than its last few hundred blocks, e.g. a window being caught up after downtime).
        Subtensor's slots are fixed, so head time minus whole blocks is accurate to a block.
        """
        head = self.block()
        if block >= head:
            return self._timestamp(head) + (block - head) * self.block_time_s()
        try:
            stamp = self._timestamp(block)
        except ChainUnavailableError:
            raise
        except ChainError as exc:
            log.warning("no timestamp for block %d on %s (%s); extrapolating from the head", block,
                        self.endpoint, exc)
            stamp = 0.0
        if stamp > 0:
            return stamp
        return self._timestamp(head) - (head - block) * self.block_time_s()

    def block_hash(self, block: int) -> str:
        """The block's hash from its header (the SDK's ``block_info``)."""
        info = self._call("block hash", lambda: self._client.block_info(block))
        if info is None or not info.hash:
            raise ChainError(f"block {block} has not been produced yet (or {self.endpoint} no longer has it)")
        return str(info.hash)

    def _timestamp(self, block: int) -> float:
        return float(self._call("timestamp", lambda: self._client.timestamp(block)).timestamp())

    def wait_for_block(self, block: int, timeout_s: float) -> int:
        try:
            header = self._call("wait for block", lambda: self._client.wait_for_block(block, timeout=timeout_s))
        except TimeoutError as exc:
            raise ChainTimeoutError(f"block {block} not reached within {timeout_s}s on {self.endpoint}") from exc
        return int(header.number)

    # --- reads ---------------------------------------------------------------------------

    def metagraph(self, netuid: int) -> Metagraph:
        mg = self._call("metagraph", lambda: self._client.subnets.metagraph(netuid, commitments=False))
        if mg is None:
            raise SubnetNotFoundError(f"subnet {netuid} does not exist on {self.endpoint}")
        ns = mg.neurons
        return Metagraph(
            netuid=netuid, block=int(mg.block), uids=[n.uid for n in ns], hotkeys=[n.hotkey for n in ns],
            coldkeys=[n.coldkey for n in ns], stakes=[_amount(n.total_stake) for n in ns],
            validator_permit=[bool(n.validator_permit) for n in ns], last_update=[n.last_update for n in ns],
            incentive=[n.incentive for n in ns], dividends=[n.dividends for n in ns],
            emission=[_amount(n.emission) for n in ns], consensus=[n.consensus for n in ns],
        )

    def commitments(self, netuid: int) -> dict[str, str]:
        found = self._call("commitments", lambda: self._client.subnets.commitments(netuid))
        # Only registered hotkeys: a deregistered miner's old announcement is stale.
        return {hk: c.data for hk, c in found.items() if c.uid is not None and c.data}

    def weights(self, netuid: int) -> dict[int, dict[int, float]]:
        """The SDK's weights read (u16 rows as fractions of their sum), positive weights only.

        The SDK keeps a row's zero entries and rows that are all zero; the interface promises
        only the weights a validator actually gives, so those are dropped here.
        """
        rows = self._call("weights", lambda: self._client.weights.weights(netuid))
        out: dict[int, dict[int, float]] = {}
        for uid, row in rows.items():
            given = {int(d): float(w) for d, w in row.items() if w > 0}
            if given:
                out[int(uid)] = given
        return out

    def subnet_params(self, netuid: int) -> SubnetParams:
        """The weight-setting hyper-parameters, read at one block through the SDK's storage table."""
        from bittensor.hyperparams import STORAGE_ITEMS

        def read() -> dict[str, Any] | None:
            at = self._client.at()  # one block for every read: no mix of before and after an owner's change
            if not at.query(("SubtensorModule", "NetworksAdded"), [netuid]):
                return None
            return {field: at.query(STORAGE_ITEMS[name], [netuid]) for field, name in SUBNET_PARAM_NAMES.items()}

        raw = self._call("subnet params", read)
        if raw is None:
            raise SubnetNotFoundError(f"subnet {netuid} does not exist on {self.endpoint}")
        return SubnetParams(
            netuid=netuid, tempo=int(raw["tempo"] or 0), weights_rate_limit=int(raw["weights_rate_limit"] or 0),
            weights_version=int(raw["weights_version"] or 0),
            commit_reveal_enabled=bool(raw["commit_reveal_enabled"]),
            commit_reveal_period=int(raw["commit_reveal_period"] or 0),
            # The SDK's preflight reads a missing cap as none (65535); so does this.
            max_weights_limit=U16_MAX if raw["max_weights_limit"] is None else int(raw["max_weights_limit"]),
            min_allowed_weights=int(raw["min_allowed_weights"] or 0),
        )

    # --- writes -------------------------------------------------------------------------

    def _submit(self, what: str, fn: Callable[[], Any]) -> Any:
        result = self._call(what, fn)
        if not result.success:
            err = result.error
            raise _translate(err) if err is not None else ChainError(f"{what} failed: {result.message}")
        return result

    def register(self, keypair_or_wallet: Any, netuid: int) -> int:
        """The hotkey's uid; registers it (burned registration, signed by the coldkey) if needed."""
        import bittensor as bt

        hot = hotkey_address(keypair_or_wallet)
        uid = self._call("uid lookup", lambda: self._client.query(("SubtensorModule", "Uids"), [netuid, hot]))
        if uid is not None:
            return int(uid)
        # ``coldkey_file`` first: on an SDK Wallet, merely touching ``.coldkey`` decrypts (and prompts).
        has_coldkey = hasattr(keypair_or_wallet, "coldkey_file") or hasattr(keypair_or_wallet, "coldkey")
        if not has_coldkey or coldkey_address(keypair_or_wallet) == hot:
            raise NotRegisteredError(
                f"hotkey {hot} is not registered on subnet {netuid}; registering costs TAO and needs the "
                "coldkey: pass a Wallet or run `btcli subnets register`")
        # The coldkey pays and signs; the hotkey is only the call's argument. Handing the SDK the
        # unlocked coldkey keypair (not the wallet) makes that explicit and fails before any RPC
        # when the coldkey cannot be unlocked.
        coldkey = unlock_coldkey(keypair_or_wallet)
        self._submit("register", lambda: self._client.execute(
            bt.BurnedRegister(netuid=netuid, hotkey_ss58=hot), coldkey))
        uid = self._call("uid lookup", lambda: self._client.query(("SubtensorModule", "Uids"), [netuid, hot]))
        if uid is None:
            raise ChainError(f"registration of {hot} on subnet {netuid} was included but no uid was assigned")
        return int(uid)

    def commit(self, hotkey_keypair: Any, netuid: int, data: str) -> None:
        import bittensor as bt

        raw = data.encode()
        if len(raw) > MAX_COMMITMENT_BYTES:
            raise ChainError(f"commitment is {len(raw)} bytes; the chain stores at most {MAX_COMMITMENT_BYTES}")
        call = bt.calls.Commitments.set_commitment(netuid=netuid, info={"fields": [[{f"Raw{len(raw)}": raw}]]})
        self._submit("commit", lambda: self._client.submit_call(call, hotkey_keypair, signer="hotkey"))

    def set_weights(self, hotkey_keypair: Any, netuid: int, uids: list[int], weights: list[float],
                    version_key: int) -> None:
        import bittensor as bt

        if len(uids) != len(weights) or not uids:
            raise InvalidWeightsError("uids and weights must be non-empty and of equal length")
        intent = bt.SetWeights(netuid=netuid, uids=list(uids), weights=[float(w) for w in weights],
                               version_key=version_key)
        result = self._submit("set_weights", lambda: self._client.execute(intent, hotkey_keypair))
        # The SDK chose the path from CommitRevealWeightsEnabled at the head; a timelocked commit
        # carries its drand reveal round, and nothing is readable on chain until then.
        reveal_round = (result.data or {}).get("reveal_round")
        if reveal_round is not None:
            log.info("weights committed on subnet %d (commit-reveal): revealed at drand round %s", netuid,
                     reveal_round)
        else:
            log.info("weights set on subnet %d (plaintext, %d uids)", netuid, len(uids))


def _amount(balance: Any) -> float:
    """Alpha or TAO as a float: metagraph stake and emission are subnet alpha (1e9 rao each)."""
    return int(balance.rao) / 1e9
