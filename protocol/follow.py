"""One model for the whole subnet: whose aggregate defines theta_{W+1}, and how every node follows it.

Every validator scores window W against the same theta_W and puts its own signed outer step
for W at ``proposal_key(W)`` in its store. Exactly one proposal becomes the aggregate that
every node, miners and validators alike, applies. The rule is deterministic, so every
node reaches the same answer from the chain and the stores alone:

1. **Ranking.** Validators are hotkeys whose commitment declares the validator role
   (``validator:<storage url>``) and that hold a validator permit, ordered by stake
   (highest first, ties by hotkey).
2. **Sticky publisher.** The publisher of W is whoever published W-1's aggregate (its
   signer, carried by the hash-chained history itself), as long as it is still ranked.
   At genesis and after a null window it is the top of the ranking.
3. **Deadline.** A proposal counts only if its store timestamp is at most
   ``deadline(W) = end of W + upload_grace_s + publish_timeout_s``.
4. **Failover.** Nodes take the publisher's proposal as soon as it is there and on time.
   If it is not there by the deadline (or does not extend theta_W, or is invalid), they
   take the next validator in the ranking whose proposal is on time and extends theta_W,
   and that validator is the publisher from then on: a publisher that comes back is a
   follower. A lower-ranked proposal is never taken before the deadline has passed, so a
   node never has to undo a choice.
5. **Null window.** If no proposal is on time, theta_{W+1} = theta_W and rule 2 starts
   afresh from the top of the ranking.

Each validator then copies the chosen bytes (signed by their publisher) to its own
``aggregate_key(W)``, and writes checkpoints of the shared theta it signs itself. That copy
is the history a node replays when it starts, restarts or falls behind more than
``live_windows``; live windows are decided from the proposals directly. :func:`decide` is
the pure rule; :class:`Follower` does the reading, applying and copying.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from protocol.global_model import (
    GlobalModel,
    OutOfSync,
    checkpoint_bytes,
    latest_checkpoint_window,
    load_checkpoint,
)
from protocol.hparams import HParams
from protocol.storage import (
    ObjectNotFound,
    Storage,
    StorageError,
    aggregate_key,
    checkpoint_key,
    proposal_key,
)
from protocol.sync import AggregateMeta, SyncError, pack_aggregate, parse_aggregate
from protocol.windows import window_bounds, window_of

__all__ = [
    "ChainView",
    "Decision",
    "FollowStatus",
    "Follower",
    "OwnStore",
    "Proposal",
    "ValidatorInfo",
    "decide",
    "declared_validators",
    "failover_order",
    "publish_deadline",
    "rank_validators",
    "store_opener",
    "validator_commitment",
    "validator_url",
]

log = logging.getLogger(__name__)

VALIDATOR_PREFIX = "validator:"
SETTLE_S = 5.0  # allowance for store clocks against chain time before a missing proposal counts as missing
LIVE_WINDOWS = 2  # windows this recent are decided from proposals; older ones replay the copied history


# ---------------------------------------------------------------------------- ranking


def validator_commitment(storage_url: str) -> str:
    """What a validator commits on chain: its role and the store holding its proposals and history."""
    return VALIDATOR_PREFIX + storage_url


def validator_url(commitment: str | None) -> str | None:
    """The storage URL of a validator commitment; None for a miner's (a bare URL) or none."""
    if commitment and commitment.startswith(VALIDATOR_PREFIX):
        return commitment.removeprefix(VALIDATOR_PREFIX) or None
    return None


def declared_validators(commitments: Mapping[str, str]) -> set[str]:
    """Hotkeys that declared the validator role: they publish, so they are never scored as miners."""
    return {hk for hk, c in commitments.items() if validator_url(c)}


@dataclass(frozen=True)
class ValidatorInfo:
    hotkey: str
    stake: float
    storage_url: str


