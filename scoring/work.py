"""Proof of work: did the peer train on its own assigned pages? A gate on pay, tested across windows.

Each evaluated window gives a per-page indicator in [-1, 1] (``scoring.loss.page_indicator``:
+1 for an assigned page whose loss fell more than the random pages' did); ``bma`` is its
exponential average (``scoring.loss.update_bma``). Here that average becomes a decision:

* :func:`proof_of_work` removes the average's start-up bias, so a fixed threshold applies from
  the first window on;
* :func:`work_gate` maps it to the share of pay the peer may earn: nothing at or below
  ``proof_floor`` (0.8), all of it at or above ``proof_full`` (0.95).

Measured (benchmarks/effort.py, tiny preset, both assigned pages evaluated, 30 windows): honest
miners of 2..32 inner steps average +1.00 and the 1-step one +0.90; one that trains half its pages
on another hotkey's +0.73; one that trains only other pages +0.07, noise +0.13. Over 180 honest
miner-windows the gate was never shut and below 1 in 9.4% (all honest-1's); partial work was shut
out from window 14 on. Pure functions, no I/O.
"""

from __future__ import annotations

__all__ = ["proof_of_work", "work_gate"]


def proof_of_work(bma: float, evaluated_windows: int, alpha: float) -> float:
    """``bma`` with its start-up bias removed: ``bma / (1 - (1 - alpha) ** n)`` after ``n`` evaluated windows.

    ``bma`` starts at 0, so for its first ~1/alpha windows it understates every peer alike; the
    corrected value is the indicator's weighted mean over the windows seen so far (as in Adam's
    moment estimates) and can be compared with a fixed threshold from the first window on.
    0 when nothing has been evaluated yet.
    """
    if evaluated_windows <= 0:
        return 0.0
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return max(-1.0, min(1.0, bma / (1.0 - (1.0 - alpha) ** evaluated_windows)))


def work_gate(proof: float, floor: float, full: float) -> float:
    """0 at or below ``floor``, 1 at or above ``full``, linear between: the share of pay the proof of work allows.

    Why a gate and not ``max(0, bma)`` as a factor: a miner that trains on half of its assigned
    pages averages a per-page indicator of ~0.7 against an honest miner's 0.9-1.0, so a linear
    factor cut its pay by only ~30%. At or below ``floor`` (0.8) it earns nothing
    (benchmarks/RESULTS.md, "Effort").
    """
    if not full > floor:
        raise ValueError(f"full ({full}) must exceed floor ({floor})")
    return max(0.0, min(1.0, (proof - floor) / (full - floor)))
