"""Stage 2's time budget: evaluation order, where the budget ends, and what is left unevaluated.

Run: ``pytest tests/unit/test_validator_budget.py -q``
"""

from __future__ import annotations

from protocol.hparams import HParams
from scoring.final import Outcome, PeerState, Verdict, apply_penalties
from scoring.ratings import Rating
from validator.stage2 import budget_end, evaluation_order

HP = HParams().override(**{"windows.publish_timeout_s": 600.0, "scoring.eval_reserve_fraction": 0.25})


def test_best_previous_scores_first_then_a_secret_order() -> None:
    hks = [f"hk{i}" for i in range(10)]
    scores = {"hk3": 0.9, "hk7": 0.5, "hk1": 0.5, "hk9": 0.0}
    a = evaluation_order(hks, scores, seed=b"a" * 32, top=2)
    assert a[:2] == ["hk3", "hk1"]  # ties by hotkey
    assert sorted(a) == sorted(hks) and len(set(a)) == 10
    b = evaluation_order(hks, scores, seed=b"b" * 32, top=2)
    assert a[:2] == b[:2] and a[2:] != b[2:]  # the rest moves with the secret seed
    assert evaluation_order(hks, scores, seed=b"a" * 32, top=2) == a  # deterministic given the seed
    assert evaluation_order(hks, {}, seed=b"a" * 32, top=5)[0] in hks  # nobody scored yet: all drawn


def test_budget_ends_before_the_publish_deadline_or_lasts_as_long_when_late() -> None:
    assert budget_end(1000.0, 2000.0, HP) == 2000.0 - 150.0  # a quarter of the timeout kept for publishing
    assert budget_end(1900.0, 2000.0, HP) == 1900.0 + 450.0  # already past: the usual length from now


def test_an_unevaluated_peer_keeps_its_standing() -> None:
    state = PeerState(Rating(30.0, 4.0), bma=0.4, score=1.7, inactive_windows=2)
    assert apply_penalties(state, Verdict.unevaluated(5), HP.scoring) == state
    assert Verdict.unevaluated(5).kind is Outcome.UNEVALUATED
    missing = apply_penalties(state, Verdict.missing(5), HP.scoring)
    assert missing.score < state.score and missing.inactive_windows == 3  # unlike a missing upload
