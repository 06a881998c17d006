"""Scale invariance: every delta is scored and aggregated at the window's median norm.

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
"""

from __future__ import annotations

import math

__all__ = ["normalising_factor"]


def normalising_factor(norm: float, median_norm: float | None) -> float:
    """``m / ‖Δ‖``: the factor that brings a delta of ``norm`` to the window's median norm.

    1.0 when there is no reference (no median) or the delta is zero (nothing to scale).
    """
    if median_norm is None or not (math.isfinite(norm) and norm > 0):
        return 1.0
    if not (math.isfinite(median_norm) and median_norm > 0):
        raise ValueError(f"median norm must be finite and positive, got {median_norm}")
    return median_norm / norm
