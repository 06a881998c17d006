"""Final score and penalties: one peer's state after one window.

**Final score**: ``max(0, ordinal) · gate(proof) · sync_score`` with

* ``ordinal = mu - 3·sigma`` of the peer's OpenSkill rating (``scoring.ratings``);
* ``proof`` the bias-corrected average of the per-page proof-of-work indicator
  (``scoring.work.proof_of_work``) and ``gate`` 0 at or below ``proof_floor`` (0.6), 1 at
  ``proof_full`` (0.8), linear between (``scoring.work.work_gate``);
* ``sync_score = (1 - min(steps_behind, 5) / 5) ^ 2.5`` (``sync_max_behind``, ``sync_exponent``).

*Why no shift of the ordinal.* ``ordinal`` starts at 0 for a new peer and Plackett-Luce moves mu
roughly zero-sum, so peers ranked in the bottom half earn 0, honest low-effort miners included.
Measuring ordinals from the window's worst peer was dropped: a sybil that uploads a valid but
useless delta every window drags that zero point down and lifts every middling peer's share.

*The measured alternative* (``score_temperature = T``): ``exp(ordinal / T)`` pays every peer
that passes the gate, in rank order, and shares do not move when all ordinals shift together, so
losing sybils lift nobody. In the effort benchmark (T = 20) it paid honest-1 3.4% and honest-2
12.6%. On the local chain it also paid valid noise and wrong-page deltas up to 0.13 and 0.06 of
the weight in a 4-window run, while the work gate's prior of passed windows still outweighed
their evidence; ``max(0, ordinal)`` pays them 0 by rank. So it is not the default.

**Penalties** (reference constants, ``ScoringParams``):

* inactive, missing, late or out of sync → score x0.75 (``inactivity_decay``) per window;
* more than 3 (``inactivity_reset_windows``) consecutive windows without an evaluated
  upload, of any of those kinds or invalid → full reset;
* invalid upload (bad signature, malformed, not finite, norm out of bounds, …) → score 0;
* unevaluated (a valid upload the validator had no time for, ``validator.stage2``) → nothing
  changes: the validator's budget is not the miner's fault, and it is not a free pass either
  (no decay is avoided that an evaluation would not also have reset);
* copy or replay → full reset, score 0, banned for 200 windows (``copy_ban_windows``):
  windows ``W .. W + 200`` score 0 whatever is uploaded.
  Only a delta the hotkey signed for ``W`` can earn this: an upload signed by another
  hotkey or for another window may have been planted by whoever can write to the miner's
  store, so the validator judges it *missing* (``scoring.filters.Rejection``).

A *full reset* never rewards: rating returns to the default only if that is not better
than the current one (a poorly rated peer cannot go quiet for four windows to wipe its
record) and a negative ``bma`` is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum

from protocol.hparams import ScoringParams
from scoring.ratings import Rating, default_rating, ordinal
from scoring.work import proof_of_work, work_gate

__all__ = [
    "Outcome",
    "PeerState",
    "Verdict",
    "apply_penalties",
    "final_score",
    "full_reset",
    "is_banned",
    "sync_score",
    "work_proof",
]


def sync_score(steps_behind: int, max_behind: int, exponent: float) -> float:
    """``(1 - min(steps_behind, max_behind) / max_behind) ** exponent``: 1 in sync, 0 at the limit."""
    if steps_behind < 0:
        raise ValueError(f"steps_behind must be >= 0, got {steps_behind}")
    if max_behind < 1:
        raise ValueError(f"max_behind must be >= 1, got {max_behind}")
    return (1 - min(steps_behind, max_behind) / max_behind) ** exponent


#: exp(ordinal / T) is capped here: ordinals stay far below it, and the cap keeps a corrupt rating finite.
MAX_EXPONENT = 50.0


def final_score(ordinal: float, gate: float, sync: float, temperature: float | None = None) -> float:
    """``max(0, ordinal) · gate · sync``, or ``exp(ordinal / temperature) · gate · sync``; see the module docstring."""
    if not (math.isfinite(ordinal) and 0.0 <= gate <= 1.0 and 0.0 <= sync <= 1.0
            and (temperature is None or temperature > 0)):
        raise ValueError(f"invalid final-score inputs: ordinal={ordinal}, gate={gate}, sync={sync}, "
                         f"temperature={temperature}")
    if gate == 0.0 or sync == 0.0:
        return 0.0
    if temperature is None:
        return max(0.0, ordinal) * gate * sync
    return math.exp(min(ordinal / temperature, MAX_EXPONENT)) * gate * sync


class Outcome(StrEnum):
    """What happened to a peer in one window, as far as its standing is concerned."""

    EVALUATED = "evaluated"
    MISSING = "missing"
    LATE = "late"
    OUT_OF_SYNC = "out_of_sync"
    INACTIVE = "inactive"
    INVALID = "invalid"
    COPY = "copy"
    UNEVALUATED = "unevaluated"  # passed Stage 1, left out by the validator's time budget


_DECAYING = frozenset({Outcome.MISSING, Outcome.LATE, Outcome.OUT_OF_SYNC, Outcome.INACTIVE})


@dataclass(frozen=True, slots=True)
class PeerState:
    """Everything the validator persists per hotkey between windows."""

    rating: Rating = field(default_factory=default_rating)
    bma: float = 0.0
    score: float = 0.0
    inactive_windows: int = 0
    banned_until_window: int | None = None
    #: Windows in which the peer was evaluated: the bias correction of ``bma`` (``proof_of_work``).
    evaluated_windows: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """One window's outcome for one peer. Build it with the class methods.

    ``reason`` carries the rejection for ``invalid`` and ``"copy"``/``"replay"`` for
    ``copy``; ``rating``, ``bma`` and ``sync`` carry an evaluated peer's new measurements.
    """

    kind: Outcome
    window: int
    reason: str = ""
    rating: Rating | None = None
    bma: float | None = None
    sync: float = 1.0

    @classmethod
    def evaluated(cls, window: int, rating: Rating, bma: float, sync: float) -> Verdict:
        return cls(Outcome.EVALUATED, window, rating=rating, bma=bma, sync=sync)

    @classmethod
    def missing(cls, window: int) -> Verdict:
        return cls(Outcome.MISSING, window)

    @classmethod
    def late(cls, window: int) -> Verdict:
        return cls(Outcome.LATE, window)

    @classmethod
    def out_of_sync(cls, window: int) -> Verdict:
        return cls(Outcome.OUT_OF_SYNC, window)

    @classmethod
    def inactive(cls, window: int) -> Verdict:
        return cls(Outcome.INACTIVE, window)

    @classmethod
    def invalid(cls, window: int, reason: str) -> Verdict:
        return cls(Outcome.INVALID, window, reason=reason)

    @classmethod
    def copy(cls, window: int, kind: str = "copy") -> Verdict:
        return cls(Outcome.COPY, window, reason=kind)

    @classmethod
    def unevaluated(cls, window: int) -> Verdict:
        return cls(Outcome.UNEVALUATED, window)


def is_banned(state: PeerState, window: int) -> bool:
    """True while ``window <= banned_until_window``."""
    return state.banned_until_window is not None and window <= state.banned_until_window


def full_reset(state: PeerState) -> PeerState:
    """Back to a newcomer's standing, but never to a *better* one (see module docstring)."""
    fresh = default_rating()
    rating = state.rating if ordinal(state.rating) < ordinal(fresh) else fresh
    return replace(state, rating=rating, bma=min(state.bma, 0.0), score=0.0)


