"""Weight setting against the subnet's hyper-parameters: rate limit, version key, caps, retries.

``validator.setweights`` on the embedded local chain (which enforces what ``subnet_params``
advertises) and, for commit-reveal and the SDK's own max-weight clip, on the Bittensor backend
over ``tests.unit.fake_substrate``. Scores are written straight into the validator's database,
so no window is scored here: what is tested is only what happens between scores and chain.

Run: ``pytest tests/unit/test_validator_setweights.py -q``
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bittensor.intents.weights import normalize
from bittensor.sp_core import Keypair

from chain.base import U16_MAX, ChainUnavailableError, InvalidWeightsError, RateLimitedError, SubnetParams
from chain.bittensor_chain import BittensorChain
from chain.local import LocalChain
from protocol.hparams import HParams
from protocol.settings import load_settings
from testing import validator_sim as sim
from tests.unit.fake_substrate import FakeSubstrate
from validator import metrics, setweights
from validator.app import RunOptions, build_context
from validator.db import repo, weight_repo
from validator.db.models import WeightSet
from validator.window import ValidatorContext

HP = HParams().override(**{"windows.blocks_per_window": 10, "weights.set_every_windows": 1})
MINERS = 4


def _ctx(tmp: Path, chain: Any, keypair: Any, hp: HParams = HP) -> ValidatorContext:
    settings = load_settings(None, home=tmp / "home", database_url=f"sqlite:///{tmp / 'v.db'}",
                             storage=f"file://{tmp / 'vstore'}")
    return build_context(settings, hp, options=RunOptions(allow_local_storage=True), chain=chain, keypair=keypair,
                         pages=sim.RandomPages(num_pages=8, page_seqs=2, seq_len=16))


def _scores(ctx: ValidatorContext, hotkeys: list[str], scores: list[float]) -> None:
    with ctx.sessions() as s:
        for hk, score in zip(hotkeys, scores, strict=True):
            repo.upsert_peer(s, hotkey=hk, score=score)


class Net:
    """A local chain (validator uid 0, staked; ``MINERS`` miners) on a clock, and the validator's context."""

    def __init__(self, tmp: Path, hp: HParams = HP, **chain_params: Any) -> None:
        self.clock = sim.Clock(1_000_000.0)
        self.chain = LocalChain.create(tmp / "chain.db", block_time_s=1.0, tempo=10, clock=self.clock,
                                       **{"weights_rate_limit": 0, **chain_params})
        self.validator = sim.keypair("validator")
        self.miners = sim.make_miners(tmp / "miners", MINERS)
        sim.register_all(self.chain, 1, self.validator, self.miners)
        self.ctx = _ctx(tmp, self.chain, self.validator, hp)
        _scores(self.ctx, [m.keypair.ss58_address for m in self.miners], [4.0, 3.0, 2.0, 1.0])
        self.sends: list[list[int]] = []
        real = self.chain.set_weights

        def counted(kp: Any, netuid: int, uids: list[int], weights: list[float], version_key: int) -> None:
            self.sends.append(list(uids))
            real(kp, netuid, uids, weights, version_key)

        self.chain.set_weights = counted  # type: ignore[method-assign]

    def at_block(self, block: int) -> None:
        self.clock.now = self.chain.block_timestamp(block) + 0.5

    def failing(self, times: int, exc: Exception) -> None:
        """The next ``times`` sends raise ``exc`` (counted as sends) before reaching the chain."""
        counted, left = self.chain.set_weights, [times]

        def flaky(*args: Any) -> None:
            if left[0] > 0:
                left[0] -= 1
                self.sends.append(list(args[2]))
                raise exc
            counted(*args)

        self.chain.set_weights = flaky  # type: ignore[method-assign]

    def row(self) -> WeightSet:
        with self.ctx.sessions() as s:
            row = weight_repo.latest_weight_set(s)
            assert row is not None
            s.expunge(row)
            return row

    def on_chain(self) -> dict[int, float]:
        return self.chain.weights(1).get(0, {})