def rank_validators(hotkeys: Sequence[str], stakes: Sequence[float], permits: Sequence[bool],
                    commitments: Mapping[str, str]) -> list[ValidatorInfo]:
    """Validators that may publish: declared role and a permit, by stake (highest first), ties by hotkey."""
    out = []
    for hotkey, stake, permit in zip(hotkeys, stakes, permits, strict=True):
        url = validator_url(commitments.get(hotkey))
        if permit and url:
            out.append(ValidatorInfo(hotkey, float(stake), url))
    return sorted(out, key=lambda v: (-v.stake, v.hotkey))


def store_opener(*, allow_local: bool, opener: Callable[[str], Storage] | None = None) -> Callable[[str], Storage]:
    """Open (once per URL) the stores validators committed; a URL that may not be read is a StorageError."""
    from protocol.storage_open import open_storage

    open_ = opener or open_storage
    cache: dict[str, Storage] = {}

    def get(url: str) -> Storage:
        if url not in cache:
            if url.partition("://")[0].lower() == "file" and not allow_local:
                raise StorageError("policy", None, "file:// stores are followed only on a local network")
            try:
                cache[url] = open_(url)
            except (ValueError, ImportError) as exc:
                raise StorageError("policy", None, str(exc)) from None
        return cache[url]

    return get


def failover_order(sticky: str | None, ranking: Sequence[str]) -> list[str]:
    """The sticky publisher first (if still ranked), then the ranking."""
    if sticky is not None and sticky in ranking:
        return [sticky, *(hk for hk in ranking if hk != sticky)]
    return list(ranking)


# ---------------------------------------------------------------------------- the rule

ProposalStatus = Literal["ok", "missing", "late", "invalid", "unreachable"]


@dataclass(frozen=True)
class Proposal:
    """What a node sees of one validator's proposal for the window being decided."""

    status: ProposalStatus
    detail: str = ""


@dataclass(frozen=True)
class Decision:
    """``chosen`` (``publisher``'s proposal), ``null`` (none on time) or ``wait`` (not decidable yet)."""

    kind: Literal["chosen", "null", "wait"]
    publisher: str | None = None
    reason: str = ""
    skipped: tuple[tuple[str, str], ...] = ()  # (hotkey, why) passed over before the choice


def decide(order: Sequence[str], look: Callable[[str], Proposal], *, now: float, deadline: float,
           settle_s: float = SETTLE_S, unreachable_s: float = 0.0) -> Decision:
    """The first validator in ``order`` whose proposal is on time and extends theta_W.

    A validator is passed over only once ``now`` is past the deadline (plus ``settle_s``),
    so every node that decides reaches the same answer whenever it asks. A store that
    cannot be read at all holds the decision up for ``unreachable_s`` more.
    """
    final = now >= deadline + settle_s
    skipped: list[tuple[str, str]] = []
    for hotkey in order:
        p = look(hotkey)
        if p.status == "ok":
            return Decision("chosen", hotkey, "on time" if not skipped else "failover", tuple(skipped))
        if not final:
            return Decision("wait", hotkey, f"{hotkey[:8]}: {p.status} before the deadline", tuple(skipped))
        if p.status == "unreachable" and now < deadline + settle_s + unreachable_s:
            return Decision("wait", hotkey, f"{hotkey[:8]}: store unreachable ({p.detail})", tuple(skipped))
        skipped.append((hotkey, p.status if not p.detail else f"{p.status}: {p.detail}"))
    return Decision("null", None, "no proposal on time" if order else "no ranked validator", tuple(skipped))


def publish_deadline(window_end_time: float, hp: HParams) -> float:
    """Latest store time at which a proposal for the window still counts."""
    return window_end_time + hp.windows.upload_grace_s + hp.windows.publish_timeout_s


# ---------------------------------------------------------------------------- the follower


class ChainView(Protocol):
    """The little a follower reads from a chain (``chain.base.Chain`` satisfies it)."""

    def block(self) -> int: ...
    def block_timestamp(self, block: int) -> float: ...
    def metagraph(self, netuid: int) -> Any: ...
    def commitments(self, netuid: int) -> dict[str, str]: ...


