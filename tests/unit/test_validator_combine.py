"""Window scoring glue: contributions, indicator, bma, ratings and penalties, hand-computed.

Run: ``pytest tests/unit/test_validator_combine.py -q``
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from protocol.hparams import HParams
from scoring.final import PeerState
from scoring.ratings import Rating
from validator.combine import combine_window, control_improvement, work_indicator
from validator.evaluate import EvalResult
from validator.stage1 import Candidate, Decoded, Rejected, Stage1Result

HP = HParams()
W = 10


def _cand(hk: str, behind: int = 0) -> Candidate:
    z = torch.zeros(1, 1)
    return Candidate(hk, 0, 1.0, "h", 10, behind, Decoded({}, z.long(), z, 1.0))


def _res(hk: str, ba: float, aa: float, br: float, ar: float) -> EvalResult:
    return EvalResult(hk, ba, aa, br, ar, estimate=0.0, seconds=0.0)


def test_two_evaluated_peers_and_every_penalty() -> None:
    s1 = Stage1Result(accepted={"a": _cand("a"), "b": _cand("b", behind=1)})
    s1.rejected = {
        "c": Rejected("c", 2, "missing"),
        "d": Rejected("d", 3, "copy", copy_of="a"),
        "e": Rejected("e", 4, "malformed"),
        "f": Rejected("f", 5, "late"),
    }
    prev = {hk: PeerState() for hk in "abcdef"}
    prev["c"] = PeerState(score=2.0)
    prev["e"] = PeerState(score=3.0)
    prev["f"] = PeerState(score=1.0, inactive_windows=3)  # 4th idle window in a row: full reset
    results = {
        "a": _res("a", 4.0, 3.0, 4.0, 3.6),  # assigned 0.25 > random 0.10 -> +1
        "b": _res("b", 4.0, 3.9, 4.0, 3.8),  # assigned 0.025 < random 0.05 -> -1
    }
    peers = combine_window(W, prev=prev, stage1=s1, results=results, hp=HP).peers
    out = {hk: p.state for hk, p in peers.items()}
    a, b = out["a"], out["b"]
    assert peers["a"].contribution == pytest.approx(0.1) and peers["b"].contribution == pytest.approx(0.05)
    assert peers["a"].indicator == 1 and peers["b"].indicator == -1
    assert a.bma == pytest.approx(0.05) and b.bma == pytest.approx(-0.05)  # 0.95*0 +- 0.05
    # Plackett-Luce, 2 players, mu=25, sigma^2 = (25/3)^2 + tau^2, beta = 7:
    # c = sqrt(2 sigma^2 + 2 beta^2) = 15.3918; winner mu += sigma^2/c * 0.5 = 2.2562.
    assert a.rating.mu == pytest.approx(27.2562, abs=1e-3) and b.rating.mu == pytest.approx(22.7438, abs=1e-3)
    # sigma' = sigma * sqrt(1 - gamma sigma^2/c^2 p(1-p)), gamma = sigma/c -> 8.1669
    assert a.rating.sigma == pytest.approx(8.1669, abs=1e-3)
    # a: ordinal 27.2562 - 3*8.1669 = 2.7555; first evaluated window, proof 0.05 / (1 - 0.95) = 1:
    # gate open, score = ordinal 2.7555 (in sync: sync = 1)
    assert a.evaluated_windows == 1
    assert a.score == pytest.approx(a.rating.mu - 3 * a.rating.sigma)
    assert a.score == pytest.approx(2.7555, abs=1e-3)
    assert peers["b"].sync == pytest.approx((1 - 1 / 5) ** 2.5)  # one window behind
    # b: indicator -1 after 4 virtual passes: proof 0.557951, below the 0.6 floor: gate shut
    assert b.rating.mu - 3 * b.rating.sigma < 0 and b.score == 0.0  # and its ordinal is negative: nothing
    assert out["c"].score == pytest.approx(1.5) and peers["c"].status == "missing"  # x0.75
    assert out["d"].score == 0.0 and out["d"].banned_until_window == W + HP.scoring.copy_ban_windows
    assert out["e"].score == 0.0 and peers["e"].status == "rejected"
    assert out["f"].score == 0.0 and out["f"].inactive_windows == 4


def test_the_proof_of_work_is_measured_against_the_public_control_pages() -> None:
    s1 = Stage1Result(accepted={"a": _cand("a"), "b": _cand("b")})
    prev = {hk: PeerState() for hk in "ab"}
    # Both pages improve 0.25 (before 4, after 3). The random pages improve 0.10 for both, so
    # against them both would pass; the control pages improved 0.20 for a (pass) and 0.30 for b (fail).
    page = ((4.0, 3.0), (4.0, 3.0))
    results = {
        "a": replace(_res("a", 4.0, 3.0, 4.0, 3.6), page_losses=page, control_losses=((5.0, 4.0), (5.0, 4.0))),
        "b": replace(_res("b", 4.0, 3.0, 4.0, 3.6), page_losses=page, control_losses=((5.0, 3.5), (5.0, 3.5))),
    }
    peers = combine_window(W, prev=prev, stage1=s1, results=results, hp=HP).peers
    assert peers["a"].indicator == 1 and peers["b"].indicator == -1
    assert peers["a"].contribution == peers["b"].contribution == pytest.approx(0.1)  # the score stays on random pages
    assert control_improvement(results["a"]) == pytest.approx(0.2)
    assert control_improvement(_res("c", 4.0, 3.0, 4.0, 3.6)) == pytest.approx(0.1)  # no control: the random pages
    broken = replace(_res("d", 4.0, 3.0, 4.0, 3.6), control_losses=((5.0, float("nan")),))
    s1.accepted["d"] = _cand("d")
    out = combine_window(W, prev={**prev, "d": PeerState()}, stage1=s1, results={**results, "d": broken}, hp=HP)
    assert "d" in out.broken


def test_the_rank_test_counts_the_control_pages_each_page_beats() -> None:
    # Pages improve 0.25 and 0.15; the four control pages 0.10, 0.20, 0.30, 0.05 (their mean 0.1625).
    r = replace(_res("a", 4.0, 3.0, 4.0, 3.6), page_losses=((4.0, 3.0), (4.0, 3.4)),
                control_losses=((4.0, 3.6), (4.0, 3.2), (4.0, 2.8), (4.0, 3.8)))
    # rank: 0.25 beats 3 of 4 -> +0.5; 0.15 beats 2 of 4 -> 0.0; mean +0.25.  mean test: +1 and -1 -> 0.
    assert work_indicator(r, "rank", 0.0) == pytest.approx(0.25)
    assert work_indicator(r, "mean", 0.0) == pytest.approx(0.0)
    rank = HP.override(**{"scoring.indicator_test": "rank"})
    s1 = Stage1Result(accepted={"a": _cand("a"), "b": _cand("b")})
    peers = combine_window(W, prev={"a": PeerState(), "b": PeerState()}, stage1=s1,
                           results={"a": r, "b": replace(r, hotkey="b")}, hp=rank).peers
    assert peers["a"].indicator == pytest.approx(0.25)


def test_non_finite_loss_is_rejected_not_scored() -> None:
    s1 = Stage1Result(accepted={"a": _cand("a"), "b": _cand("b")})
    results = {"a": _res("a", 4.0, float("nan"), 4.0, float("inf")), "b": _res("b", 4.0, 3.0, 4.0, 3.0)}
    outcome = combine_window(W, prev={"a": PeerState(), "b": PeerState()}, stage1=s1, results=results, hp=HP)
    assert outcome.broken == {"a"}
    assert outcome.peers["a"].status == "rejected" and outcome.peers["a"].state.score == 0.0


def test_aggregate_ranking_keeps_improving_peers_best_first() -> None:
    s1 = Stage1Result(accepted={k: _cand(k) for k in "abc"})
    results = {"a": _res("a", 4, 3, 4, 3.9), "b": _res("b", 4, 3, 4, 3.5), "c": _res("c", 4, 3, 4, 4.2)}
    outcome = combine_window(W, prev={k: PeerState() for k in "abc"}, stage1=s1, results=results, hp=HP)
    assert outcome.ranked_for_aggregate(5) == ["b", "a"]  # c made the random loss worse
    assert outcome.ranked_for_aggregate(1) == ["b"]


@pytest.mark.parametrize("reason", ["foreign", "wrong_window"])
def test_uploads_the_hotkey_did_not_sign_for_w_count_as_missing(reason: str) -> None:
    """Planted bytes (another's signature, or the hotkey's own for another window) never ban or zero it."""
    before = PeerState(Rating(28.0, 6.0), bma=0.3, score=2.0, inactive_windows=0)
    s1 = Stage1Result(rejected={"v": Rejected("v", 1, reason, "signed by someone else")})
    v = combine_window(W, prev={"v": before}, stage1=s1, results={}, hp=HP).peers["v"].state
    assert v.banned_until_window is None and (v.rating, v.bma) == (Rating(28.0, 6.0), 0.3)
    assert v.score == pytest.approx(2.0 * HP.scoring.inactivity_decay) and v.inactive_windows == 1
