"""Turn a window's measurements into new peer state: scores, ratings, penalties, bans.

The only module of validator/ that calls the pure scoring functions (``scoring.*``): they
take previous state, this window's measurements and parameters and return new values; this
file maps DB rows in and :class:`PeerOutcome` rows out, with no I/O of its own.

Per registered peer, exactly one of:

* **evaluated** (passed both stages): contribution = best relative improvement of the random
  loss at the evaluation step and its ``eval_reach`` multiples along the delta, sized by the size
  rule (``scoring.scale``, ``scoring.loss.reach_contribution``); indicator = the per-page proof of
  work against the window's public control pages at the evaluation step (:func:`work_indicator`:
  packaged, each assigned page's rank among the control pages); bma <- (1-a) bma + a indicator;
  the OpenSkill (Plackett-Luce) update ranks all evaluated peers of the window by contribution;
  final = max(0, ordinal) x work gate(bias-corrected bma) x sync_score, or exp(ordinal / T) with
  ``score_temperature`` (``scoring.final``).
* otherwise a ``scoring.final.Verdict`` chosen from the stored reason (missing /
  timeout / storage unavailable / foreign / wrong window -> missing; late / early -> late;
  out_of_sync; copy or replay -> copy; our own evaluation failure -> inactive; anything
  else -> invalid), and
  ``scoring.final.apply_penalties`` applies the documented constants (x0.75 decay, reset
  after 3 idle windows, 0 for invalid, 200-window ban for copies).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from protocol.hparams import HParams
from scoring.filters import Rejection
from scoring.final import PeerState, Verdict
from validator.evaluate import EvalResult
from validator.stage1 import Stage1Result

COPY_REASONS = frozenset({Rejection.COPY, Rejection.REPLAY})
#: Reasons judged like an absent upload. ``foreign`` and ``wrong_window`` are here because the
#: bytes were not signed by this hotkey for this window: anyone with write access to the
#: miner's store could have planted them over its real upload (``scoring.filters.Rejection``).
MISSING_REASONS = frozenset({Rejection.MISSING, Rejection.TIMEOUT, Rejection.STORAGE_UNAVAILABLE, Rejection.FOREIGN,
                             Rejection.WRONG_WINDOW})


@dataclass(frozen=True, slots=True)
class PeerOutcome:
    """A registered peer after one window: its new state (``scoring.final.PeerState``) and the measurements."""

    uid: int | None
    status: str  # accepted | rejected | missing | unevaluated (the receipt's status)
    state: PeerState
    contribution: float | None = None
    indicator: float | None = None
    sync: float | None = None


@dataclass
class WindowScores:
    """Every registered peer's :class:`PeerOutcome` of one window."""

    peers: dict[str, PeerOutcome] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # evaluated, but the loss became non-finite

    def ranked_for_aggregate(self, limit: int) -> list[str]:
        """Evaluated peers that improved the random loss and earn a score (proved their work), best first."""
        ok = [(hk, p) for hk, p in self.peers.items()
              if p.status == "accepted" and (p.contribution or 0.0) > 0.0 and p.state.score > 0.0]
        ok.sort(key=lambda e: (-e[1].state.score, -(e[1].contribution or 0.0), e[0]))
        return [hk for hk, _ in ok[:limit]]


def _verdict(window: int, reason: Rejection) -> Verdict:
    """The ``scoring.final.Verdict`` of a peer that was not evaluated."""
    if reason in MISSING_REASONS:
        return Verdict.missing(window)
    if reason in (Rejection.LATE, Rejection.EARLY):
        return Verdict.late(window)
    if reason == Rejection.OUT_OF_SYNC:
        return Verdict.out_of_sync(window)
    if reason in COPY_REASONS:
        return Verdict.copy(window, reason)
    if reason == Rejection.EVALUATION_FAILED:  # the validator's failure, not the peer's
        return Verdict.inactive(window)
    return Verdict.invalid(window, reason)