def _outcome(name: str) -> float:
    return metrics.WEIGHTS_SET.labels(outcome=name)._value.get()


def _db_share(row: WeightSet) -> dict[int, float]:
    total = sum(row.weights)
    return {int(u): w / total for u, w in zip(row.uids, row.weights, strict=True)}


# ----------------------------------------------------------------------------- rate limit


def test_a_set_inside_the_rate_limit_waits_and_is_sent_on_a_later_pass(tmp_path: Path) -> None:
    net = Net(tmp_path, weights_rate_limit=20)
    net.at_block(5)
    net.chain.set_weights(net.validator, 1, [1], [1.0], 1)  # an earlier set: last_update 5, next allowed at 25
    net.sends.clear()
    net.at_block(12)  # window 1, due
    assert not setweights.maybe_set_weights(net.ctx, 1)
    row = net.row()
    assert row.tx_status == "pending" and net.sends == []  # waited: no send, no failure recorded
    assert row.tx_detail == "wait block 12 retry 25: weights rate limit: last update at block 5 + 20 blocks"
    net.at_block(24)
    assert not setweights.resend_unsent(net.ctx) and net.sends == []  # still inside it
    net.at_block(25)
    assert setweights.resend_unsent(net.ctx)
    row = net.row()
    assert row.tx_status == "success" and net.sends == [[1, 2, 3, 4]]
    assert row.tx_detail.splitlines()[-1] == "#1 block 25: success"
    assert net.on_chain() == pytest.approx(_db_share(row))


