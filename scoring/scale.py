"""How a delta's size enters scoring and aggregation: ``cap`` (the default) or ``normalise``.

*Why ``cap`` is still the default.* ``normalise`` removes the magnitude game exactly (every
k earns what k = 1 earns, benchmarks/RESULTS.md "Effort"), but on the local chain honest miners
of 2, 4 and 8 inner steps then score nearly alike; each validator breaks those near-ties with
its own secret random pages, and three validators' weights shared only 58-76% of their mass in
some epochs (tests/e2e/test_validators.py asks 80%). It needs an evaluation that every
validator computes alike for the ranking's fine print (or pay that does not amplify near-ties)
before it can be the default.

Why: a miner chooses its delta's size freely (multiply by k before encoding), and with the
step capped at 3x the median norm a 4-step miner that scaled its delta by 3 doubled its
measured loss drop and earned the top weight of the subnet (local chain, 10 windows). If
size pays, every rational miner inflates, and the aggregate takes oversized steps.

The rule (one factor, used by Stage 2 and by the outer step alike):

* ``m`` = median norm of the window's accepted deltas (after the norm bounds of
  ``scoring.filters.check_norm``, so a few inflated or shrunk uploads cannot move it far);
* a delta ``Δ`` is used as ``(m / ‖Δ‖)·Δ``: Stage 2 measures the loss at
  ``θ - c·η·(m/‖Δ‖)·Δ`` (``η = eval_step_scale x outer lr``) for ``c`` = 1 and the
  ``eval_reach`` multiples 4, 16, 64, and the aggregation combines the same normalised deltas
  (``selected_mean``) before the outer lr.

So ``k·Δ`` is scored and applied exactly like ``Δ`` for every ``k > 0``: what a miner controls
is the direction, and its value is how far that direction keeps lowering the loss. The norm
bounds still reject absurd sizes (beyond ``max_norm_ratio`` x the median), which loses the
window rather than gaining anything. The 2-bit codec is scale-equivariant (its lookup table is
per tensor), so scaling survives encoding exactly.

Why the reach: at the single step ``c = 1`` any descent direction gains about the same, and on
the tiny preset a 1- or 2-step delta (close to one gradient) gained *more* than a 32-step one,
so ``normalise`` alone paid low effort (benchmarks/RESULTS.md, "Effort"). More inner work shows
as a direction that keeps helping further out: with the multiples, 1, 2 and 4 steps rank in
order of effort, and past ~8 steps over the same few sequences the delta really is worse
(``scoring.loss.reach_contribution``). Training on someone else's pages has reach too; the work
gate (``scoring.work``) is what stops that.

``cap`` keeps the earlier rule for comparison: the step is capped at ``eval_clip_ratio`` x the
median norm (inflating buys up to that factor) and the aggregate clips each tensor to the median.
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
