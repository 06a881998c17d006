"""Stage-2 loss scores: contribution, proof-of-work indicator, and a first-order screen.

Gauntlet (arXiv 2505.21684, reference notes) applies a peer's decoded delta with an
evaluation step and measures the loss before and after, on the peer's *assigned* pages
and on *random* pages the peer could not predict:

* **contribution** = ``(L_before_rand - L_after_rand) / L_before_rand``: relative so that it
  is comparable across windows while the loss falls; measured on random data so that
  memorising the assigned pages earns nothing.
* **indicator** = the mean over the evaluated assigned pages of ±1: +1 for a page whose
  relative improvement beats the one on the window's *control* pages by a margin, else -1 (a
  tie is -1: a peer must *show* it trained on each page). Control pages are drawn from the
  window's public beacon, a block hash nobody knows until the uploads are due
  (``protocol.pages.control_pages``): no miner can train on them, and every validator measures
  the same ones, so all of them reach the same verdict (with each validator's own random pages,
  one unlucky page flipped the gate at one validator and not at another). The reference compared the pages' mean once,
  so a miner that trained on one of two pages (and on someone else's for the other) still
  scored +1 whenever the trained page carried the mean; per page, the untrained one is a
  coin and the window's indicator falls to about half of an honest miner's. Its moving
  average ``bma ← (1 - alpha)·bma + alpha·indicator`` (alpha = 0.05) is the proof-of-work
  term, a test across windows rather than one ±1 per window. ``margin`` (default 0, the reference's plain comparison) can demand
  more. It cannot demand much: honest ratios of assigned to random gain fall over a run as
  error feedback mixes older windows' pages into each upload (about 2 in a localnet's first
  scored window, 1.05-1.27 by the fourth to sixth, four evaluation pages), while a miner that
  trains on real but *unassigned* pages sees a coin around 1 (0.79-1.49 measured). The test
  therefore does not separate the two within a few windows; what keeps such a miner's pay near
  zero there is its rank (RESULTS.md "Effort", open problem).

``first_order_estimate`` is the cheap screen from the notes: one backward pass gives the
gradient g of the evaluation loss, and applying ``θ ← θ - η·Δ`` changes the loss by about
``-η·⟨g, Δ⟩``, a dot product over only the delta's kept coordinates.

Losses are the validator's own measurements. A non-finite or non-positive "before" loss is a
validator bug and raises; a non-finite "after" loss means the delta broke the model, which
the caller records as ``Rejection.NOT_FINITE`` instead of scoring, so it raises too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "contribution",
    "first_order_estimate",
    "indicator",
    "page_indicator",
    "page_rank_indicator",
    "reach_contribution",
    "relative_improvement",
    "update_bma",
    "work_indicator",
]


def relative_improvement(l_before: float, l_after: float) -> float:
    """``(before - after) / before``: positive when the delta lowered the loss."""
    if not (math.isfinite(l_before) and l_before > 0):
        raise ValueError(f"loss before must be finite and positive, got {l_before}")
    if not math.isfinite(l_after):
        raise ValueError(f"loss after is not finite ({l_after}); reject the upload as not_finite")
    return (l_before - l_after) / l_before


def contribution(l_before_rand: float, l_after_rand: float) -> float:
    """The contribution score: relative improvement on the random (unpredictable) pages."""
    return relative_improvement(l_before_rand, l_after_rand)


def reach_contribution(l_before_rand: float, l_after_rand: float, further: list[float]) -> float:
    """The best contribution along the delta's direction: over the evaluation step and its ``eval_reach`` multiples.

    Why: every delta is scored at the window's median norm (``scoring.scale``), so a miner gains
    nothing by inflating it; but at that one small step any descent direction gains about the same,
    and a 1-step delta (close to one gradient) even gained *more* than a 32-step one (tiny preset:
    3.1 vs 1.8 x1e-3). What more inner work buys is *reach*: the loss keeps falling further along
    its direction. Mean over 30 windows, 6 honest miners of 1..32 steps, best gain over 1, 4, 16,
    64 x the step: 2.2 / 9.6 / 15.0 / 14.5 / 10.7 / 7.5 x1e-3, against 1.0-1.5 x1e-3 for all of them
    at the step alone. Past ~8 steps over the same 16 sequences the delta itself gets worse, and
    the score says so (benchmarks/RESULTS.md, "Effort"). The multiples act on the normalised
    direction, so k x the delta still scores exactly as the delta; noise is never better than its
    smallest step (its gain only falls).
    """
    return max(contribution(l_before_rand, after) for after in [l_after_rand, *further])


def indicator(assigned_improvement: float, reference_improvement: float, margin: float = 0.0) -> int:
    """+1 when the assigned improvement beats the reference (control pages') by more than ``margin`` of it, else -1.

    The margin is relative to ``|reference_improvement|`` so it scales with how much the delta
    helps at all; with ``margin=0`` this is the reference deployment's plain comparison.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return 1 if assigned_improvement - reference_improvement > margin * abs(reference_improvement) else -1


def page_indicator(page_improvements: list[float], reference_improvement: float, margin: float = 0.0) -> float:
    """Mean of :func:`indicator` over the assigned pages, in [-1, 1]; -1 when there are none."""
    if not page_improvements:
        return -1.0
    return sum(indicator(p, reference_improvement, margin) for p in page_improvements) / len(page_improvements)


def page_rank_indicator(page_improvements: list[float], control_improvements: list[float],
                        margin: float = 0.0) -> float:
    """Mean over the assigned pages of ``2 x (share of the control pages it beats) - 1``, in [-1, 1]; -1 when none.

    Why a rank, not a comparison with the control pages' mean: a page nobody trained on is one more
    page like the control pages, so its rank among them is uniform and this averages exactly 0
    whatever the gains' distribution looks like. Compared with the mean, such a page passed 73% of
    the time, not 50% (skewed per-page gains; benchmarks/RESULTS.md, "Effort"), and a miner
    training half its pages kept most of its pay. ``margin`` is as in :func:`indicator`.
    """
    if not page_improvements:
        return -1.0
    if not control_improvements:
        raise ValueError("the rank test needs at least one control page")
    beats = [sum(indicator(p, c, margin) > 0 for c in control_improvements) / len(control_improvements)
             for p in page_improvements]
    return sum(2.0 * b - 1.0 for b in beats) / len(beats)


def work_indicator(test: str, page_improvements: list[float], control_improvements: list[float],
                   pooled_control_improvement: float, margin: float = 0.0) -> float:
    """The window's proof-of-work indicator under ``scoring.indicator_test``.

    ``rank``: :func:`page_rank_indicator` against each control page's improvement; ``mean``:
    :func:`page_indicator` against the control pages' pooled improvement (their mean loss before
    and after).
    """
    if test == "rank":
        return page_rank_indicator(page_improvements, control_improvements, margin)
    return page_indicator(page_improvements, pooled_control_improvement, margin)


def update_bma(bma: float, indicator: float, alpha: float) -> float:
    """Exponential moving average of the indicator: ``(1 - alpha)·bma + alpha·indicator``."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if not (math.isfinite(indicator) and -1 <= indicator <= 1):
        raise ValueError(f"indicator must be in [-1, 1], got {indicator}")
    return (1 - alpha) * bma + alpha * indicator


def first_order_estimate(grad_values_at_indices: Tensor, delta_values: Tensor, step: float) -> float:
    """Predicted loss change ``-step·⟨g, Δ⟩`` of applying ``θ ← θ - step·Δ`` (negative = better).

    Both tensors hold values at the delta's kept coordinates only (same shape), so the cost
    is O(kept values), not O(parameters). Accumulates in float64.
    """
    if grad_values_at_indices.shape != delta_values.shape:
        raise ValueError(
            f"gradient {tuple(grad_values_at_indices.shape)} and delta {tuple(delta_values.shape)} shapes differ"
        )
    dot = torch.sum(grad_values_at_indices.to(torch.float64) * delta_values.to(torch.float64))
    return -step * float(dot)
