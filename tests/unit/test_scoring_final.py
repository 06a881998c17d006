"""Final score, sync score and per-window penalties."""

from __future__ import annotations

import math

import pytest

from protocol.hparams import ScoringParams
from scoring.final import (
    Outcome,
    PeerState,
    Verdict,
    apply_penalties,
    final_score,
    full_reset,
    is_banned,
    sync_score,
)
from scoring.ratings import Rating, default_rating

P = ScoringParams()  # decay 0.75, reset after > 3 windows, ban 200 windows
GOOD = Rating(40.0, 5.0)  # ordinal 40 - 15 = 25


@pytest.mark.parametrize(
    ("behind", "expected"),
    [
        (0, 1.0),
        (1, 0.8**2.5),  # (1 - 1/5)^2.5 = 0.572433
        (2, 0.278855),  # (1 - 2/5)^2.5 = 0.6^2 * sqrt(0.6) = 0.36 * 0.774597 = 0.278855
        (4, 0.2**2.5),  # 0.017889
        (5, 0.0),
        (9, 0.0),  # capped at max_behind
    ],
)
def test_sync_score(behind: int, expected: float) -> None:
    assert sync_score(behind, 5, 2.5) == pytest.approx(expected, abs=1e-6)


def test_sync_score_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        sync_score(-1, 5, 2.5)
    with pytest.raises(ValueError):
        sync_score(1, 0, 2.5)


def test_final_score_hand_computed() -> None:
    # exp(ordinal / T) x gate x sync, T = 5
    assert final_score(10.0, 0.5, 1.0, 5.0) == pytest.approx(3.694528)  # e^2 = 7.389056, x 0.5
    assert final_score(10.0, 0.5, 0.278855, 5.0) == pytest.approx(1.030238)  # 3.694528 x 0.278855
    assert final_score(-5.0, 1.0, 1.0, 5.0) == pytest.approx(0.367879, abs=1e-6)  # e^-1: a low rank still earns
    assert final_score(0.0, 1.0, 1.0, 5.0) == 1.0  # a newcomer that proved its work: e^0
    assert final_score(25.0, 0.0, 1.0, 5.0) == 0.0  # gate closed: no proof of work, no pay
    assert final_score(25.0, 1.0, 0.0, 5.0) == 0.0
    assert final_score(1e6, 1.0, 1.0, 5.0) == pytest.approx(math.exp(50.0))  # capped, finite
    # packaged (no temperature): max(0, ordinal) x gate x sync
    assert final_score(10.0, 0.5, 0.278855) == pytest.approx(1.394275)  # 5 x 0.278855
    assert final_score(-3.0, 1.0, 1.0) == 0.0  # a negative ordinal earns nothing
    assert final_score(0.0, 1.0, 1.0) == 0.0  # nor does a newcomer's 0


def test_evaluated_outcome_scores_through_the_work_gate() -> None:
    # First evaluated window after 4 virtual passed ones: proof = (bma + 0.95 x (1 - 0.95^4)) / (1 - 0.95^5)
    # = (bma + 0.176219) / 0.226219; gate = (proof - 0.6) / (0.8 - 0.6), clipped to [0, 1].
    high = Rating(30.0, 7.0)  # ordinal 9
    full = apply_penalties(PeerState(), Verdict.evaluated(5, high, 0.05, 1.0), P)  # indicator +1: proof 1
    assert full.score == pytest.approx(9.0) and full.evaluated_windows == 1
    half = apply_penalties(PeerState(), Verdict.evaluated(5, high, 0.0, 1.0), P)  # indicator 0: proof 0.778975
    assert half.score == pytest.approx(9 * 0.894877, rel=1e-5)  # 8.053889
    part = apply_penalties(PeerState(), Verdict.evaluated(5, high, -0.02, 1.0), P)  # -0.4: proof 0.690565
    assert part.score == pytest.approx(9 * 0.452827, rel=1e-5)  # 4.075444
    low = apply_penalties(PeerState(), Verdict.evaluated(5, high, -0.05, 1.0), P)  # -1: proof 0.557951
    assert low.score == 0.0  # below the floor
    shut = apply_penalties(PeerState(evaluated_windows=40), Verdict.evaluated(45, high, 0.4, 1.0), P)
    assert shut.score == 0.0  # a long record below 0.6: the gate is shut
    low = Rating(20.0, 7.0)  # ordinal -1: nothing, proof or not
    assert apply_penalties(PeerState(), Verdict.evaluated(5, low, 0.05, 1.0), P).score == 0.0
    exp = ScoringParams(score_temperature=20.0)  # the measured alternative: e^(-1/20) = 0.951229
    assert apply_penalties(PeerState(), Verdict.evaluated(5, low, 0.05, 1.0), exp).score == pytest.approx(0.951229)