@dataclass
class OwnStore:
    """A validator's own store: it copies every applied aggregate there and signs checkpoints."""

    hotkey: str
    storage: Storage
    keypair: Any


@dataclass
class FollowStatus:
    """What a node last knew about the shared model (served by metrics, logs and ``/health``)."""

    state: Literal["starting", "following", "waiting", "stalled"] = "starting"
    window: int | None = None
    model_hash: str | None = None
    publisher: str | None = None  # who publishes the next aggregate
    detail: str = ""
    failovers: int = 0
    null_windows: int = 0

    @property
    def in_sync(self) -> bool:
        return self.state in ("following", "waiting")


@dataclass
class Follower:
    """Brings a node's theta to a target window by :func:`decide` and the validators' histories."""

    hp: HParams
    chain: ChainView
    netuid: int
    open_store: Callable[[str], Storage]
    own: OwnStore | None = None
    max_bytes: int = 8 << 30
    live_windows: int = LIVE_WINDOWS
    status: FollowStatus = field(default_factory=FollowStatus)
    on_decision: Callable[[int, Decision, GlobalModel], None] | None = None  # with theta_{W+1}
    _ranking: tuple[int, list[ValidatorInfo]] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ public

    def ranking(self) -> list[ValidatorInfo]:
        """The ranked validators, read again when the chain moves to a new block (nodes poll often)."""
        block = self.chain.block()
        if self._ranking is None or self._ranking[0] != block:
            meta = self.chain.metagraph(self.netuid)
            self._ranking = (block, rank_validators(meta.hotkeys, meta.stakes, meta.validator_permit,
                                                    self.chain.commitments(self.netuid)))
        return self._ranking[1]

    def advance(self, model: GlobalModel | None, target: int) -> GlobalModel:
        """theta as close to ``target`` as the decided history allows (never past it).

        Raises :class:`OutOfSync` when there is nothing to start from (no checkpoint anywhere).
        """
        ranking = self.ranking()
        try:
            if model is None or model.window > target:
                model = self._bootstrap(target, ranking)
            current = window_of(self.chain.block(), self.hp.windows)
            while model.window < target:
                w = model.window
                if current - w > self.live_windows:  # old: what was decided is in the validators' history
                    if self._replay(model, ranking):
                        continue
                    if self.any_history(ranking, target, after=w):  # a gap in the copies: jump over it
                        model = self._bootstrap(target, ranking, after=w)
                        continue
                # Live: the publisher's own copy is its decision (the same bytes as its proposal when
                # that was on time), so a node need not wait for anything else.
                if model.publisher is not None and self._replay(model, ranking, only=model.publisher):
                    continue
                decision = self._decide(model, ranking)
                if decision.kind == "wait":
                    self._set("waiting", model, decision.reason)
                    return model
                self._note(w, decision, model)
            self._set("following", model, "")
        except (OutOfSync, StorageError, SyncError) as exc:
            self._set("stalled", model, str(exc))
            if model is None:
                raise OutOfSync(str(exc)) from exc
        return model

    # ------------------------------------------------------------------ steps

    def _bootstrap(self, target: int, ranking: Sequence[ValidatorInfo], *, after: int = -1) -> GlobalModel:
        """The newest checkpoint (past ``after``) of this node's own store, else of the highest-ranked validator."""
        problems = []
        for hotkey, store in self._sources(ranking):
            try:
                newest = latest_checkpoint_window(store(), target)
                if newest is None or newest <= after:
                    continue
                model = load_checkpoint(self.hp, store(), hotkey, target, self.max_bytes)
            except (OutOfSync, SyncError, StorageError) as exc:
                problems.append(f"{hotkey[:8]}: {exc}")
                continue
            log.info("starting from %s's checkpoint of window %d (%s)", hotkey[:8], model.window, model.hash[:12])
            self._checkpoint(model, force=True)  # this node's own history then starts here too
            return model
        raise OutOfSync("no validator has a usable checkpoint at or before window "
                        f"{target}" + (f" ({'; '.join(problems)})" if problems else ""))

    def _replay(self, model: GlobalModel, ranking: Sequence[ValidatorInfo], *, only: str | None = None) -> bool:
        """Apply the aggregate of ``model.window`` from a validator's copied history; False if none has it.

        ``only`` restricts the sources to this node's own store and that validator's.
        """
        w = model.window
        for hotkey, store in self._sources(ranking):
            if only is not None and hotkey != only and (self.own is None or hotkey != self.own.hotkey):
                continue
            try:
                data = store().get(aggregate_key(w), max_bytes=self.max_bytes)
                model.step(data, max_bytes=self.max_bytes)
            except ObjectNotFound:
                continue
            except (StorageError, SyncError, OutOfSync) as exc:
                log.warning("window %d: %s's history unusable: %s", w, hotkey[:8], exc)
                continue
            self._copy(w, data)
            self._checkpoint(model)
            return True
        return False

    def _decide(self, model: GlobalModel, ranking: Sequence[ValidatorInfo]) -> Decision:
        """Apply :func:`decide` for ``model.window`` and, unless it says wait, move theta on."""
        w = model.window
        by_hotkey = {v.hotkey: v for v in ranking}
        order = failover_order(model.publisher, [v.hotkey for v in ranking])
        end = self.chain.block_timestamp(window_bounds(w, self.hp.windows).end_block)
        deadline = publish_deadline(end, self.hp)
        now = self.chain.block_timestamp(self.chain.block())
        seen: dict[str, Proposal] = {}
        fetched: dict[str, bytes] = {}

        def look(hotkey: str) -> Proposal:
            if hotkey not in seen:
                seen[hotkey], data = self._look(by_hotkey[hotkey], w, model, deadline)
                if data is not None:
                    fetched[hotkey] = data
            return seen[hotkey]

        while True:
            decision = decide(order, look, now=now, deadline=deadline,
                              unreachable_s=self.hp.windows.publish_timeout_s)
            if decision.kind != "chosen":
                break
            hotkey = decision.publisher or ""
            try:
                model.step(fetched[hotkey], max_bytes=self.max_bytes, publisher=hotkey)
            except (SyncError, OutOfSync) as exc:  # claims a result it does not give
                seen[hotkey] = Proposal("invalid", str(exc))
                continue
            self._copy(w, fetched[hotkey])
            self._checkpoint(model)
            return decision
        if decision.kind == "null":
            base = model.hash
            model.window, model.publisher = w + 1, None
            self._copy_null(w, base)
            self._checkpoint(model)
        return decision

    def _look(self, v: ValidatorInfo, w: int, model: GlobalModel, deadline: float) -> tuple[Proposal, bytes | None]:
        key = proposal_key(w)
        try:
            store = self._store(v)
            info = store.stat(key)
            if info.uploaded_at > deadline:
                return Proposal("late", f"stored {info.uploaded_at - deadline:.1f}s after the deadline"), None
            data = store.get(key, max_bytes=self.max_bytes)
            meta, _ = parse_aggregate(data, shapes=model.shapes, max_bytes=self.max_bytes, publisher=v.hotkey)
        except ObjectNotFound:
            return Proposal("missing"), None
        except SyncError as exc:
            return Proposal("invalid", exc.reason), None
        except StorageError as exc:
            return Proposal("unreachable", type(exc).__name__), None
        if meta.window != w or meta.base_model_hash != model.hash:
            return Proposal("invalid", f"extends {meta.base_model_hash[:12]} of window {meta.window}"), None
        return Proposal("ok"), data

    def _note(self, w: int, decision: Decision, model: GlobalModel) -> None:
        if decision.kind == "null":
            self.status.null_windows += 1
            log.warning("window %d: no proposal on time (%s); theta unchanged", w,
                        ", ".join(f"{hk[:8]} {why}" for hk, why in decision.skipped) or decision.reason)
        elif decision.skipped:
            self.status.failovers += 1
            log.warning("window %d: failover to %s (%s)", w, (decision.publisher or "")[:8],
                        ", ".join(f"{hk[:8]} {why}" for hk, why in decision.skipped))
        if self.on_decision:
            self.on_decision(w, decision, model)

    # ------------------------------------------------------------------ own store

    def _copy(self, w: int, data: bytes) -> None:
        if self.own is not None and not _exists(self.own.storage, aggregate_key(w)):
            self.own.storage.put(aggregate_key(w), data)

    def _copy_null(self, w: int, base_hash: str) -> None:
        if self.own is None or _exists(self.own.storage, aggregate_key(w)):
            return
        meta = AggregateMeta(window=w, base_model_hash=base_hash, result_model_hash=base_hash,
                             validator=self.own.hotkey, spec_version=self.hp.spec_version, null=True)
        self.own.storage.put(aggregate_key(w), pack_aggregate({}, meta, self.own.keypair))

    def _checkpoint(self, model: GlobalModel, *, force: bool = False) -> bool:
        """Sign and store a checkpoint of the shared theta when due (never twice)."""
        if self.own is None or (not force and model.window % self.hp.outer.checkpoint_every):
            return False
        if _exists(self.own.storage, checkpoint_key(model.window)):
            return False
        self.own.storage.put(checkpoint_key(model.window), checkpoint_bytes(
            model, validator_hotkey=self.own.hotkey, spec_version=self.hp.spec_version, keypair=self.own.keypair))
        return True

    def publish_genesis(self, window: int) -> GlobalModel:
        """Start the subnet's history: the initial weights as theta_window, signed by this validator."""
        if self.own is None:
            raise OutOfSync("only a validator can publish the genesis checkpoint")
        # No sticky publisher: the first window goes to the top of the ranking, so two validators
        # that both start the history at the same window still agree on every later step.
        model = GlobalModel.initial(self.hp, window=window)
        model.genesis_window = window
        self._checkpoint(model, force=True)
        return model

    def any_history(self, ranking: Iterable[ValidatorInfo], at_most: int, *, after: int = -1) -> bool:
        """Whether this node's own store or a ranked validator's has a checkpoint in (``after``, ``at_most``]."""
        for _hotkey, store in self._sources(ranking):
            try:
                newest = latest_checkpoint_window(store(), at_most)
            except StorageError:
                continue
            if newest is not None and newest > after:
                return True
        return False

    # ------------------------------------------------------------------ helpers

    def _sources(self, ranking: Iterable[ValidatorInfo]) -> list[tuple[str, Callable[[], Storage]]]:
        """This node's own store first, then the ranked validators' (opened when first read)."""
        out: list[tuple[str, Callable[[], Storage]]] = []
        if self.own is not None:
            own = self.own.storage
            out.append((self.own.hotkey, lambda: own))
        for v in ranking:
            if self.own is None or v.hotkey != self.own.hotkey:
                out.append((v.hotkey, lambda v=v: self._store(v)))
        return out

    def _store(self, v: ValidatorInfo) -> Storage:
        if self.own is not None and v.hotkey == self.own.hotkey:
            return self.own.storage
        return self.open_store(v.storage_url)

    def _set(self, state: Any, model: GlobalModel | None, detail: str) -> None:
        s = self.status
        if state == "stalled" and (s.state, s.detail) != (state, detail):
            log.warning("cannot follow the subnet's model: %s", detail)
        elif s.state == "stalled" and state != "stalled":
            log.info("following the subnet's model again (window %s)", model.window if model else None)
        s.state, s.detail = state, detail
        if model is not None:
            s.window, s.model_hash, s.publisher = model.window, model.hash, model.publisher


def _exists(storage: Storage, key: str) -> bool:
    try:
        storage.stat(key)
        return True
    except ObjectNotFound:
        return False
