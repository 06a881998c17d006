"""Score one window end to end: collect, Stage 1, Stage 2, scores, aggregate, persist, weights.

``score_window(ctx, W)`` is the whole pipeline as named steps; each step lives in its own
module (collect, stage1, evaluate, combine, publish) and this file only wires them.

theta_W comes from the subnet's shared history (``protocol.follow``): this validator scores
its own view of the peers (its own secret seed and random pages) against the same model as
every other node, proposes its outer step, and the follower rule decides whose proposal
every node applies.

Crash safety (a ``kill -9`` at any line): the window's secret seed is stored when the
window is opened, so a redo draws the same random pages; the proposal for W, once
stored, is final (other nodes may already have applied it), so a redo re-uses it
instead of storing a different one; everything the window decides is written by one
``mark_window_scored`` transaction, which is a no-op for a window already scored; and a
weight set is claimed in the DB (unique per window) *before* the extrinsic is sent.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from chain.base import Chain, ChainError, Metagraph
from protocol import faults
from protocol.codec import CodecConfig
from protocol.follow import Follower, declared_validators, publish_deadline
from protocol.global_model import GlobalModel, OutOfSync
from protocol.hparams import HParams
from protocol.peer_storage import EndpointPolicy
from protocol.storage import Storage
from protocol.windows import beacon_block, window_bounds
from protocol.wire import Signer
from scoring.final import PeerState, is_banned
from scoring.weights import compute_weights
from validator import metrics
from validator.collect import StorageCache, WindowTimes, collect_window
from validator.combine import WindowScores, combine_window
from validator.db import repo
from validator.evaluate import EvalResult
from validator.publish import publish_proposal
from validator.receipts import build_receipts, evaluation_setup
from validator.stage1 import SketchHistory, Stage1Result, run_stage1
from validator.stage2 import Beacon, Stage2Plan, Stage2Runner, budget_end, plan_stage2

log = logging.getLogger(__name__)


@dataclass
class Carry:
    """What one window leaves for the next, in memory only (a restart rebuilds it from the stores)."""

    model: GlobalModel | None = None  # theta at the last window followed
    recent_hashes: dict[str, int] = field(default_factory=dict)  # model hash -> window of that theta
    history: SketchHistory | None = None  # copy sketches of earlier windows' uploads
    follow_recorded: tuple[object, ...] = ()  # the follow status last written to the database
    weights_due: int | None = None  # a window whose due weight set a chain error kept unclaimed


@dataclass(frozen=True)
class ValidatorContext:
    """The validator's dependencies: connections and configuration, built once by ``validator.app``.

    Frozen: nothing here changes while the validator runs. What a window leaves for the next
    (theta, recent model hashes, copy sketches) is the one mutable part, :class:`Carry`.
    """

    hp: HParams
    chain: Chain
    netuid: int
    keypair: Signer  # sr25519 hotkey Keypair; signs aggregates and checkpoints, sets weights
    own_storage: Storage  # where this validator stores its proposals, the shared history and checkpoints
    sessions: sessionmaker[Session]
    stage2: Stage2Runner
    codec_cfg: CodecConfig
    follower: Follower
    allow_local_storage: bool = False  # miners' file:// / http / private stores (GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE)
    per_peer_timeout_s: float = 30.0
    is_leader: Callable[[], bool] = lambda: True  # may this process set weights now?
    stores: StorageCache = field(default=None)  # type: ignore[assignment]  # None: built from allow_local_storage
    carry: Carry = field(default_factory=Carry)

    def __post_init__(self) -> None:
        if self.stores is None:  # built here so the policy can never disagree with allow_local_storage
            object.__setattr__(self, "stores", StorageCache(policy=EndpointPolicy(allow_private=self.allow_local_storage)))

    @property
    def hotkey(self) -> str:
        return str(self.keypair.ss58_address)


@dataclass(frozen=True)
class WindowReport:
    window: int
    scored: bool
    num_submitted: int = 0
    num_evaluated: int = 0
    aggregate_peers: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def window_times(chain: Chain, window: int, hp: HParams) -> WindowTimes:
    b = window_bounds(window, hp.windows)
    return WindowTimes(start=chain.block_timestamp(b.start_block), end=chain.block_timestamp(b.end_block))


class ModelNotReady(RuntimeError):
    """theta_W is not decided yet (or this validator cannot follow the subnet's history)."""


def advance_model(ctx: ValidatorContext, target: int) -> GlobalModel | None:
    """Move theta towards ``target`` as far as the decided history allows; None if there is nothing yet."""
    carry = ctx.carry
    try:
        carry.model = model = ctx.follower.advance(carry.model, target)
    except OutOfSync as exc:
        log.warning("cannot follow the subnet's model: %s", exc)
        return None
    carry.recent_hashes[model.hash] = model.window
    for old in [h for h, w in carry.recent_hashes.items() if w < model.window - ctx.hp.scoring.sync_max_behind]:
        del carry.recent_hashes[old]
    return model


def ensure_model(ctx: ValidatorContext, window: int) -> GlobalModel:
    """theta_W, from memory or the subnet's history; :class:`ModelNotReady` until it is decided."""
    model = advance_model(ctx, window)
    if model is None or model.window != window:
        status = ctx.follower.status
        raise ModelNotReady(f"theta_{window} not reached (at {model.window if model else None}: "
                            f"{status.state} {status.detail})")
    return model


def miner_hotkeys(meta: Metagraph, commitments: dict[str, str]) -> dict[str, int]:
    """The hotkeys scored as miners (-> uid): not declared validators, nor permit holders without a miner URL.

    A permit alone does not make a validator: on a subnet with fewer neurons than validator
    slots every neuron holds one, miners included, and those still commit their store.
    """
    validators = declared_validators(commitments)
    return {hk: uid for uid, hk, permit in zip(meta.uids, meta.hotkeys, meta.validator_permit, strict=True)
            if hk not in validators and not (permit and hk not in commitments)}


def window_beacon(chain: Chain, window: int, hp: HParams) -> Beacon:
    """The window's public beacon (``protocol.windows.beacon_block``); :class:`ModelNotReady` until it is readable."""
    block = beacon_block(window, hp.windows, chain.block_time_s())
    try:
        return Beacon(block, bytes.fromhex(chain.block_hash(block).removeprefix("0x")))
    except (ChainError, ValueError) as exc:
        raise ModelNotReady(f"the beacon of window {window} (block {block}) is not readable yet: {exc}") from exc


def open_window_seed(ctx: ValidatorContext, window: int, base_hash: str) -> bytes:
    """The window's secret seed: drawn once, stored before use, re-used by a redo."""
    with ctx.sessions() as s:
        row = repo.open_window(s, window=window, base_model_hash=base_hash,
                               random_seed_hex=secrets.token_bytes(32).hex())
        return bytes.fromhex(row.random_seed_hex or "")


def load_peers(ctx: ValidatorContext, hotkeys: list[str]) -> dict[str, PeerState]:
    with ctx.sessions() as s:
        return {hk: repo.peer_state(repo.peer(s, hotkey=hk)) for hk in hotkeys}


def peer_records(outcome: WindowScores, hp: HParams) -> dict[str, repo.PeerRecord]:
    """What the window stores per peer: its new state and the weight its score now implies (``scoring.weights``)."""
    uids = {hk: p.uid for hk, p in outcome.peers.items() if p.uid is not None}
    weights = compute_weights({uid: outcome.peers[hk].state.score for hk, uid in uids.items()}, hp.weights)
    return {hk: repo.PeerRecord(p.uid, p.state, weights.get(p.uid, 0.0) if p.uid is not None else 0.0)
            for hk, p in outcome.peers.items()}


def score_window(ctx: ValidatorContext, window: int) -> WindowReport:
    """Run the whole pipeline for ``window`` (which must be closed); idempotent."""
    with ctx.sessions() as s:
        row = repo.get_window(s, window=window)
        if row is not None and row.is_final:
            return WindowReport(window, scored=False)
    timings: dict[str, float] = {}
    with metrics.timed("sync", timings):
        model = ensure_model(ctx, window)
        seed = open_window_seed(ctx, window, model.hash)
        beacon = window_beacon(ctx.chain, window, ctx.hp)
    with metrics.timed("collect", timings):
        meta, commitments = ctx.chain.metagraph(ctx.netuid), ctx.chain.commitments(ctx.netuid)
        hotkeys = {hk: uid for hk, uid in miner_hotkeys(meta, commitments).items() if hk != ctx.hotkey}
        times = window_times(ctx.chain, window, ctx.hp)
        collected = collect_window(window, hotkeys=hotkeys, commitments=commitments, times=times, hp=ctx.hp,
                                   allow_local_storage=ctx.allow_local_storage,
                                   per_peer_timeout_s=ctx.per_peer_timeout_s, stores=ctx.stores)
    prev = load_peers(ctx, list(hotkeys))
    with metrics.timed("stage1", timings):
        banned = [hk for hk, p in prev.items() if is_banned(p, window)]
        s1 = run_stage1(collected, window=window, hp=ctx.hp, shapes=model.shapes, cfg=ctx.codec_cfg,
                        recent_hashes=ctx.carry.recent_hashes, banned=banned, history=ctx.carry.history,
                        copy_seed=int.from_bytes(seed[:8], "little"))
        for c in collected.values():  # Stage 1 keeps the parsed encodings; the raw bytes are not needed again
            c.data = None
    with metrics.timed("stage2", timings):
        plan: Stage2Plan = plan_stage2(window, s1, hp=ctx.hp, seed=seed, beacon=beacon, num_pages=ctx.stage2.num_pages,
                                       collected=collected, prev_scores={hk: p.score for hk, p in prev.items()})
        deadline = budget_end(ctx.stage2.clock(), publish_deadline(times.end, ctx.hp), ctx.hp)
        results = ctx.stage2.run(model, plan, deadline=deadline)
    with metrics.timed("score", timings):
        outcome = combine_window(window, prev=prev, stage1=s1, results=results, hp=ctx.hp,
                                 unevaluated=plan.unevaluated)
    with metrics.timed("aggregate", timings):
        published = publish_proposal(ctx.own_storage, ctx.keypair, window, model, s1, outcome, ctx.hp)
    faults.point("after_publish")  # restart tests kill the process here (testing.faults)
    with metrics.timed("persist", timings):
        receipts = build_receipts(window, s1, plan, results, outcome, prev=prev, base_hash=model.hash,
                                  seed_hex=seed.hex(), setup=evaluation_setup(ctx.hp, ctx.stage2.pages))
        records = peer_records(outcome, ctx.hp)
        for r in receipts:
            r.weight = records[r.hotkey].weight
        with ctx.sessions() as s:
            stored = repo.mark_window_scored(
                s, window=window, evaluations=receipts, peers=records,
                aggregate_hash=published.aggregate_hash, random_seed_hex=seed.hex(), base_model_hash=model.hash,
                stage_timings=timings, num_submitted=sum(1 for c in collected.values() if c.size is not None),
                num_evaluated=len(results))
    ctx.stage2.forget(window)
    advance_model(ctx, window + 1)  # take theta_{W+1} now if it is already decided (this validator publishes)
    _count(window, stored, s1, results)
    return WindowReport(window, stored, sum(1 for c in collected.values() if c.size is not None), len(results),
                        len(published.peers), timings)


def _count(window: int, stored: bool, s1: Stage1Result, results: Mapping[str, EvalResult]) -> None:
    if not stored:
        return
    metrics.WINDOWS_SCORED.inc()
    metrics.PEERS_EVALUATED.inc(len(results))
    metrics.LAST_SCORED_WINDOW.set(window)
    for rej in s1.rejected.values():
        metrics.REJECTIONS.labels(reason=rej.reason).inc()
    log.info("window %d scored: %d evaluated, %d rejected/missing", window, len(results), len(s1.rejected))


def skip_window(ctx: ValidatorContext, window: int) -> WindowReport:
    """Close a window too old to evaluate: no proposal, no receipts; theta follows the others' decision."""
    model = ensure_model(ctx, window)
    seed = open_window_seed(ctx, window, model.hash)
    with ctx.sessions() as s:
        stored = repo.mark_window_scored(s, window=window, random_seed_hex=seed.hex(), base_model_hash=model.hash,
                                         stage_timings={"skipped": 1.0})
    log.warning("window %d closed without evaluation (too far behind)", window)
    return WindowReport(window, stored)
