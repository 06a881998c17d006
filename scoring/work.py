"""Proof of work: did the peer train on its own assigned pages? A gate on pay, tested across windows.

Each evaluated window gives a per-page indicator in [-1, 1]; ``bma`` is its exponential average
(``scoring.loss.update_bma``). The packaged test (``scoring.indicator_test = "rank"``,
``scoring.loss.page_rank_indicator``) scores each evaluated assigned page by the share of the
window's control pages whose gain it beats, ``2 x share - 1``: a page nobody trained on is one
more page like the controls, so it averages exactly 0, and a trained page approaches +1. The
control pages and the evaluated assigned pages are drawn from the window's public beacon
(``protocol.windows.beacon_block``), so every validator computes the same indicators, the same
proof and the same gate. Here that average becomes a decision:

* :func:`proof_of_work` removes the average's start-up bias, with ``proof_prior_windows`` (4)
  virtual passed windows in front, so a fixed threshold applies from the first window on;
* :func:`work_gate` maps it to the share of pay the peer may earn: nothing at or below
  ``proof_floor`` (0.6), all of it at ``proof_full`` (0.8), linear between.

Measured (benchmarks/effort.py, localnet hyper-parameters, 2 assigned pages and 4 control pages
per window, 24 windows; benchmarks/RESULTS.md, "Effort"): honest miners of 1, 2, 4, 8 inner steps
average +0.77 / +0.84 / +0.81 / +0.89 under the rank test; one that trains half its pages on
another hotkey's +0.48; one that trains only other pages -0.01, noise -0.23. The half-page miner
earns 0 from the 13th window on, and no honest miner's gate ever shut (12.5% of honest
miner-windows below full pay, mostly the 1-step miner). Under the older test (+1 where the page
beats the control pages' *mean*) an untrained page passed 73% of the time instead of half, the
half-page miner averaged +0.62 against honest +0.79..+0.96, and no gate separated the two
without shutting honest miners. That gate (0.5 to 1.0) left it 22% of the weight.
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
    averages ~0.48 under the rank test against an honest miner's 0.77-0.89, so that would cut its
    pay by only ~40%. From ``floor`` 0.6 it earns nothing (benchmarks/RESULTS.md, "Effort").
    """
    if not full > floor:
        raise ValueError(f"full ({full}) must exceed floor ({floor})")
    return max(0.0, min(1.0, (proof - floor) / (full - floor)))
