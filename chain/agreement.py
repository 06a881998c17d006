"""How far validators agree: rank correlation and overlap of weight vectors, and Yuma validator trust.

Pure numpy, no chain: the localnet's live view, the end-to-end tests and the agreement
benchmark all measure with these. Validator trust is what Yuma pays validators by: the
share of a validator's (row-normalised) weight that survives clipping to the stake-weighted
consensus, so 1.0 means it never gave a miner more than the majority did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from chain.yuma import KAPPA, stake_weighted_consensus

__all__ = [
    "Agreement",
    "ValidatorStanding",
    "pairwise_agreement",
    "spearman",
    "standings",
    "validator_trust",
    "weight_overlap",
    "weight_vector",
]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho with average ranks for ties; 1.0 when both vectors are constant, 0.0 if one is."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("spearman needs two vectors of the same length")
    rx, ry = _ranks(x), _ranks(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return 1.0 if sx == sy else 0.0
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))


def weight_vector(weights: Mapping[int, float], uids: Sequence[int]) -> list[float]:
    """A validator's weights over ``uids`` (missing uids weigh 0), normalised to sum 1."""
    v = np.array([float(weights.get(u, 0.0)) for u in uids])
    total = v.sum()
    return (v / total).tolist() if total > 0 else v.tolist()


def validator_trust(rows: Mapping[int, Sequence[float]], stakes: Mapping[int, float],
                    kappa: float = KAPPA) -> dict[int, float]:
    """Per validator uid: the part of its normalised weights under the stake-weighted consensus."""
    vids = sorted(rows)
    if not vids:
        return {}
    w = np.array([rows[v] for v in vids], dtype=np.float64)
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-30)
    s = np.array([stakes.get(v, 0.0) for v in vids], dtype=np.float64)
    s = s / s.sum() if s.sum() > 0 else s
    consensus = stake_weighted_consensus(w, s, kappa)
    clipped = np.minimum(w, consensus[None, :])
    return {v: float(clipped[i].sum()) for i, v in enumerate(vids)}


def weight_overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Share of emission two validators give to the same miners: ``sum(min(a_i, b_i))`` of normalised rows.

    1.0 for identical splits, 0.0 for disjoint ones. Unlike rank correlation it is not moved
    by a miner both validators pay almost nothing (one pays it 2 %, the other 0 %, costs 0.02),
    which is what Yuma's clipping also looks at: weight mass above the consensus is lost.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("weight_overlap needs two vectors of the same length")
    sx, sy = x.sum(), y.sum()
    if sx <= 0 or sy <= 0:
        return 1.0 if sx == sy else 0.0
    return float(np.minimum(x / sx, y / sy).sum())


class Agreement(NamedTuple):
    """Two validators' weights in one epoch: rank correlation and shared weight mass."""

    epoch: int
    a: str
    b: str
    rho: float
    overlap: float


def pairwise_agreement(weights: Mapping[str, Mapping[int, Mapping[int, float]]], uids: Sequence[int]
                       ) -> list[Agreement]:
    """One :class:`Agreement` for every pair of validators and every epoch both set weights in.

    ``weights`` maps validator -> epoch (window) -> {uid: weight}; both measures are over
    ``uids`` (the miners).
    """
    out = []
    names = sorted(weights)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for epoch in sorted(set(weights[a]) & set(weights[b])):
                va, vb = weight_vector(weights[a][epoch], uids), weight_vector(weights[b][epoch], uids)
                out.append(Agreement(epoch, a, b, spearman(va, vb), weight_overlap(va, vb)))
    return out


class ValidatorStanding(NamedTuple):
    """One validator as the chain shows it: stake, Yuma trust, and agreement with a reference validator."""

    hotkey: str
    uid: int
    stake: float
    has_weights: bool
    validator_trust: float | None
    overlap: float | None  # weight_overlap with the reference validator's row (None: either has none)
    rho: float | None  # spearman with the reference validator's row


def standings(uids: Sequence[int], hotkeys: Sequence[str], stakes: Sequence[float],
              onchain: Mapping[int, Mapping[int, float]], validators: set[str], reference: str | None
              ) -> list[ValidatorStanding]:
    """Every declared validator on the metagraph, highest stake first, measured over the miners' uids.

    ``onchain`` is the chain's weights (validator uid -> {uid: weight}); ``reference`` the hotkey the
    overlap and rho are taken against (the validator asking).
    """
    uid_of = {hk: uid for uid, hk in zip(uids, hotkeys, strict=True)}
    stake_of = {uid: float(st) for uid, st in zip(uids, stakes, strict=True)}
    vuids = {hk: uid_of[hk] for hk in validators if hk in uid_of}
    miners = [u for u in uids if u not in set(vuids.values())]
    rows = {uid: weight_vector(onchain[uid], miners) for uid in vuids.values() if onchain.get(uid)}
    trust = validator_trust(rows, stake_of)
    ref = rows.get(vuids[reference]) if reference in vuids else None
    out = []
    for hk, uid in sorted(vuids.items(), key=lambda kv: (-stake_of[kv[1]], kv[0])):
        row = rows.get(uid)
        both = row is not None and ref is not None
        out.append(ValidatorStanding(hk, uid, stake_of[uid], row is not None, trust.get(uid),
                                     weight_overlap(ref, row) if both else None,
                                     spearman(ref, row) if both else None))
    return out

