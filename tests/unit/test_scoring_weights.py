"""Chain weights: top-N, power, burn, u16 conversion."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.hparams import WeightParams
from scoring.weights import U16_MAX, compute_weights, to_u16


def test_proportional_to_score() -> None:
    # 3 / (3 + 1) = 0.75, 1 / 4 = 0.25; the zero score gets nothing.
    assert compute_weights({1: 3.0, 2: 1.0, 3: 0.0}, WeightParams()) == pytest.approx({1: 0.75, 2: 0.25})


def test_power() -> None:
    # 3² = 9, 1² = 1 -> 9/10, 1/10.
    assert compute_weights({1: 3.0, 2: 1.0}, WeightParams(power=2.0)) == pytest.approx({1: 0.9, 2: 0.1})


def test_top_n() -> None:
    # keep 3 and 2: 3/5 = 0.6, 2/5 = 0.4.
    assert compute_weights({1: 3.0, 2: 2.0, 3: 1.0}, WeightParams(top_n=2)) == pytest.approx({1: 0.6, 2: 0.4})


def test_tie_at_the_cut_goes_to_the_lower_uid() -> None:
    assert compute_weights({7: 1.0, 4: 1.0, 9: 1.0}, WeightParams(top_n=2)) == pytest.approx({4: 0.5, 7: 0.5})


def test_burn() -> None:
    # burn 0.5; miners share 0.5 as 3:1 -> 0.375 and 0.125.
    params = WeightParams(burn_uid=0, burn_fraction=0.5)
    assert compute_weights({1: 3.0, 2: 1.0}, params) == pytest.approx({0: 0.5, 1: 0.375, 2: 0.125})


def test_burn_uid_score_is_ignored() -> None:
    params = WeightParams(burn_uid=0, burn_fraction=0.25)
    # uid 0's own score is dropped; uid 1 gets 1 - 0.25 = 0.75.
    assert compute_weights({0: 100.0, 1: 1.0}, params) == pytest.approx({0: 0.25, 1: 0.75})


def test_all_zero_scores() -> None:
    assert compute_weights({1: 0.0, 2: 0.0}, WeightParams(burn_uid=0, burn_fraction=0.1)) == {0: 1.0}
    assert compute_weights({1: 0.0, 2: 0.0}, WeightParams()) == {}
    assert compute_weights({}, WeightParams()) == {}


def test_burn_fraction_without_burn_uid_is_ignored() -> None:
    assert compute_weights({1: 1.0, 2: 1.0}, WeightParams(burn_fraction=0.5)) == pytest.approx(
        {1: 0.5, 2: 0.5}
    )


def test_burn_everything() -> None:
    assert compute_weights({1: 2.0}, WeightParams(burn_uid=5, burn_fraction=1.0)) == {5: 1.0}


def test_non_finite_and_negative_scores_count_as_zero() -> None:
    scores = {1: math.nan, 2: -1.0, 3: math.inf, 4: 2.0}
    assert compute_weights(scores, WeightParams()) == pytest.approx({4: 1.0})


def test_extreme_scores_do_not_overflow() -> None:
    # 1e200 ** 2 would overflow; scaling by the top score first keeps it exact: 1 : 0.25.
    got = compute_weights({1: 1e200, 2: 5e199}, WeightParams(power=2.0))
    assert got == pytest.approx({1: 0.8, 2: 0.2})


def test_to_u16_hand_computed() -> None:
    # max 0.5 -> 65535; 0.375 / 0.5 * 65535 = 49151.25 -> 49151; 0.125 / 0.5 * 65535 = 16383.75 -> 16384.
    assert to_u16({3: 0.125, 1: 0.5, 2: 0.375}) == ([1, 2, 3], [65535, 49151, 16384])


def test_to_u16_edge_cases() -> None:
    assert to_u16({}) == ([], [])
    assert to_u16({4: 0.0}) == ([4], [0])
    with pytest.raises(ValueError):
        to_u16({1: -0.1})


@given(
    st.dictionaries(st.integers(0, 255), st.floats(0, 1e6, allow_nan=False), max_size=64),
    st.integers(1, 40),
    st.floats(0.5, 3.0),
    st.one_of(st.none(), st.integers(0, 255)),
    st.floats(0, 1),
)
def test_weights_properties(
    scores: dict[int, float], top_n: int, power: float, burn_uid: int | None, burn: float
) -> None:
    params = WeightParams(top_n=top_n, power=power, burn_uid=burn_uid, burn_fraction=burn)
    weights = compute_weights(scores, params)
    if weights:
        assert math.fsum(weights.values()) == pytest.approx(1.0)
    assert all(w > 0 for w in weights.values())
    miners = [uid for uid in weights if uid != burn_uid]
    assert len(miners) <= top_n
    assert all(scores[uid] > 0 for uid in miners)
    uids, values = to_u16(weights)
    assert uids == sorted(weights)
    assert all(0 <= v <= U16_MAX for v in values)
    if values:
        assert max(values) == U16_MAX
