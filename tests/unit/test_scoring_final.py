"""Final score, sync score and per-window penalties."""

from __future__ import annotations

import pytest

from protocol.hparams import ScoringParams
from scoring.final import (
    Outcome,
    PeerState,
    WindowOutcome,
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
    assert final_score(10.0, 0.5, 1.0) == 5.0  # 10 * 0.5 * 1
    assert final_score(10.0, 0.5, 0.278855) == pytest.approx(1.394275)  # 5 * 0.278855
    assert final_score(-3.0, 0.5, 1.0) == 0.0  # negative ordinal clamps to 0
    assert final_score(10.0, -0.2, 1.0) == 0.0  # no proof of work
    assert final_score(0.0, 1.0, 1.0) == 0.0  # a newcomer earns nothing yet


def test_evaluated_outcome_scores_a_negative_ordinal_zero() -> None:
    low = Rating(20.0, 7.0)  # ordinal 20 - 21 = -1: no shift by the window's worst peer
    assert apply_penalties(PeerState(), WindowOutcome.evaluated(5, low, 0.1, 1.0), P).score == 0.0
    high = Rating(30.0, 7.0)  # ordinal 9
    assert apply_penalties(PeerState(), WindowOutcome.evaluated(5, high, 0.1, 1.0), P).score == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("o", "b", "s"), [(float("nan"), 0.5, 1.0), (1.0, float("inf"), 1.0), (1.0, 0.5, 1.5)]
)
def test_final_score_rejects_bad_inputs(o: float, b: float, s: float) -> None:
    with pytest.raises(ValueError):
        final_score(o, b, s)


def scored(score: float = 8.0) -> PeerState:
    return PeerState(rating=GOOD, bma=0.4, score=score)


def test_missing_two_windows_decays_to_0_5625() -> None:
    state = scored(8.0)
    for w in (10, 11):
        state = apply_penalties(state, WindowOutcome.missing(w), P)
    # 8 * 0.75 * 0.75 = 8 * 0.5625 = 4.5
    assert state.score == pytest.approx(4.5)
    assert state.inactive_windows == 2
    assert state.rating == GOOD and state.bma == 0.4


@pytest.mark.parametrize("make", [WindowOutcome.late, WindowOutcome.out_of_sync, WindowOutcome.inactive])
def test_late_out_of_sync_and_inactive_decay(make: object) -> None:
    state = apply_penalties(scored(4.0), make(3), P)  # type: ignore[operator]
    assert state.score == pytest.approx(3.0)  # 4 * 0.75


def test_four_inactive_windows_reset() -> None:
    state = scored(8.0)
    seen = []
    for w in range(4):
        state = apply_penalties(state, WindowOutcome.inactive(w), P)
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
    state = apply_penalties(scored(8.0), WindowOutcome.missing(1), P)
    new_rating = Rating(30.0, 4.0)  # ordinal 30 - 12 = 18
    state = apply_penalties(state, WindowOutcome.evaluated(2, new_rating, 0.5, 0.8**2.5), P)
    # 18 * 0.5 * 0.8^2.5 = 9 * 0.572433 = 5.151896
    assert state.score == pytest.approx(5.151896)
    assert state.inactive_windows == 0
    assert (state.rating, state.bma) == (new_rating, 0.5)


def test_evaluated_outcome_needs_measurements() -> None:
    with pytest.raises(ValueError, match="rating and bma"):
        apply_penalties(scored(), WindowOutcome(Outcome.EVALUATED, 1), P)


def test_invalid_upload_zeroes_the_score_only() -> None:
    state = apply_penalties(scored(8.0), WindowOutcome.invalid(7, "bad_signature"), P)
    assert state.score == 0.0
    assert state.rating == GOOD and state.bma == 0.4
    assert state.inactive_windows == 1


def test_copy_resets_and_bans() -> None:
    state = apply_penalties(scored(8.0), WindowOutcome.copy(100, "replay"), P)
    assert state.score == 0.0
    assert state.rating == default_rating()
    assert state.bma == 0.0
    assert state.banned_until_window == 300  # 100 + 200
    assert is_banned(state, 300) and not is_banned(state, 301)
    # An evaluation during the ban changes nothing but keeps the score at 0.
    during = apply_penalties(state, WindowOutcome.evaluated(150, GOOD, 0.9, 1.0), P)
    assert during == state
    # After the ban, evaluation counts again: ordinal 25 * bma 0.9 * sync 1 = 22.5.
    after = apply_penalties(state, WindowOutcome.evaluated(301, GOOD, 0.9, 1.0), P)
    assert after.score == pytest.approx(22.5)


def test_copy_during_a_ban_extends_it_and_ban_can_only_grow() -> None:
    state = PeerState(banned_until_window=500)
    assert apply_penalties(state, WindowOutcome.copy(400), P).banned_until_window == 600
    short = ScoringParams(copy_ban_windows=10)
    assert apply_penalties(state, WindowOutcome.copy(400), short).banned_until_window == 500


def test_new_peer_state_defaults() -> None:
    s = PeerState()
    assert (s.rating, s.bma, s.score, s.inactive_windows, s.banned_until_window) == (
        default_rating(),
        0.0,
        0.0,
        0,
        None,
    )
    assert not is_banned(s, 0)
