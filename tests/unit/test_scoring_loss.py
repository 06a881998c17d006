"""Loss-based scores: contribution, indicator, moving average, first-order estimate."""

from __future__ import annotations

import math

import pytest
import torch

from scoring.loss import (
    contribution,
    first_order_estimate,
    indicator,
    page_indicator,
    page_rank_indicator,
    relative_improvement,
    update_bma,
)


def test_contribution_hand_computed() -> None:
    assert contribution(4.0, 3.0) == pytest.approx(0.25)  # (4 - 3) / 4
    assert contribution(2.0, 2.5) == pytest.approx(-0.25)  # (2 - 2.5) / 2: the delta hurt
    assert contribution(3.0, 3.0) == 0.0


def test_relative_improvement_hand_computed() -> None:
    assert relative_improvement(5.0, 4.5) == pytest.approx(0.1)  # 0.5 / 5


@pytest.mark.parametrize(("before", "after"), [(0.0, 1.0), (-1.0, 1.0), (math.nan, 1.0), (math.inf, 1.0)])
def test_bad_before_loss_raises(before: float, after: float) -> None:
    with pytest.raises(ValueError, match="before"):
        relative_improvement(before, after)


@pytest.mark.parametrize("after", [math.nan, math.inf])
def test_non_finite_after_loss_raises(after: float) -> None:
    with pytest.raises(ValueError, match="not_finite"):
        contribution(3.0, after)


def test_indicator() -> None:
    assert indicator(0.3, 0.2) == 1
    assert indicator(0.2, 0.2) == -1  # a tie shows no work on the assigned pages
    assert indicator(0.1, 0.2) == -1
    assert indicator(-0.01, -0.02) == 1  # both worse, but assigned less so


def test_indicator_margin() -> None:
    # 5% margin: assigned must exceed random by more than 0.05 * |random|.
    assert indicator(0.0107, 0.0100, margin=0.05) == 1  # ratio 1.07
    assert indicator(0.0104, 0.0100, margin=0.05) == -1  # ratio 1.04
    assert indicator(0.625, 0.5, margin=0.25) == -1  # exactly on the margin (0.125 = 0.25 * 0.5) is not enough
    assert indicator(-0.015, -0.02, margin=0.15) == 1  # 0.005 > 0.15 * |-0.02| = 0.003
    assert indicator(0.0, 0.0, margin=0.15) == -1  # a delta that changes nothing shows no work
    with pytest.raises(ValueError, match="margin"):
        indicator(0.1, 0.1, margin=-0.1)


def test_update_bma_sequence() -> None:
    # 0.95 * 0 + 0.05 * 1 = 0.05; then 0.95 * 0.05 + 0.05 * (-1) = 0.0475 - 0.05 = -0.0025.
    bma = update_bma(0.0, 1, 0.05)
    assert bma == pytest.approx(0.05)
    assert update_bma(bma, -1, 0.05) == pytest.approx(-0.0025)
    # alpha = 1 forgets the past entirely.
    assert update_bma(0.7, -1, 1.0) == -1.0


@pytest.mark.parametrize(("ind", "alpha"), [(float("nan"), 0.05), (2, 0.05), (-1.5, 0.05), (1, 0.0), (1, 1.5)])
def test_update_bma_rejects_bad_inputs(ind: float, alpha: float) -> None:
    with pytest.raises(ValueError):
        update_bma(0.0, ind, alpha)


def test_first_order_estimate_hand_computed() -> None:
    g = torch.tensor([1.0, 2.0, 3.0])
    d = torch.tensor([0.5, -1.0, 2.0])
    # <g, d> = 0.5 - 2 + 6 = 4.5; predicted change = -0.2 * 4.5 = -0.9 (the loss falls).
    assert first_order_estimate(g, d, 0.2) == pytest.approx(-0.9)


def test_first_order_estimate_matches_a_quadratic_for_small_steps() -> None:
    # L(θ) = ½‖θ‖², so g = θ and L(θ - ηΔ) - L(θ) = -η<θ, Δ> + ½η²‖Δ‖² exactly.
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(1000, generator=gen, dtype=torch.float64)
    delta = theta + 0.1 * torch.randn(1000, generator=gen, dtype=torch.float64)
    kept = torch.randperm(1000, generator=gen)[:50]
    sparse = torch.zeros_like(delta)
    sparse[kept] = delta[kept]
    eta = 1e-3

    def loss(t: torch.Tensor) -> float:
        return float(0.5 * (t * t).sum())

    actual = loss(theta - eta * sparse) - loss(theta)
    predicted = first_order_estimate(theta[kept], delta[kept], eta)
    second_order = 0.5 * eta**2 * float((sparse * sparse).sum())
    assert actual == pytest.approx(predicted + second_order, rel=1e-9)
    assert predicted < 0
    assert abs(actual - predicted) < 0.01 * abs(predicted)


