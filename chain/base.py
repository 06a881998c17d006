"""The chain interface every other package codes against, and its shared value types.

Miners and validators need very little from a chain: the time (blocks and when they
were produced), who is on the subnet (the metagraph), a way to join (register), a place
to announce where their deltas live (commitments) and a way to pay (weights). Keeping
the interface this small is what lets one embedded SQLite chain stand in for Bittensor in
development, demos and tests, while the real network is reached through the SDK. The
methods are synchronous on purpose: callers are training loops and scoring loops, not
async servers, and the Bittensor backend hides its event loop behind them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Chain",
    "ChainError",
    "ChainTimeoutError",
    "ChainUnavailableError",
    "InvalidWeightsError",
    "Metagraph",
    "NoValidatorPermitError",
    "NotRegisteredError",
    "RateLimitedError",
    "SubnetFullError",
    "SubnetNotFoundError",
    "SubnetParams",
    "WalletError",
    "coldkey_address",
    "conform_weights",
    "hotkey_address",
    "seconds_per_block",
]

#: Subtensor's fixed-point one: ``MaxWeightsLimit`` is a fraction of it (65535 = no cap).
U16_MAX = 65535
#: Subtensor's target block time; used only when the chain cannot be asked.
NOMINAL_BLOCK_TIME_S = 12.0
#: How far back :func:`seconds_per_block` measures: far enough to average out a late block,
#: well inside the ~256 blocks of state a pruning node keeps.
BLOCK_TIME_LOOKBACK = 32


class ChainError(RuntimeError):
    """Base class of every error the chain layer raises; the message says what to do."""


class ChainUnavailableError(ChainError):
    """The chain endpoint (or local chain file) could not be reached after retries."""


class ChainTimeoutError(ChainError):
    """A wait (for a block, for inclusion) ran out of time."""


class NotRegisteredError(ChainError):
    """The hotkey is not registered on the subnet."""


class NoValidatorPermitError(ChainError):
    """The hotkey holds no validator permit, so the chain ignores or rejects its weights."""


class RateLimitedError(ChainError):
    """Weights were set too recently; ``retry_after_blocks`` says how long to wait."""

    def __init__(self, message: str, retry_after_blocks: int = 0) -> None:
        super().__init__(message)
        self.retry_after_blocks = retry_after_blocks


class InvalidWeightsError(ChainError):
    """Weights the chain would reject: unknown uids, mismatched lengths, negatives, old version key."""


class SubnetFullError(ChainError):
    """Every uid of the subnet is taken and still immune from pruning."""


class SubnetNotFoundError(ChainError):
    """No subnet with that netuid exists on this chain."""


class WalletError(ChainError):
    """A wallet or key file is missing or unreadable."""


@dataclass(frozen=True)
class Metagraph:
    """One consistent snapshot of a subnet, indexed by uid (``uids[i]`` owns every ``x[i]``).

    Stakes, incentive, dividends and emission are plain floats (alpha for stake and
    emission, [0, 1] fractions for incentive and dividends) so scoring code never has
    to know about rao or fixed-point encodings.
    """

    netuid: int
    block: int
    uids: list[int]
    hotkeys: list[str]
    coldkeys: list[str]
    stakes: list[float]
    validator_permit: list[bool]
    last_update: list[int]
    incentive: list[float]
    dividends: list[float]
    emission: list[float]
    consensus: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.uids)

    def uid_of(self, hotkey: str) -> int | None:
        """The uid registered to ``hotkey``, or None when it is not on the subnet."""
        for uid, hk in zip(self.uids, self.hotkeys, strict=True):
            if hk == hotkey:
                return uid
        return None


    def validators(self) -> list[int]:
        """Uids holding a validator permit."""
        return [u for u, p in zip(self.uids, self.validator_permit, strict=True) if p]


@dataclass(frozen=True)
class SubnetParams:
    """The subnet hyper-parameters that decide when, how and what a validator may send as weights.

    Read from the chain, never assumed: a subnet owner changes them at any time, and a set
    that ignores one is refused (too early, too old a version key, too few weights) or
    rewritten by the SDK (the max-weight clip) so that the chain holds something other
    than what the validator recorded.

    * ``tempo``: blocks between Yuma epochs; only the weights on chain at an epoch count.
    * ``weights_rate_limit``: blocks a hotkey waits after its ``last_update`` before the
      next set (subtensor counts from registration too).
    * ``weights_version``: the lowest ``version_key`` the chain accepts.
    * ``commit_reveal_enabled`` / ``commit_reveal_period``: weights go on chain as a
      timelocked commit, revealed (and counted) that many epochs later.
    * ``max_weights_limit``: subtensor's ``MaxWeightsLimit``, a **u16 fraction**, not a
      count of uids: no weight may exceed ``max_weights_limit / 65535`` of the row's sum
      (65535 = no cap). :attr:`max_weight_fraction` is that fraction.
    * ``min_allowed_weights``: the fewest non-zero weights a set may carry.
    """

    netuid: int
    tempo: int
    weights_rate_limit: int
    weights_version: int
    commit_reveal_enabled: bool
    commit_reveal_period: int
    max_weights_limit: int
    min_allowed_weights: int

    @property
    def max_weight_fraction(self) -> float:
        """The largest share of a row's sum one weight may have (1.0: no cap)."""
        return self.max_weights_limit / U16_MAX

    def next_set_block(self, last_update: int) -> int:
        """The first block at which a hotkey last updated at ``last_update`` may set weights again.

        A ``last_update`` of 0 (never set, genesis registration) is not rate limited, the way
        subtensor and the SDK's preflight treat it.
        """
        return last_update + self.weights_rate_limit if last_update > 0 else 0