def work_proof(state: PeerState, params: ScoringParams) -> float:
    """The peer's bias-corrected proof of work (``scoring.work.proof_of_work``)."""
    return proof_of_work(state.bma, state.evaluated_windows, params.indicator_alpha, params.proof_prior_windows)


def _evaluated(state: PeerState, outcome: Verdict, params: ScoringParams) -> PeerState:
    if outcome.rating is None or outcome.bma is None:
        raise ValueError("an evaluated outcome needs the new rating and bma")
    new = replace(state, rating=outcome.rating, bma=outcome.bma, inactive_windows=0,
                  evaluated_windows=state.evaluated_windows + 1)
    gate = work_gate(work_proof(new, params), params.proof_floor, params.proof_full)
    return replace(new, score=final_score(ordinal(outcome.rating), gate, outcome.sync, params.score_temperature))


def _unproductive(state: PeerState, outcome: Verdict, params: ScoringParams) -> PeerState:
    idle = replace(state, inactive_windows=state.inactive_windows + 1)
    if idle.inactive_windows > params.inactivity_reset_windows:
        return full_reset(idle)
    if outcome.kind is Outcome.INVALID:
        return replace(idle, score=0.0)
    return replace(idle, score=state.score * params.inactivity_decay)


def apply_penalties(state: PeerState, outcome: Verdict, params: ScoringParams) -> PeerState:
    """The peer's state after ``outcome``; ``state`` is not modified.

    A banned peer scores 0 and its upload, even if evaluated, changes nothing else; a copy
    found during a ban extends it.
    """
    if outcome.kind is Outcome.COPY:
        until = outcome.window + params.copy_ban_windows
        if state.banned_until_window is not None:
            until = max(until, state.banned_until_window)
        return replace(full_reset(state), inactive_windows=0, banned_until_window=until)
    if is_banned(state, outcome.window):
        return replace(state, score=0.0)
    if outcome.kind is Outcome.UNEVALUATED:
        return state
    if outcome.kind is Outcome.EVALUATED:
        return _evaluated(state, outcome, params)
    if outcome.kind in _DECAYING or outcome.kind is Outcome.INVALID:
        return _unproductive(state, outcome, params)
    raise ValueError(f"unknown outcome kind {outcome.kind!r}")
