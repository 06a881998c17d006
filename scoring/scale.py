"""How a delta's size enters scoring and aggregation: ``cap`` (the default) or ``normalise``.

Why: a miner chooses its delta's size freely (multiply by k before encoding), and with the
step capped at 3x the median norm a 4-step miner that scaled its delta by 3 doubled its
measured loss drop and earned the top weight of the subnet (local chain, 10 windows). If
size pays, every rational miner inflates, and the aggregate takes oversized steps.

The rule (one factor, used by Stage 2 and by the outer step alike):

* ``m`` = median norm of the window's accepted deltas (after the norm bounds of
  ``scoring.filters.check_norm``, so a few inflated or shrunk uploads cannot move it far);
* a delta ``Δ`` is used as ``(m / ‖Δ‖)·Δ``: Stage 2 measures the loss at
  ``θ - η·(m/‖Δ‖)·Δ`` (``η = eval_step_scale x outer lr``) and the aggregation combines
  the same normalised deltas (``selected_mean``) before the outer lr.

So ``k·Δ`` is scored and applied exactly like ``Δ`` for every ``k > 0``: what a miner controls
is the direction, and its value is what that direction does to the loss at the size the
subnet applies. The norm bounds still reject absurd sizes (beyond ``max_norm_ratio`` x the
median), which loses the window rather than gaining anything. The 2-bit codec is
scale-equivariant (its lookup table is per tensor), so scaling survives encoding exactly.

Why ``normalise`` is not the default (``scoring.eval_norm``): on the tiny preset the value of a
direction at a fixed norm *falls* with more inner steps (more epochs over the same few pages),
so it paid 1- and 2-step miners and zeroed the 4- and 8-step ones, and a miner training on
someone else's pages ranked with the best (0.31 of the weight in a 4-window local chain run):
the per-page indicator is too noisy on 8-sequence pages to stop it. In the linear regime of the
evaluation step any descent direction gains in proportion to its size, so no loss measurement
tells more steps from a bigger step; effort has to be measured as data coverage before size
can be ignored (benchmarks/RESULTS.md, "Effort"). ``cap`` keeps the previous rule: the step is
capped at ``eval_clip_ratio`` x the median norm (inflating buys at most that factor) and the
aggregate clips each tensor to the median.
"""

from __future__ import annotations

import math

__all__ = ["cap_factor", "normalising_factor", "step_factor"]


def normalising_factor(norm: float, median_norm: float | None) -> float:
    """``m / ‖Δ‖``: the factor that brings a delta of ``norm`` to the window's median norm.

    1.0 when there is no reference (no median) or the delta is zero (nothing to scale).
    """
    if median_norm is None or not (math.isfinite(norm) and norm > 0):
        return 1.0
    if not (math.isfinite(median_norm) and median_norm > 0):
        raise ValueError(f"median norm must be finite and positive, got {median_norm}")
    return median_norm / norm


def cap_factor(norm: float, cap: float | None) -> float:
    """``min(1, cap / ‖Δ‖)``: the ``cap`` rule's factor (1.0 without a cap or for a zero delta)."""
    if cap is None or not (math.isfinite(norm) and norm > cap > 0):
        return 1.0
    return cap / norm


def step_factor(norm: float, median_norm: float | None, rule: str, clip_ratio: float) -> float:
    """The factor Stage 2 applies to a delta of ``norm`` under ``rule`` (``cap`` or ``normalise``)."""
    if rule == "normalise":
        return normalising_factor(norm, median_norm)
    if rule == "cap":
        return cap_factor(norm, clip_ratio * median_norm if median_norm else None)
    raise ValueError(f"unknown size rule {rule!r}")
