"""OpenSkill ratings: turn each window's contribution scores into a persistent skill estimate.

One window's loss improvement is noisy (a few pages of data, one evaluation step), so the
incentive is not paid on it directly. As in Gauntlet (arXiv 2505.21684) every evaluated
peer is a one-player team in a Plackett-Luce match (Weng & Lin 2011, via ``openskill``),
ranked by contribution score (higher score = better rank, equal scores share a rank; scores
are compared at ``TIE_RESOLUTION`` so that float noise between identical directions, e.g. a
delta and k times it, cannot decide who wins: far below any measurable loss difference),
with ``beta = 7`` and ``tau = 0.1`` (``ScoringParams``). Only the *order* of the scores
enters, so one peer's outlier magnitude cannot swamp the others.

The conservative estimate ``ordinal = mu - 3·sigma`` is what the final score uses: a new
peer starts at the model's default (mu = 25, sigma = 25/3, ordinal 0) and must win
windows to earn anything. A window with fewer than two evaluated peers is no match, and
ratings are left unchanged. Peers are fed to the model in hotkey order and the model has
no hidden randomness, so the update is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from openskill.models import PlackettLuce

from protocol.hparams import ScoringParams

__all__ = [
    "DEFAULT_MU",
    "DEFAULT_SIGMA",
    "TIE_RESOLUTION",
    "Rating",
    "default_rating",
    "ordinal",
    "plackett_luce",
    "rank_scores",
    "update_ratings",
]

#: openskill's Weng-Lin defaults (mu = 25, sigma = mu / 3), so a new peer's ordinal is 0.
DEFAULT_MU = 25.0
DEFAULT_SIGMA = DEFAULT_MU / 3
#: Contribution scores closer than this share a rank (relative improvements are ~1e-4..1e-2;
#: rounding noise of equal directions is ~1e-8).
TIE_RESOLUTION = 1e-7


@dataclass(frozen=True, slots=True)
class Rating:
    """A peer's skill belief: mean ``mu`` and uncertainty ``sigma``."""

    mu: float = DEFAULT_MU
    sigma: float = DEFAULT_SIGMA


def default_rating() -> Rating:
    """Where a peer never rated before starts."""
    return Rating(DEFAULT_MU, DEFAULT_SIGMA)


def ordinal(r: Rating) -> float:
    """Conservative skill ``mu - 3·sigma`` (≈ 0 for a new peer)."""
    return r.mu - 3 * r.sigma


def plackett_luce(params: ScoringParams) -> PlackettLuce:
    """The rating model with this subnet's ``beta`` and ``tau`` and the default prior."""
    return PlackettLuce(
        mu=DEFAULT_MU, sigma=DEFAULT_SIGMA, beta=params.openskill_beta, tau=params.openskill_tau
    )


def rank_scores(scores: dict[str, float]) -> dict[str, int]:
    """Competition ranks, 1 = best: higher score is better, equal scores share the rank (1, 2, 2, 4).

    Scores are first rounded to multiples of :data:`TIE_RESOLUTION`.
    """
    ranks: dict[str, int] = {}
    rank, last = 0, math.nan
    grid = {hk: round(score / TIE_RESOLUTION) for hk, score in scores.items()}
    for position, (hotkey, score) in enumerate(sorted(grid.items(), key=lambda kv: (-kv[1], kv[0])), 1):
        if score != last:
            rank, last = position, score
        ranks[hotkey] = rank
    return ranks


def update_ratings(
    prev: dict[str, Rating], scores: dict[str, float], params: ScoringParams
) -> dict[str, Rating]:
    """New ratings for every peer in ``prev`` or ``scores`` after one window's match.

    Peers in ``scores`` but not ``prev`` start at :func:`default_rating`; peers not scored
    this window keep their rating (inactivity is penalised in ``scoring.final``). Scores
    must be finite: a broken measurement must be rejected before it reaches the ranking.
    """
    for hotkey, score in scores.items():
        if not math.isfinite(score):
            raise ValueError(f"score of {hotkey!r} is not finite ({score})")
    new = dict(prev)
    for hotkey in scores:
        new.setdefault(hotkey, default_rating())
    if len(scores) < 2:
        return new
    hotkeys = sorted(scores)
    ranks = rank_scores(scores)
    model = plackett_luce(params)
    teams = [[model.rating(mu=new[h].mu, sigma=new[h].sigma)] for h in hotkeys]
    rated = model.rate(teams, ranks=[ranks[h] for h in hotkeys])
    for hotkey, (player,) in zip(hotkeys, rated, strict=True):
        new[hotkey] = Rating(float(player.mu), float(player.sigma))
    return new