@runtime_checkable
class Chain(Protocol):
    """What miners and validators may ask of a chain.

    Shaped around three needs and nothing else:

    * **Time.** Windows are counted in blocks, and upload lateness is judged against
      the wall-clock time of window boundaries, hence ``block_timestamp``.
    * **Membership.** ``metagraph`` is one read of everything scoring needs (uids,
      hotkeys, stake, permits, last update, and Yuma's outputs), so a validator sees a
      single consistent snapshot instead of stitching several reads together.
    * **Signals.** Commitments carry where a miner's deltas live; weights carry a
      validator's scores. Writes take the hotkey keypair that signs them, never a
      coldkey: nodes must run without coldkey access. ``subnet_params`` says when and
      what the chain accepts as weights (rate limit, version key, caps, commit-reveal).

    Every failure is a :class:`ChainError` subclass, so callers can retry on
    ``RateLimitedError``/``ChainUnavailableError`` and fail fast on the rest.
    """

    def block(self) -> int:
        """The current block number."""
        ...

    def block_timestamp(self, block: int) -> float:
        """Unix seconds at which ``block`` was (or will be, on the local chain) produced."""
        ...

    def block_time_s(self) -> float:
        """The chain's nominal seconds per block (a constant of the chain, the same for every node)."""
        ...

    def block_hash(self, block: int) -> str:
        """``0x``-prefixed hex hash of a produced block; :class:`ChainError` for one not produced yet.

        Unknowable before its block: the validators' common, public random beacon
        (``protocol.windows.beacon_block``).
        """
        ...

    def wait_for_block(self, block: int, timeout_s: float) -> int:
        """Block until the chain reaches ``block``; return the block reached.

        Raises :class:`ChainTimeoutError` after ``timeout_s`` seconds.
        """
        ...

    def metagraph(self, netuid: int) -> Metagraph:
        """A snapshot of the subnet; raises :class:`SubnetNotFoundError` when absent."""
        ...

    def register(self, keypair_or_wallet: Any, netuid: int) -> int:
        """Register a hotkey (a ``Keypair`` or an SDK ``Wallet``) and return its uid."""
        ...

    def commit(self, hotkey_keypair: Any, netuid: int, data: str) -> None:
        """Publish ``data`` as this hotkey's commitment on the subnet (replaces the previous one)."""
        ...

    def commitments(self, netuid: int) -> dict[str, str]:
        """Hotkey -> latest commitment, for hotkeys registered on the subnet."""
        ...

    def set_weights(
        self, hotkey_keypair: Any, netuid: int, uids: list[int], weights: list[float], version_key: int
    ) -> None:
        """Set this validator's weights (normalised by the chain)."""
        ...

    def weights(self, netuid: int) -> dict[int, dict[int, float]]:
        """Validator uid -> {miner uid: normalised weight}."""
        ...

    def subnet_params(self, netuid: int) -> SubnetParams:
        """The subnet's weight-setting hyper-parameters at the head; :class:`SubnetNotFoundError` when absent."""
        ...