@pytest.mark.parametrize(
    ("o", "g", "s", "t"),
    [(float("nan"), 0.5, 1.0, 5.0), (1.0, float("inf"), 1.0, 5.0), (1.0, 0.5, 1.5, 5.0), (1.0, -0.1, 1.0, 5.0),
     (1.0, 0.5, 1.0, 0.0)],
)
def test_final_score_rejects_bad_inputs(o: float, g: float, s: float, t: float) -> None:
    with pytest.raises(ValueError):
        final_score(o, g, s, t)


def scored(score: float = 8.0) -> PeerState:
    return PeerState(rating=GOOD, bma=0.4, score=score, evaluated_windows=30)


def test_missing_two_windows_decays_to_0_5625() -> None:
    state = scored(8.0)
    for w in (10, 11):
        state = apply_penalties(state, Verdict.missing(w), P)
    # 8 * 0.75 * 0.75 = 8 * 0.5625 = 4.5
    assert state.score == pytest.approx(4.5)
    assert state.inactive_windows == 2
    assert state.rating == GOOD and state.bma == 0.4


@pytest.mark.parametrize("make", [Verdict.late, Verdict.out_of_sync, Verdict.inactive])
def test_late_out_of_sync_and_inactive_decay(make: object) -> None:
    state = apply_penalties(scored(4.0), make(3), P)  # type: ignore[operator]
    assert state.score == pytest.approx(3.0)  # 4 * 0.75


def test_four_inactive_windows_reset() -> None:
    state = scored(8.0)
    seen = []
    for w in range(4):
        state = apply_penalties(state, Verdict.inactive(w), P)
        seen.append(state.score)
    # 8 -> 6 -> 4.5 -> 3.375, then the 4th window is > 3: full reset.
    assert seen[:3] == pytest.approx([6.0, 4.5, 3.375])
    assert seen[3] == 0.0
    assert state.rating == default_rating()
    assert state.bma == 0.0
    assert state.inactive_windows == 4


def test_reset_never_rewards() -> None:
    poor = PeerState(rating=Rating(10.0, 6.0), bma=-0.2, score=0.0)  # ordinal 10 - 18 = -8
    reset = full_reset(poor)
    assert reset.rating == Rating(10.0, 6.0)
    assert reset.bma == -0.2


def test_evaluation_restores_activity_and_sets_the_final_score() -> None:
    state = apply_penalties(scored(8.0), Verdict.missing(1), P)
    new_rating = Rating(30.0, 4.0)  # ordinal 30 - 12 = 18
    state = apply_penalties(state, Verdict.evaluated(2, new_rating, 0.9, 0.8**2.5), P)
    # 31st window: proof = 0.9 / (1 - 0.95^31) = 0.9 / 0.796127 = 1.13 -> 1 (gate open);
    # 18 x 0.8^2.5 = 18 x 0.572433 -> 10.303801
    assert state.score == pytest.approx(10.303801, rel=1e-6)
    assert state.inactive_windows == 0 and state.evaluated_windows == 31
    assert (state.rating, state.bma) == (new_rating, 0.9)


def test_evaluated_outcome_needs_measurements() -> None:
    with pytest.raises(ValueError, match="rating and bma"):
        apply_penalties(scored(), Verdict(Outcome.EVALUATED, 1), P)


def test_invalid_upload_zeroes_the_score_only() -> None:
    state = apply_penalties(scored(8.0), Verdict.invalid(7, "bad_signature"), P)
    assert state.score == 0.0
    assert state.rating == GOOD and state.bma == 0.4
    assert state.inactive_windows == 1


def test_copy_resets_and_bans() -> None:
    state = apply_penalties(scored(8.0), Verdict.copy(100, "replay"), P)
    assert state.score == 0.0
    assert state.rating == default_rating()
    assert state.bma == 0.0
    assert state.banned_until_window == 300  # 100 + 200
    assert is_banned(state, 300) and not is_banned(state, 301)
    # An evaluation during the ban changes nothing but keeps the score at 0.
    during = apply_penalties(state, Verdict.evaluated(150, GOOD, 0.9, 1.0), P)
    assert during == state
    # After the ban, evaluation counts again: 31st evaluated window, proof 0.9 / 0.796127 -> 1,
    # ordinal 25 x gate 1.
    after = apply_penalties(state, Verdict.evaluated(301, GOOD, 0.9, 1.0), P)
    assert after.score == pytest.approx(25.0)


def test_copy_during_a_ban_extends_it_and_ban_can_only_grow() -> None:
    state = PeerState(banned_until_window=500)
    assert apply_penalties(state, Verdict.copy(400), P).banned_until_window == 600
    short = ScoringParams(copy_ban_windows=10)
    assert apply_penalties(state, Verdict.copy(400), short).banned_until_window == 500


def test_new_peer_state_defaults() -> None:
    s = PeerState()
    assert (s.rating, s.bma, s.score, s.inactive_windows, s.banned_until_window, s.evaluated_windows) == (
        default_rating(),
        0.0,
        0.0,
        0,
        None,
        0,
    )
    assert not is_banned(s, 0)