def _measure(stage1: Stage1Result, results: Mapping[str, EvalResult]
             ) -> tuple[dict[str, EvalResult], dict[str, float], set[str]]:
    """Evaluated peers with finite losses, their contributions, and the peers whose delta broke the model.

    A loss that is not finite at the evaluation step breaks the model; further along the direction
    (``reach_losses``) it only means the direction stopped helping there, and counts as no gain.
    """
    import math

    from scoring import loss

    evaluated: dict[str, EvalResult] = {}
    contributions: dict[str, float] = {}
    broken: set[str] = set()
    for hk, r in results.items():
        if hk not in stage1.accepted:
            continue
        try:
            further = [a for _c, a in r.reach_losses if math.isfinite(a)]
            contributions[hk] = loss.reach_contribution(r.loss_before_random, r.loss_after_random, further)
            loss.relative_improvement(r.loss_before_assigned, r.loss_after_assigned)
            control_improvements(r)
            evaluated[hk] = r
        except ValueError:  # the loss after the step is not finite
            broken.add(hk)
    return evaluated, contributions, broken


def control_improvements(r: EvalResult) -> list[float]:
    """What each assigned page's improvement must beat: the public control pages', at the same step, per page.

    Every validator of the window measures the same control pages (``protocol.pages.control_pages``)
    against the same theta, so they reach the same proof-of-work verdict; a validator's own random
    pages would make the gate, and with it each peer's pay, differ from validator to validator.
    A result without control losses (a worker of an older version) falls back to the random pages.
    """
    from scoring import loss

    if r.control_losses:
        return [loss.relative_improvement(b, a) for b, a in r.control_losses]
    return [loss.contribution(r.loss_before_random, r.loss_after_random)]


def control_improvement(r: EvalResult) -> float:
    """The control pages' improvement as one measurement (their mean loss before and after)."""
    from scoring import loss

    if r.control_losses:
        n = len(r.control_losses)
        return loss.relative_improvement(sum(b for b, _ in r.control_losses) / n, sum(a for _, a in r.control_losses) / n)
    return loss.contribution(r.loss_before_random, r.loss_after_random)


def work_indicator(r: EvalResult, test: str, margin: float) -> float:
    """This window's proof-of-work indicator (``scoring.indicator_test``: ``mean`` or ``rank``, ``scoring.loss``)."""
    from scoring import loss

    pages = ([loss.relative_improvement(b, a) for b, a in r.page_losses] if r.page_losses
             else [loss.relative_improvement(r.loss_before_assigned, r.loss_after_assigned)])
    return loss.work_indicator(test, pages, control_improvements(r), control_improvement(r), margin)


def combine_window(
    window: int, *, prev: Mapping[str, PeerState], stage1: Stage1Result, results: Mapping[str, EvalResult],
    hp: HParams, unevaluated: Collection[str] = (),
) -> WindowScores:
    """New state of every peer in ``prev`` (all registered miners) after ``window``.

    ``unevaluated``: accepted peers Stage 2 had no time for; their state is left as it was.
    """
    from scoring import final as fin
    from scoring import loss, ratings

    sp = hp.scoring
    evaluated, contributions, broken = _measure(stage1, results)
    new_ratings = ratings.update_ratings(
        {hk: prev[hk].rating for hk in evaluated}, contributions, sp)
    out = WindowScores(broken=broken)
    for hk, p in prev.items():
        rej = stage1.rejected.get(hk)
        uid = rej.uid if rej is not None else (stage1.accepted[hk].uid if hk in stage1.accepted else None)
        ind = sync = None
        if hk in evaluated:
            r = evaluated[hk]
            ind = work_indicator(r, sp.indicator_test, sp.indicator_margin)  # per page (scoring.loss)
            sync = fin.sync_score(stage1.accepted[hk].steps_behind, sp.sync_max_behind, sp.sync_exponent)
            verdict = Verdict.evaluated(window, new_ratings[hk], loss.update_bma(p.bma, ind, sp.indicator_alpha), sync)
            status = "accepted"
        elif hk in unevaluated and hk in stage1.accepted and hk not in results:
            verdict = Verdict.unevaluated(window)
            status = "unevaluated"
        else:
            reason = rej.reason if rej is not None else (Rejection.NOT_FINITE if hk in broken else Rejection.EVALUATION_FAILED)
            verdict = _verdict(window, reason)
            status = "missing" if reason == Rejection.MISSING else "rejected"
        out.peers[hk] = PeerOutcome(uid, status, fin.apply_penalties(p, verdict, sp), contributions.get(hk),
                                    None if ind is None else float(ind), sync)
    return out