def conform_weights(uids: list[int], weights: list[float], params: SubnetParams) -> tuple[list[int], list[float]]:
    """The weights as the chain will hold them, computed before anything is recorded or sent.

    Uses the SDK's own two steps, in the order that makes them stable (the SDK's ``SetWeights``
    then leaves the result as it is, so what a caller records is what is sent):

    1. drop weights the SDK's u16 ``normalize`` would drop (zero, or under half a step of
       the largest), and
    2. ``clip_to_max_weight``: no weight above ``params.max_weight_fraction`` of the sum, the
       excess spread over the others (the chain's ``MaxWeightsLimit`` is a share, not a uid
       count, so nothing is cut off). Clipping lowers only the largest weights, so step 1
       stays done.

    Returns uids ascending with weights summing to 1. Raises :class:`InvalidWeightsError`
    where no clip can help: fewer non-zero weights than ``min_allowed_weights``, or too few
    uids to keep every share under the cap. (A validator's lone self-weight, exempt from both
    on chain, is not a case a validator sends.)
    """
    from bittensor.intents.weights import clip_to_max_weight, normalize

    pairs = sorted((int(u), float(w)) for u, w in zip(uids, weights, strict=True) if w > 0)
    kept, _ = normalize([u for u, _ in pairs], [w for _, w in pairs]) if pairs else ([], [])
    given = dict(pairs)
    values = [given[u] for u in kept]
    if len(kept) < max(1, params.min_allowed_weights):
        raise InvalidWeightsError(f"{len(kept)} non-zero weights; subnet {params.netuid} requires at least "
                                  f"{params.min_allowed_weights} (MinAllowedWeights)")
    cap = params.max_weight_fraction
    if cap < 1.0:
        if len(kept) * cap < 1.0:
            raise InvalidWeightsError(f"subnet {params.netuid} caps one weight at {cap:.4f} of a row "
                                      f"(MaxWeightsLimit): {len(kept)} uids cannot share it")
        values = clip_to_max_weight(values, cap)
    total = sum(values)
    return list(kept), [v / total for v in values]


def hotkey_address(keypair_or_wallet: Any) -> str:
    """The hotkey ss58 of a Keypair, an SDK Wallet, or a plain address string."""
    if isinstance(keypair_or_wallet, str):
        return keypair_or_wallet
    if hasattr(keypair_or_wallet, "ss58_address"):
        return str(keypair_or_wallet.ss58_address)
    if hasattr(keypair_or_wallet, "hotkey"):
        try:
            return str(keypair_or_wallet.hotkey.ss58_address)
        except Exception as exc:
            raise WalletError(f"cannot read the hotkey of {keypair_or_wallet!r}: {exc}") from exc
    raise TypeError(f"expected a Keypair, Wallet or ss58 address, got {type(keypair_or_wallet).__name__}")


def coldkey_address(keypair_or_wallet: Any) -> str:
    """The coldkey ss58 of a Wallet (public file only); a bare hotkey is its own coldkey."""
    if hasattr(keypair_or_wallet, "coldkeypub") and not hasattr(keypair_or_wallet, "ss58_address"):
        try:
            return str(keypair_or_wallet.coldkeypub.ss58_address)
        except Exception as exc:
            raise WalletError(f"cannot read the coldkeypub of {keypair_or_wallet!r}: {exc}") from exc
    return hotkey_address(keypair_or_wallet)


def seconds_per_block(chain: Chain, *, lookback: int = BLOCK_TIME_LOOKBACK,
                      fallback: float = NOMINAL_BLOCK_TIME_S) -> float:
    """Seconds per block, measured between the head and a block ``lookback`` blocks before it.

    Durations must never be measured from block 0: on subtensor the genesis block has no
    timestamp (``Timestamp.Now`` is 0 there, so a "window" would last ~1.7e9 s), and a
    pruning node has discarded the state of all but its last few hundred blocks, so reading
    it fails. Two recent blocks give the real pace; ``fallback`` covers a chain that cannot
    answer (or is too young to measure).
    """
    try:
        head = chain.block()
        back = max(1, head - max(1, lookback))  # never block 0, whose timestamp is 0
        if head <= back:
            return fallback
        elapsed = chain.block_timestamp(head) - chain.block_timestamp(back)
    except ChainError:
        return fallback
    per_block = elapsed / (head - back)
    return per_block if math.isfinite(per_block) and per_block > 0 else fallback
