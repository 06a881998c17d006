"""Publisher selection and failover (``protocol.follow``): the pure rule, then followers over real stores.

The rule must give every node the same answer whenever it asks, so the property test
checks that no decision taken early is ever contradicted by one taken later.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from chain.local import LocalChain
from protocol.follow import (
    Follower,
    OwnStore,
    Proposal,
    decide,
    declared_validators,
    failover_order,
    publish_deadline,
    rank_validators,
    store_opener,
    validator_commitment,
    validator_url,
)
from protocol.global_model import GlobalModel
from protocol.hparams import HParams
from protocol.model import model_hash
from protocol.storage import LocalStorage, aggregate_key, proposal_key
from protocol.sync import AggregateMeta, apply_update, pack_aggregate, parse_aggregate, round_update
from protocol.windows import window_bounds
from testing.validator_sim import Clock, keypair

# ---------------------------------------------------------------------------- ranking


def test_ranking_by_stake_then_hotkey_needs_permit_and_validator_commitment() -> None:
    hotkeys = ["e", "b", "a", "c", "d", "f"]
    stakes = [10.0, 50.0, 50.0, 90.0, 99.0, 80.0]
    permits = [True, True, True, True, False, True]
    commitments = {"e": validator_commitment("file:///e"), "b": validator_commitment("file:///b"),
                   "a": validator_commitment("file:///a"), "d": validator_commitment("file:///d"),
                   "f": "file:///f"}  # c: no commitment; d: no permit; f: a miner's bare URL
    ranked = rank_validators(hotkeys, stakes, permits, commitments)
    assert [v.hotkey for v in ranked] == ["a", "b", "e"]  # the 50/50 tie goes to the lower hotkey
    assert ranked[0].storage_url == "file:///a"
    assert declared_validators(commitments) == {"a", "b", "d", "e"}
    assert validator_url("file:///f") is None and validator_url(None) is None and validator_url("validator:") is None


def test_failover_order_keeps_a_ranked_sticky_publisher_first() -> None:
    assert failover_order("c", ["a", "b", "c"]) == ["c", "a", "b"]
    assert failover_order("x", ["a", "b"]) == ["a", "b"]  # lost its permit or commitment: not eligible
    assert failover_order(None, ["a", "b"]) == ["a", "b"]


# ---------------------------------------------------------------------------- the rule

DEADLINE = 1000.0


def _look(statuses: dict[str, str], calls: list[str] | None = None):
    def look(hk: str) -> Proposal:
        if calls is not None:
            calls.append(hk)
        return Proposal(statuses[hk])  # type: ignore[arg-type]

    return look


def test_on_time_publisher_is_taken_at_once_without_reading_others() -> None:
    calls: list[str] = []
    d = decide(["p", "q"], _look({"p": "ok", "q": "ok"}, calls), now=DEADLINE - 500, deadline=DEADLINE)
    assert (d.kind, d.publisher, d.skipped) == ("chosen", "p", ()) and calls == ["p"]


@pytest.mark.parametrize("status", ["missing", "late", "invalid"])
def test_failed_publisher_waits_for_the_deadline_then_fails_over(status: str) -> None:
    statuses = {"p": status, "q": "ok", "r": "ok"}
    early = decide(["p", "q", "r"], _look(statuses), now=DEADLINE - 1, deadline=DEADLINE)
    assert early.kind == "wait"  # q is on time, but p may still publish: nobody may take q yet
    inside_settle = decide(["p", "q", "r"], _look(statuses), now=DEADLINE + 1, deadline=DEADLINE, settle_s=5)
    assert inside_settle.kind == "wait"
    late = decide(["p", "q", "r"], _look(statuses), now=DEADLINE + 6, deadline=DEADLINE, settle_s=5)
    assert (late.kind, late.publisher, late.reason) == ("chosen", "q", "failover")
    assert late.skipped == (("p", status),)


def test_unreachable_store_holds_the_decision_then_counts_as_missing() -> None:
    statuses = {"p": "unreachable", "q": "ok"}
    held = decide(["p", "q"], _look(statuses), now=DEADLINE + 50, deadline=DEADLINE, settle_s=5, unreachable_s=100)
    assert held.kind == "wait" and "unreachable" in held.reason
    moved = decide(["p", "q"], _look(statuses), now=DEADLINE + 106, deadline=DEADLINE, settle_s=5, unreachable_s=100)
    assert (moved.kind, moved.publisher) == ("chosen", "q")


def test_no_proposal_on_time_is_a_null_window() -> None:
    d = decide(["p", "q"], _look({"p": "late", "q": "missing"}), now=DEADLINE + 10, deadline=DEADLINE)
    assert (d.kind, d.publisher) == ("null", None) and [hk for hk, _ in d.skipped] == ["p", "q"]
    assert decide([], _look({}), now=DEADLINE + 10, deadline=DEADLINE).kind == "null"
    assert decide([], _look({}), now=DEADLINE - 10, deadline=DEADLINE).kind == "null"


def test_a_publisher_without_permit_is_passed_over_by_the_ranking() -> None:
    ranked = [v.hotkey for v in rank_validators(["p", "q"], [900.0, 100.0], [False, True],
                                                {"p": validator_commitment("file:///p"),
                                                 "q": validator_commitment("file:///q")})]
    d = decide(failover_order("p", ranked), _look({"q": "ok"}), now=0.0, deadline=DEADLINE)
    assert (d.kind, d.publisher) == ("chosen", "q")  # at once: p is not a candidate at all


def test_no_decision_is_ever_contradicted_later() -> None:
    """Proposals appear over time (write-once); any non-wait answer equals the final one."""
    rng = random.Random(7)
    for _ in range(2000):
        order = [f"v{i}" for i in range(rng.randint(1, 4))]
        arrive = {hk: rng.choice([None, rng.uniform(0, 2 * DEADLINE)]) for hk in order}
        broken = {hk: rng.random() < 0.2 for hk in order}

        def status_at(hk: str, t: float, arrive=arrive, broken=broken) -> str:
            at = arrive[hk]
            if at is None or at > t:
                return "missing"
            if broken[hk]:
                return "invalid"
            return "ok" if at <= DEADLINE else "late"

        final = decide(order, lambda hk: Proposal(status_at(hk, 1e9)), now=1e9, deadline=DEADLINE)  # type: ignore[arg-type]
        assert final.kind != "wait"
        for t in sorted(rng.uniform(0, 2 * DEADLINE) for _ in range(6)):
            d = decide(order, lambda hk, t=t: Proposal(status_at(hk, t)), now=t, deadline=DEADLINE)  # type: ignore[arg-type]
            if d.kind != "wait":
                assert (d.kind, d.publisher) == (final.kind, final.publisher), (order, arrive, broken, t)


# ---------------------------------------------------------------------------- followers over real stores

HP = HParams().override(**{"windows.blocks_per_window": 10, "windows.upload_grace_s": 2.0,
                           "windows.publish_timeout_s": 5.0, "outer.checkpoint_every": 3})
STAKES = {"v1": 1000.0, "v2": 700.0, "v3": 500.0}


class Net:
    """A local chain with three validators (stakes 1000/700/500) and their stores."""

    def __init__(self, root: Path) -> None:
        self.clock = Clock(float(int(time.time())))
        self.chain = LocalChain.create(root / "chain.db", block_time_s=1.0, weights_rate_limit=0, clock=self.clock)
        self.keys = {name: keypair(f"follow-{name}") for name in STAKES}
        self.stores = {name: LocalStorage(root / name) for name in STAKES}
        for name, stake in STAKES.items():
            self.chain.register(self.keys[name], 1)
            self.chain.stake(self.keys[name], stake)
            self.chain.commit(self.keys[name], 1, validator_commitment(f"file://{root / name}"))
        self.opener = store_opener(allow_local=True)

    def hotkey(self, name: str) -> str:
        return str(self.keys[name].ss58_address)

    def follower(self, name: str | None) -> Follower:
        own = OwnStore(self.hotkey(name), self.stores[name], self.keys[name]) if name else None
        return Follower(HP, self.chain, 1, open_store=self.opener, own=own)

    def at(self, window: int, offset_s: float) -> None:
        """Set the clock to ``offset_s`` after window's end plus grace (negative: before)."""
        end = self.chain.block_timestamp(window_bounds(window, HP.windows).end_block)
        self.clock.now = end + HP.windows.upload_grace_s + offset_s

    def deadline(self, window: int) -> float:
        return publish_deadline(self.chain.block_timestamp(window_bounds(window, HP.windows).end_block), HP)

    def propose(self, name: str, model: GlobalModel, *, seed: int, claim: str | None = None) -> bytes:
        """Store ``name``'s proposal for ``model.window``: a small random step."""
        g = torch.Generator().manual_seed(seed)
        update = round_update({n: (torch.arange(0, t.numel(), 97),
                                   1e-3 * torch.randn(len(range(0, t.numel(), 97)), generator=g))
                               for n, t in model.state.items()})
        nxt = model.copy()
        apply_update(nxt.state, update)
        meta = AggregateMeta(window=model.window, base_model_hash=model.hash,
                             result_model_hash=claim or model_hash(nxt.state), validator=self.hotkey(name),
                             spec_version=HP.spec_version)
        data = pack_aggregate(update, meta, self.keys[name], shapes=model.shapes)
        self.stores[name].put(proposal_key(model.window), data)
        stamp = self.clock.now  # the store's clock is the simulated one
        os.utime(self.stores[name].root / proposal_key(model.window), (stamp, stamp))
        return data


