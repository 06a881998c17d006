"""OpenSkill Plackett-Luce ratings."""

from __future__ import annotations

import math

import pytest

from protocol.hparams import ScoringParams
from scoring.ratings import (
    DEFAULT_MU,
    DEFAULT_SIGMA,
    Rating,
    default_rating,
    ordinal,
    plackett_luce,
    rank_scores,
    update_ratings,
)

P = ScoringParams()


def test_defaults_unchanged() -> None:
    # Gauntlet / reference: Plackett-Luce, beta 7, tau 0.1, mu 25, sigma 25/3 (ordinal 0).
    assert P.openskill_beta == 7.0
    assert P.openskill_tau == 0.1
    assert (DEFAULT_MU, DEFAULT_SIGMA) == (25.0, 25.0 / 3)
    model = plackett_luce(P)
    assert (model.mu, model.sigma, model.beta, model.tau) == (25.0, 25.0 / 3, 7.0, 0.1)
    assert default_rating() == Rating(25.0, 25.0 / 3)
    assert ordinal(default_rating()) == pytest.approx(0.0, abs=1e-12)


def test_ordinal() -> None:
    assert ordinal(Rating(30.0, 2.0)) == 24.0  # 30 - 3 * 2


def test_two_new_peers_hand_computed() -> None:
    # Weng-Lin Plackett-Luce with tau added first: s² = (25/3)² + 0.1² = 69.4444 + 0.01 = 69.4544.
    # c² = Σ (s² + β²) = 2 * (69.4544 + 49) = 236.9089, c = 15.39185.
    # Equal mu, so exp(mu/c) = E for both; C_winner = 2E, C_loser = E.
    # Winner: Ω = s²/c * (1 - E/2E) = 69.4544 / 15.39185 * 0.5 = 2.25621 -> mu 27.25621.
    # Loser:  Ω = s²/c * ((0 - 1/2) + (1 - 1)) = -2.25621 -> mu 22.74379.
    # Δ = gamma s²/c² * (1/2)(1/2) with gamma = s/c: 0.541453 * 0.293169 * 0.25 = 0.039683 (both),
    # sigma² = 69.4544 * (1 - 0.039683) = 66.6982, sigma = 8.16690.
    new = update_ratings({}, {"a": 0.2, "b": 0.1}, P)
    assert new["a"].mu == pytest.approx(27.25621, abs=1e-4)
    assert new["b"].mu == pytest.approx(22.74379, abs=1e-4)
    assert new["a"].sigma == pytest.approx(8.16690, abs=1e-4)
    assert new["b"].sigma == pytest.approx(8.16690, abs=1e-4)


def test_ranking_order_is_preserved() -> None:
    scores = {"best": 0.04, "good": 0.03, "fair": 0.02, "worst": -0.01}
    new = update_ratings({}, scores, P)
    mus = [new[h].mu for h in ("best", "good", "fair", "worst")]
    assert mus == sorted(mus, reverse=True)
    gains = {h: new[h].mu - DEFAULT_MU for h in scores}
    assert max(gains, key=gains.__getitem__) == "best"
    assert gains["best"] > 0 > gains["worst"]
    assert ordinal(new["best"]) > 0


def test_only_the_order_of_scores_matters() -> None:
    a = update_ratings({}, {"x": 0.5, "y": 0.1, "z": 0.0}, P)
    b = update_ratings({}, {"x": 1e6, "y": 2.0, "z": 1.0}, P)
    assert a == b


def test_rank_scores_ties_share_a_rank() -> None:
    assert rank_scores({"a": 1.0, "b": 2.0, "c": 2.0, "d": 0.0}) == {"b": 1, "c": 1, "a": 3, "d": 4}
    assert rank_scores({}) == {}


def test_tied_scores_get_equal_updates() -> None:
    new = update_ratings({}, {"a": 0.1, "b": 0.1, "c": 0.0}, P)
    assert new["a"] == new["b"]
    assert new["a"].mu > new["c"].mu


def test_single_peer_is_not_a_match() -> None:
    prev = {"old": Rating(30.0, 5.0)}
    assert update_ratings(prev, {"old": 0.3}, P) == prev
    # a new single peer is registered at the default, unchanged
    assert update_ratings({}, {"new": 0.3}, P) == {"new": default_rating()}
    assert update_ratings(prev, {}, P) == prev


def test_unscored_peers_keep_their_rating_and_prev_is_not_mutated() -> None:
    prev = {"idle": Rating(31.0, 4.0), "a": Rating(26.0, 7.0)}
    snapshot = dict(prev)
    new = update_ratings(prev, {"a": 0.2, "b": 0.1}, P)
    assert prev == snapshot
    assert new["idle"] == Rating(31.0, 4.0)
    assert set(new) == {"idle", "a", "b"}
    assert new["a"].mu > 26.0


def test_deterministic_regardless_of_input_order() -> None:
    prev = {"a": Rating(27.0, 6.0), "b": Rating(24.0, 7.5), "c": Rating(25.0, 8.0)}
    one = update_ratings(prev, {"a": 0.1, "b": 0.3, "c": 0.2}, P)
    two = update_ratings(dict(reversed(prev.items())), {"c": 0.2, "b": 0.3, "a": 0.1}, P)
    assert one == two


def test_non_finite_score_raises() -> None:
    with pytest.raises(ValueError, match="not finite"):
        update_ratings({}, {"a": math.nan, "b": 0.1}, P)


def test_params_are_used() -> None:
    # A larger beta means a single match is weaker evidence: smaller mu moves.
    wide = ScoringParams(openskill_beta=20.0)
    default_gain = update_ratings({}, {"a": 1.0, "b": 0.0}, P)["a"].mu - DEFAULT_MU
    wide_gain = update_ratings({}, {"a": 1.0, "b": 0.0}, wide)["a"].mu - DEFAULT_MU
    assert 0 < wide_gain < default_gain


def test_float_noise_between_equal_directions_is_a_tie() -> None:
    """A delta and k times it score equal up to ~1e-8: they must share the rank, not race on rounding."""
    from scoring.ratings import rank_scores

    assert rank_scores({"a": 0.0031, "b": 0.0031 + 1e-9, "c": 0.0031 - 2e-9, "d": 0.0030}) == {
        "a": 1, "b": 1, "c": 1, "d": 4}
