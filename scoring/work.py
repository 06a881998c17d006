"""Proof of work: did the peer train on its own assigned pages? A gate on pay, tested across windows.

Each evaluated window gives a per-page indicator in [-1, 1] (``scoring.loss.page_indicator``:
+1 for an assigned page whose loss fell more than the window's control pages' did); ``bma`` is
its exponential average (``scoring.loss.update_bma``). The control pages and the evaluated
assigned pages are drawn from the window's public beacon (``protocol.windows.beacon_block``), so
every validator computes the same indicators, the same proof and the same gate.
Here that average becomes a decision:

* :func:`proof_of_work` removes the average's start-up bias, with ``proof_prior_windows`` (4)
  virtual passed windows in front, so a fixed threshold applies from the first window on;
* :func:`work_gate` maps it to the share of pay the peer may earn: nothing at or below
  ``proof_floor`` (0.5), all of it at ``proof_full`` (1.0), linear between. A steeper gate
  (0.8 to 0.95) separated partial work better; when each validator still measured against its
  own random pages it flipped on one validator's unlucky page and not another's (three
  validators' weights shared only 48-79% of their mass in some epochs).

Measured (benchmarks/effort.py, tiny preset, both assigned pages evaluated, 30 windows): honest
miners of 2..32 inner steps average +1.00 and the 1-step one +0.90; one that trains half its pages
on another hotkey's +0.73; one that trains only other pages +0.07, noise +0.13. Wrong pages and
noise are shut out from the first windows; the half-page miner keeps ~64% of its pay. A steeper
gate (0.8 to 0.95) shut it out too, but on the local chain 12% of honest miner-windows fail a
page, and such a gate shuts honest miners too (benchmarks/RESULTS.md, "Effort").
Pure functions, no I/O.
"""

from __future__ import annotations

__all__ = ["proof_of_work", "work_gate"]


def proof_of_work(bma: float, evaluated_windows: int, alpha: float, prior_windows: int = 0) -> float:
    """The indicator's weighted mean over the ``n`` evaluated windows, after ``prior_windows`` virtual +1s.

    ``bma`` starts at 0, so for its first ~1/alpha windows it understates every peer alike;
    dividing by the weight seen so far, ``1 - (1 - alpha) ** n``, removes that bias (as in Adam's
    moment estimates). The prior windows are counted as passed before the first real one: with
    two pages per window one unlucky page in a newcomer's first windows would otherwise shut the
    gate on an honest miner. A peer never evaluated has only the prior: 1.0 with one, 0.0 without.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    n, k, keep = max(evaluated_windows, 0), max(prior_windows, 0), 1.0 - alpha
    weight = 1.0 - keep ** (n + k)
    if weight <= 0.0:
        return 0.0
    prior = keep ** n * (1.0 - keep ** k)  # what k windows of +1 left in the average
    return max(-1.0, min(1.0, (bma + prior) / weight))


def work_gate(proof: float, floor: float, full: float) -> float:
    """0 at or below ``floor``, 1 at or above ``full``, linear between: the share of pay the proof of work allows.

    Why not ``max(0, bma)`` as the factor: a miner that trains on half of its assigned pages
    averages a per-page indicator of ~0.7 against an honest miner's 0.9-1.0, so that cut its pay
    by only ~30%, and noise (+0.1) kept a tenth. From ``floor`` 0.5 the half-page miner keeps
    ~44% and noise nothing (benchmarks/RESULTS.md, "Effort").
    """
    if not full > floor:
        raise ValueError(f"full ({full}) must exceed floor ({floor})")
    return max(0.0, min(1.0, (proof - floor) / (full - floor)))