def test_a_rate_limited_answer_from_the_chain_is_a_wait_not_a_failure(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.at_block(12)
    net.failing(1, RateLimitedError("too soon", 3))
    assert not setweights.maybe_set_weights(net.ctx, 1)
    assert net.row().tx_status == "pending" and "wait block 12 retry 15: RateLimitedError" in net.row().tx_detail
    net.at_block(14)
    assert not setweights.resend_unsent(net.ctx) and len(net.sends) == 1
    net.at_block(15)
    assert setweights.resend_unsent(net.ctx) and net.row().tx_status == "success"
    assert net.row().tx_detail.splitlines()[-1] == "#1 block 15: success"  # the wait was no send


# ----------------------------------------------------------------------------- version key


def test_weights_version_above_the_spec_version_is_refused_with_one_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    net = Net(tmp_path, weights_version=HP.spec_version + 1)
    net.at_block(12)
    before = _outcome("version_too_old")
    with caplog.at_level(logging.ERROR, logger="validator.setweights"):
        assert not setweights.maybe_set_weights(net.ctx, 1)
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"spec_version {HP.spec_version}" in error.getMessage()
    assert f"weights_version {HP.spec_version + 1}" in error.getMessage()
    assert "Upgrade the validator" in error.getMessage()
    row = net.row()
    assert row.tx_status == "failed" and "Upgrade the validator" in (row.tx_detail or "")
    assert _outcome("version_too_old") == before + 1
    assert net.sends == [] and net.on_chain() == {}
    assert not setweights.resend_unsent(net.ctx) and net.sends == []  # nothing left to retry


# ----------------------------------------------------------------------------- what the chain will hold


def test_weights_are_fitted_to_max_weights_limit_before_the_claim(tmp_path: Path) -> None:
    cap = int(0.3 * U16_MAX)  # a share of the row: no miner above 30%
    net = Net(tmp_path, max_weights_limit=cap)
    net.at_block(12)
    assert setweights.maybe_set_weights(net.ctx, 1)  # the local chain refuses a set over the cap
    row = net.row()
    share = _db_share(row)
    assert max(share.values()) <= cap / U16_MAX + 1e-9
    assert sum(row.weights) == pytest.approx(1.0)
    assert net.on_chain() == pytest.approx(share)  # the database holds exactly what was sent
    # The SDK's clip: 0.4 : 0.3 : 0.2 : 0.1 cut at 0.225 (the two largest), then renormalised
    assert [share[u] for u in (1, 2, 3, 4)] == pytest.approx([0.3, 0.3, 4 / 15, 2 / 15], abs=1e-4)


def test_fewer_weights_than_min_allowed_weights_are_not_sent(tmp_path: Path) -> None:
    net = Net(tmp_path, min_allowed_weights=MINERS + 1)
    net.at_block(12)
    before = _outcome("refused")
    assert not setweights.maybe_set_weights(net.ctx, 1)
    row = net.row()
    assert row.tx_status == "failed" and f"requires at least {MINERS + 1}" in (row.tx_detail or "")
    assert net.sends == [] and _outcome("refused") == before + 1


def test_conform_drops_what_the_sdk_would_drop_and_refuses_an_impossible_cap() -> None:
    from chain.base import conform_weights

    params = SubnetParams(netuid=1, tempo=360, weights_rate_limit=0, weights_version=0, commit_reveal_enabled=False,
                          commit_reveal_period=0, max_weights_limit=U16_MAX, min_allowed_weights=1)
    assert conform_weights([3, 1, 2], [0.5, 0.5, 1e-9], params) == ([1, 3], [0.5, 0.5])  # rounds to u16 0
    with pytest.raises(InvalidWeightsError, match="cannot share"):
        conform_weights([1, 2], [0.5, 0.5], SubnetParams(**{**params.__dict__, "max_weights_limit": U16_MAX // 4}))


# ----------------------------------------------------------------------------- retries


def test_a_failed_send_is_retried_on_later_passes_with_backoff_until_it_succeeds(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.at_block(12)
    net.failing(2, ChainUnavailableError("node down"))
    assert not setweights.maybe_set_weights(net.ctx, 1)
    assert net.row().tx_status == "pending"
    assert not setweights.resend_unsent(net.ctx) and len(net.sends) == 1  # backoff: next at 12 + 2
    net.at_block(14)
    assert not setweights.resend_unsent(net.ctx) and len(net.sends) == 2  # failed again: next at 14 + 4
    net.at_block(17)
    assert not setweights.resend_unsent(net.ctx) and len(net.sends) == 2
    net.at_block(18)
    assert setweights.resend_unsent(net.ctx)
    row = net.row()
    assert row.tx_status == "success" and len(net.sends) == 3
    assert row.tx_detail.splitlines() == [  # every attempt's outcome, recorded
        "#1 block 12 retry 14: ChainUnavailableError: node down",
        "#2 block 14 retry 18: ChainUnavailableError: node down",
        "#3 block 18: success",
    ]
    assert net.on_chain() == pytest.approx(_db_share(row))
    assert not setweights.resend_unsent(net.ctx) and len(net.sends) == 3  # done: nothing pending


def test_a_failing_set_is_given_up_when_its_weight_period_is_over(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.at_block(12)
    net.failing(100, ChainUnavailableError("node down"))
    setweights.maybe_set_weights(net.ctx, 1)
    for block in range(13, 20):  # window 1's period (every 1 window) runs to the end of window 2
        net.at_block(block)
        setweights.resend_unsent(net.ctx)
    assert net.row().tx_status == "pending" and len(net.sends) == 3  # blocks 12, 14 and 18
    net.at_block(30)  # window 3: the next set was due in window 2
    assert not setweights.resend_unsent(net.ctx)
    row = net.row()
    assert row.tx_status == "failed" and len(net.sends) == 3
    assert row.tx_detail.splitlines()[-1] == "not sent after 3 sends; its weight period is over"


def test_a_set_is_given_up_after_max_sends_within_a_long_period(tmp_path: Path) -> None:
    hp = HP.override(**{"weights.set_every_windows": 10})  # a 100-block period: room for every backoff
    net = Net(tmp_path, hp)
    net.at_block(100)
    net.failing(100, ChainUnavailableError("node down"))
    setweights.maybe_set_weights(net.ctx, 9)
    for block in range(101, 200):
        net.at_block(block)
        setweights.resend_unsent(net.ctx)
    assert len(net.sends) == setweights.MAX_SENDS
    row = net.row()
    assert row.tx_status == "failed"
    assert row.tx_detail.splitlines()[-1].endswith(f"given up: {setweights.MAX_SENDS} sends failed")


def test_a_set_the_chain_refuses_is_not_retried(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.at_block(12)
    net.failing(100, InvalidWeightsError("uids not registered"))
    setweights.maybe_set_weights(net.ctx, 1)
    net.at_block(20)
    assert not setweights.resend_unsent(net.ctx)
    assert len(net.sends) == 1 and net.row().tx_status == "failed"


def test_a_failed_send_that_reached_the_chain_is_marked_sent_not_sent_again(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.at_block(12)
    counted = net.chain.set_weights

    def lost_answer(*args: Any) -> None:  # included, but the answer never came back
        counted(*args)
        raise ChainUnavailableError("connection reset")

    net.chain.set_weights = lost_answer  # type: ignore[method-assign]
    setweights.maybe_set_weights(net.ctx, 1)
    net.chain.set_weights = counted  # type: ignore[method-assign]
    net.at_block(14)
    assert not setweights.resend_unsent(net.ctx)
    assert net.row().tx_status == "success" and len(net.sends) == 1


# ----------------------------------------------------------------------------- schedule


def _params(**changes: Any) -> SubnetParams:
    base = dict(netuid=1, tempo=10, weights_rate_limit=0, weights_version=0, commit_reveal_enabled=False,
                commit_reveal_period=0, max_weights_limit=U16_MAX, min_allowed_weights=1)
    return SubnetParams(**{**base, **changes})  # type: ignore[arg-type]


def test_schedule_warnings_say_what_to_set() -> None:
    assert setweights.schedule_warnings(HP, _params()) == []  # 1 x 10 blocks, tempo 10, no rate limit
    [rate] = setweights.schedule_warnings(HP, _params(weights_rate_limit=25))
    assert "accepts one set per 25 blocks" in rate and "weights.set_every_windows >= 3" in rate
    assert setweights.schedule_warnings(HP, _params(tempo=360)) == []  # more often than the tempo: harmless
    finney = HParams()  # the packaged 2 x 125 blocks on a 360-block tempo and a 100-block rate limit
    assert setweights.schedule_warnings(finney, _params(tempo=360, weights_rate_limit=100)) == []


def test_the_schedule_is_checked_once_per_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    net = Net(tmp_path, weights_rate_limit=25)
    with caplog.at_level(logging.WARNING, logger="validator.setweights"):
        setweights.resend_unsent(net.ctx)
        setweights.resend_unsent(net.ctx)
    assert [r.getMessage() for r in caplog.records].count(setweights.schedule_warnings(
        HP, net.chain.subnet_params(1))[0]) == 1


def test_current_scores_and_the_log_format(tmp_path: Path) -> None:
    net = Net(tmp_path)
    with net.ctx.sessions() as s:
        assert weight_repo.current_scores(s) == {m.keypair.ss58_address: v for m, v in zip(
            net.miners, [4.0, 3.0, 2.0, 1.0], strict=True)}
        weight_repo.record_weight_set(s, window=3, uids=[1], weights=[1.0], version_key=1, block=7)
        weight_repo.update_weight_set(s, window=3, tx_status="pending", log=weight_repo.attempt_line(1, 8, "X: y", 10),
                                      sends=1, next_try_block=10)
        weight_repo.update_weight_set(s, window=3, tx_status="pending", log="a plain note", next_try_block=30)
        [u] = weight_repo.unsent_weight_sets(s)
        detail = weight_repo.latest_weight_set(s).tx_detail  # type: ignore[union-attr]
    assert (u.window, u.claimed_block, u.sends, u.next_try_block) == (3, 7, 1, 30)
    assert detail == "#1 block 8 retry 10: X: y\na plain note"


# ----------------------------------------------------------------------------- the Bittensor backend

KEYS = [Keypair.create_from_uri(f"//setweights-{i}") for i in range(MINERS + 1)]


def _weight_calls(fake: FakeSubstrate) -> list[tuple[str, str, dict]]:
    """What reached the fake chain as weights (the context's start-up also commits its storage URL)."""
    return [c for c in fake.submitted if c[0] == "SubtensorModule"]


@pytest.fixture
def fake() -> FakeSubstrate:
    return FakeSubstrate([k.ss58_address for k in KEYS], [100.0] + [0.0] * MINERS)


@pytest.fixture
def sdk_ctx(tmp_path: Path, fake: FakeSubstrate) -> Callable[[], ValidatorContext]:
    def make() -> ValidatorContext:
        chain = BittensorChain("ws://127.0.0.1:9944", substrate=fake, sleep=lambda _: None)
        ctx = _ctx(tmp_path, chain, KEYS[0])
        _scores(ctx, [k.ss58_address for k in KEYS[1:]], [4.0, 3.0, 2.0, 1.0])
        return ctx

    return make


def test_commit_reveal_on_goes_through_set_weights_end_to_end(
    fake: FakeSubstrate, sdk_ctx: Callable[[], ValidatorContext], caplog: pytest.LogCaptureFixture
) -> None:
    fake.commit_reveal, fake.reveal_period = True, 2
    ctx = sdk_ctx()
    assert ctx.chain.subnet_params(1).commit_reveal_enabled  # the value the validator plans with
    with caplog.at_level(logging.INFO):
        assert setweights.maybe_set_weights(ctx, 1)
    [(module, function, params)] = _weight_calls(fake)
    assert (module, function) == ("SubtensorModule", "commit_timelocked_mechanism_weights")  # what the SDK sent
    messages = [r.getMessage() for r in caplog.records]
    assert any("committing weights for 4 uids (send 1; commit-reveal on)" in m for m in messages)
    assert any(f"revealed at drand round {params['reveal_round']}" in m for m in messages)  # the backend's log
    with ctx.sessions() as s:
        row = weight_repo.latest_weight_set(s)
        assert row is not None and row.tx_status == "success" and row.tx_detail == "#1 block 100: success"
    assert ctx.chain.weights(1) == {}  # nothing readable before the reveal,
    assert not setweights.resend_unsent(ctx) and len(_weight_calls(fake)) == 1  # and the commit is not sent again


def test_what_the_database_records_is_what_the_sdk_sends_under_a_max_weight_cap(
    fake: FakeSubstrate, sdk_ctx: Callable[[], ValidatorContext]
) -> None:
    fake.max_weights_limit = int(0.3 * U16_MAX)
    ctx = sdk_ctx()
    assert setweights.maybe_set_weights(ctx, 1)
    [(_, function, params)] = _weight_calls(fake)
    assert function == "set_mechanism_weights"
    with ctx.sessions() as s:
        row = weight_repo.latest_weight_set(s)
        assert row is not None
        recorded = normalize(list(row.uids), list(row.weights))
    # Without the fit before the claim the SDK clips 4:3:2:1 itself and sends other numbers than recorded.
    assert (params["dests"], params["weights"]) == recorded
    assert max(row.weights) <= 0.3 + 1e-9


def test_a_due_set_the_chain_kept_from_being_claimed_is_set_on_the_next_pass(tmp_path: Path) -> None:
    """A chain error before the claim leaves the window unclaimed; the next pass claims and sends it."""
    net = Net(tmp_path)
    with net.ctx.sessions() as s:
        repo.open_window(s, window=1)
        repo.mark_window_scored(s, window=1)
    net.at_block(12)
    real, calls = net.chain.metagraph, [0]

    def down_once(netuid: int) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise ChainUnavailableError("node restarting")
        return real(netuid)

    net.chain.metagraph = down_once  # type: ignore[method-assign]
    assert not setweights.set_due_weights(net.ctx)  # nothing to retry: no chain read
    assert not setweights.set_due_weights(net.ctx, 1)  # logged, not raised; nothing claimed
    with net.ctx.sessions() as s:
        assert not weight_repo.has_weight_set(s, window=1)
    assert net.ctx.carry.weights_due == 1
    assert setweights.set_due_weights(net.ctx) and net.row().tx_status == "success"  # the next pass
    assert net.ctx.carry.weights_due is None and not setweights.set_due_weights(net.ctx)
    assert calls[0] == 2