def test_followers_share_one_model_through_failover_and_null_windows(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.at(0, -10)
    genesis = net.follower("v1").publish_genesis(0)
    v = {name: net.follower(name) for name in STAKES}
    miner = net.follower(None)
    models = {name: v[name].advance(None, 0) for name in STAKES}
    miner_model = miner.advance(None, 0)
    assert {m.hash for m in [*models.values(), miner_model]} == {genesis.hash}
    assert miner_model.publisher is None  # the first window goes to the top of the ranking

    # Window 0: the publisher (v1) proposes on time; v2 proposes too. Everyone takes v1's at once.
    net.at(0, 0.5)
    p1 = net.propose("v1", models["v1"], seed=1)
    net.propose("v2", models["v2"], seed=2)
    for name in STAKES:
        models[name] = v[name].advance(models[name], 1)
    miner_model = miner.advance(miner_model, 1)
    assert {m.window for m in [*models.values(), miner_model]} == {1}
    assert len({m.hash for m in [*models.values(), miner_model]}) == 1
    for name in STAKES:  # every validator keeps the applied bytes, signed by their publisher
        assert net.stores[name].get(aggregate_key(0), max_bytes=1 << 30) == p1

    # Window 1: v1 dies. v2 and v3 propose; nobody moves before the deadline, then all take v2's.
    net.at(1, 1.0)
    p2 = net.propose("v2", models["v2"], seed=3)
    net.propose("v3", models["v3"], seed=4)
    assert miner.advance(miner_model, 2).window == 1 and miner.status.state == "waiting"
    net.clock.now = net.deadline(1) + 6.0
    for name in ("v2", "v3"):
        models[name] = v[name].advance(models[name], 2)
    miner_model = miner.advance(miner_model, 2)
    assert models["v2"].hash == models["v3"].hash == miner_model.hash and miner_model.window == 2
    assert miner_model.publisher == net.hotkey("v2") and miner.status.failovers == 1
    assert parse_aggregate(net.stores["v3"].get(aggregate_key(1), max_bytes=1 << 30), shapes=genesis.shapes,
                           max_bytes=1 << 30)[0].validator == net.hotkey("v2")

    # v1 restarts: its late proposal for 1 does not count; it catches up and follows v2 in window 2.
    net.at(2, 0.5)
    net.propose("v1", models["v1"], seed=5)  # a proposal for window 1, stored long after its deadline
    models["v1"] = net.follower("v1").advance(None, 2)
    assert models["v1"].hash == miner_model.hash and models["v1"].publisher == net.hotkey("v2")
    net.propose("v1", models["v1"], seed=6)
    p3 = net.propose("v2", models["v2"], seed=7)
    for name in STAKES:
        models[name] = v[name].advance(models[name], 3)
    assert {m.hash for m in models.values()} == {models["v2"].hash}
    assert net.stores["v1"].get(aggregate_key(2), max_bytes=1 << 30) == p3 != p2

    # Window 3: nobody proposes in time: a null window, theta unchanged, the top validator publishes next.
    net.clock.now = net.deadline(3) + 6.0
    before = models["v2"].hash
    for name in STAKES:
        models[name] = v[name].advance(models[name], 4)
    assert {m.hash for m in models.values()} == {before} and models["v2"].window == 4
    assert models["v2"].publisher is None and v["v2"].status.null_windows == 1

    # A validator that joins now starts from v1's checkpoint (window 3) and replays the copies.
    joiner_store = LocalStorage(tmp_path / "joiner")
    joiner_key = keypair("follow-joiner")
    joiner = Follower(HP, net.chain, 1, open_store=net.opener, own=OwnStore(joiner_key.ss58_address, joiner_store,
                                                                             joiner_key))
    net.clock.now = net.deadline(6) + 10  # long after: windows 3 and 4 are history
    net.propose("v1", models["v1"], seed=8)  # window 4, v1 is the top of the ranking again
    joined = joiner.advance(None, 5)
    models["v1"] = v["v1"].advance(models["v1"], 5)
    assert joined.hash == models["v1"].hash and joined.window == 5
    assert joiner_store.stat("checkpoints/0000000003.safetensors").size > 0  # its own history starts there


def test_a_proposal_that_lies_about_its_result_is_skipped_and_theta_kept(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.at(0, -10)
    net.follower("v1").publish_genesis(0)
    miner = net.follower(None)
    model = miner.advance(None, 0)
    base = {k: t.clone() for k, t in model.state.items()}
    net.at(0, 0.5)
    net.propose("v1", model, seed=1, claim="f" * 64)
    good = net.propose("v2", model, seed=2)
    assert miner.advance(model, 1).window == 0  # v1 is invalid, but only the deadline lets v2 in
    assert all(torch.equal(model.state[k], base[k]) for k in base)  # the failed apply was undone
    net.clock.now = net.deadline(0) + 6.0
    model = miner.advance(model, 1)
    assert model.window == 1 and model.publisher == net.hotkey("v2")
    assert model.hash == parse_aggregate(good, shapes=model.shapes, max_bytes=1 << 30)[0].result_model_hash


def test_a_stale_publisher_is_passed_over_and_the_next_one_publishes(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.at(0, -10)
    net.follower("v1").publish_genesis(0)
    miner = net.follower(None)
    decisions: dict[int, Any] = {}
    miner.on_decision = lambda w, d, _m: decisions.__setitem__(w, d)
    theta0 = miner.advance(None, 0)
    net.at(0, 0.5)
    net.propose("v1", theta0, seed=1)
    theta1 = miner.advance(theta0.copy(), 1)
    # Window 1: v1 is stuck on theta_0 and proposes on top of it again; v3 follows and is on time.
    net.at(1, 0.5)
    stale = theta0.copy()
    stale.window = 1
    net.propose("v1", stale, seed=2)
    net.propose("v3", theta1, seed=3)
    assert miner.advance(theta1, 2).window == 1  # before the deadline nobody passes v1 over
    net.clock.now = net.deadline(1) + 6.0
    theta2 = miner.advance(theta1, 2)
    assert theta2.window == 2 and theta2.publisher == net.hotkey("v3")  # v2 proposed nothing
    skipped = dict(decisions[1].skipped)
    assert skipped[net.hotkey("v1")].startswith("invalid: extends") and skipped[net.hotkey("v2")] == "missing"