def test_first_order_estimate_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        first_order_estimate(torch.zeros(3), torch.zeros(4), 0.2)


def test_page_indicator_hand_computed() -> None:
    """Per page, not on the pages' mean: one trained page of two no longer carries the window."""
    from scoring.loss import page_indicator

    # Pages improve 0.30 and 0.01, random 0.02: the mean (0.155) beats random, the second page does not.
    assert page_indicator([0.30, 0.01], 0.02) == 0.0
    assert page_indicator([0.30, 0.05, 0.04, 0.03], 0.02) == 1.0
    assert page_indicator([0.30, 0.05, 0.01, 0.02], 0.02) == 0.0  # a tie is -1
    assert page_indicator([0.021, 0.05], 0.02, margin=0.1) == 0.0  # 0.001 < 10% of 0.02
    assert page_indicator([], 0.02) == -1.0
    assert update_bma(0.0, 0.5, 0.05) == pytest.approx(0.025)


def test_reach_contribution_is_the_best_gain_along_the_direction() -> None:
    from scoring.loss import reach_contribution

    # before 5.0; after at 1, 4, 16, 64 x the step: 4.9, 4.6, 4.5, 5.2 -> gains 0.02, 0.08, 0.10, -0.04
    assert reach_contribution(5.0, 4.9, [4.6, 4.5, 5.2]) == pytest.approx(0.10)
    assert reach_contribution(5.0, 4.9, []) == pytest.approx(0.02)  # no reach: the step's own gain
    assert reach_contribution(5.0, 5.1, [5.3, 6.0]) == pytest.approx(-0.02)  # noise: its least loss
    with pytest.raises(ValueError):
        reach_contribution(5.0, float("nan"), [4.0])


def test_proof_of_work_removes_the_start_up_bias() -> None:
    from scoring.work import proof_of_work

    assert proof_of_work(0.05, 1, 0.05) == pytest.approx(1.0)  # one +1 window: 0.05 / (1 - 0.95)
    # +1 then -1: bma = 0.95 * 0.05 - 0.05 = -0.0025; weight 1 - 0.95^2 = 0.0975 -> -0.025641
    assert proof_of_work(-0.0025, 2, 0.05) == pytest.approx(-0.025641, abs=1e-6)
    assert proof_of_work(0.9, 10_000, 0.05) == pytest.approx(0.9)  # long history: no correction
    assert proof_of_work(0.3, 0, 0.05) == 0.0  # nothing evaluated: no proof
    assert proof_of_work(0.06, 1, 0.05) == 1.0  # clipped to the indicator's range
    # 4 virtual passed windows in front: a newcomer starts at 1.0, one 0-window leaves 0.778975
    assert proof_of_work(0.0, 0, 0.05, 4) == 1.0
    assert proof_of_work(0.0, 1, 0.05, 4) == pytest.approx(0.176219 / 0.226219, rel=1e-5)


def test_work_gate_hand_computed() -> None:
    from scoring.work import work_gate

    assert work_gate(0.72, 0.5, 1.0) == pytest.approx(0.44)  # packaged: half the pages someone else's
    assert work_gate(0.97, 0.8, 0.95) == 1.0  # a steeper gate
    assert work_gate(0.875, 0.8, 0.95) == pytest.approx(0.5)
    assert work_gate(0.7, 0.8, 0.95) == 0.0  # half the pages someone else's: 0.67-0.73
    assert work_gate(0.8, 0.8, 0.95) == 0.0
    with pytest.raises(ValueError):
        work_gate(0.9, 0.95, 0.8)


def test_page_rank_indicator_hand_computed() -> None:
    controls = [0.1, 0.2, 0.3, 0.05]
    assert page_rank_indicator([0.35], controls) == 1.0  # beats all four
    assert page_rank_indicator([0.01], controls) == -1.0  # beats none
    assert page_rank_indicator([0.25, 0.15], controls) == pytest.approx((0.5 + 0.0) / 2)
    assert page_rank_indicator([0.25], controls, margin=0.5) == pytest.approx(0.0)  # now beats 0.1 and 0.05 only
    assert page_rank_indicator([], controls) == -1.0
    with pytest.raises(ValueError, match="control page"):
        page_rank_indicator([0.1], [])


def test_an_untrained_page_averages_zero_under_the_rank_test_whatever_the_skew() -> None:
    import random

    rng = random.Random(0)
    draws = [rng.lognormvariate(0, 1.0) for _ in range(20000)]  # right-skewed gains
    samples = [page_rank_indicator([draws[i]], draws[i + 1:i + 5]) for i in range(0, 20000 - 5, 5)]
    assert abs(sum(samples) / len(samples)) < 0.03
    mean_test = [page_indicator([draws[i]], sum(draws[i + 1:i + 5]) / 4) for i in range(0, 20000 - 5, 5)]
    assert sum(mean_test) / len(mean_test) < -0.1  # against the mean, the same page is biased by the skew
