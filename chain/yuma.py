"""Yuma Consensus, as a pure function over numpy arrays (no chain, no I/O).

The local chain calls :func:`yuma` at every tempo boundary; tests call it directly on
hand-computed cases. The variant implemented is **Yuma v2 with EMA bonds** (the
subtensor epoch before liquid alpha), simplified where the simplification does not
change who gets paid in a development network:

1. Only validators with a permit count; their stake is normalised to sum to 1.
   Each validator's weight row is normalised to sum to 1; self-weights are dropped.
2. **Consensus** per miner j: the highest weight ``w`` such that validators holding
   at least ``kappa`` (0.5) of the stake set a weight >= ``w`` on j (the stake-weighted
   ``kappa``-quantile, taken from the top). A minority cannot lift it.
3. **Clipping**: every weight is clipped to consensus, ``W' = min(W, C)``. A colluding
   minority's inflated weight for a friend is therefore cut back to what the majority
   gave that miner.
4. **Ranks and incentive**: ``R_j = sum_i S_i W'_ij``; ``incentive = R / sum(R)``.
5. **Bonds (EMA)**: ``dB = S_i W'_ij`` column-normalised; ``B = a dB + (1 - a) B_prev``,
   column-normalised again (``bond_alpha`` = 0.1 as subtensor's default bonds moving
   average of 0.9). First epoch: ``B_prev = 0`` so ``B = dB``.
6. **Dividends**: ``D_i = sum_j B_ij incentive_j``, normalised.
7. **Emission split** of the epoch's emission ``E``: 41% to miners by incentive, 41% to
   validators by dividends, 18% to the subnet owner (subtensor's split since dTAO).
   When no validator set a usable weight, incentive is zero, the validator half goes
   by stake and the miner half is not emitted.

Not modelled: liquid alpha / Yuma v3 per-bond alpha, activity cutoff, u16 quantisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "YumaResult",
    "stake_weighted_consensus",
    "yuma",
]

KAPPA = 0.5
BOND_ALPHA = 0.1
MINER_SHARE = 0.41
VALIDATOR_SHARE = 0.41
OWNER_SHARE = 0.18


@dataclass(frozen=True)
class YumaResult:
    """Per-uid outputs of one epoch (arrays of length n) plus the owner's cut."""

    consensus: np.ndarray
    clipped_weights: np.ndarray
    ranks: np.ndarray
    incentive: np.ndarray
    bonds: np.ndarray
    dividends: np.ndarray
    emission: np.ndarray
    owner_emission: float


def _normalize(v: np.ndarray) -> np.ndarray:
    total = float(v.sum())
    return v / total if total > 0 else np.zeros_like(v)


def _col_normalize(m: np.ndarray) -> np.ndarray:
    sums = m.sum(axis=0, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def stake_weighted_consensus(weights: np.ndarray, stake: np.ndarray, kappa: float = KAPPA) -> np.ndarray:
    """For each column, the highest weight backed by validators holding >= kappa of stake.

    ``weights`` is (validators x miners), ``stake`` sums to 1 over validators.
    """
    n = weights.shape[1]
    out = np.zeros(n)
    # A tiny tolerance so stakes like 0.3 + 0.2 still reach kappa = 0.5 exactly.
    eps = 1e-9
    for j in range(n):
        col = weights[:, j]
        for w in sorted(set(col.tolist()), reverse=True):
            if w <= 0:
                break
            if float(stake[col >= w].sum()) + eps >= kappa:
                out[j] = w
                break
    return out


def yuma(
    weights: np.ndarray,
    stake: np.ndarray,
    permit: np.ndarray | None = None,
    bonds_prev: np.ndarray | None = None,
    *,
    epoch_emission: float = 1.0,
    kappa: float = KAPPA,
    bond_alpha: float = BOND_ALPHA,
) -> YumaResult:
    """Run one epoch.

    ``weights`` is (n x n): row i is what uid i set (rows of non-validators are ignored);
    ``stake`` is per uid; ``permit`` marks validator permits (default: stake > 0);
    ``bonds_prev`` is the previous epoch's (n x n) bond matrix or None.
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    n = w.shape[0]
    if w.shape != (n, n):
        raise ValueError(f"weights must be square (n x n), got {w.shape}")
    s = np.asarray(stake, dtype=np.float64)
    p = (s > 0) if permit is None else np.asarray(permit, dtype=bool)
    if s.shape != (n,) or p.shape != (n,):
        raise ValueError("stake and permit must have one entry per uid")
    if np.any(w < 0) or np.any(s < 0):
        raise ValueError("weights and stake must be non-negative")

    s = _normalize(np.where(p, s, 0.0))
    np.fill_diagonal(w, 0.0)
    w[~p, :] = 0.0
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-30)

    consensus = stake_weighted_consensus(w, s, kappa)
    clipped = np.minimum(w, consensus[None, :])
    ranks = s @ clipped
    incentive = _normalize(ranks)

    delta = _col_normalize(s[:, None] * clipped)
    prev = np.zeros((n, n)) if bonds_prev is None else np.asarray(bonds_prev, dtype=np.float64)
    if prev.shape != (n, n):
        prev = np.zeros((n, n))  # the subnet grew or shrank: bonds restart
    bonds = _col_normalize(bond_alpha * delta + (1 - bond_alpha) * prev)
    dividends = _normalize(bonds @ incentive)

    emission = np.zeros(n)
    if incentive.sum() > 0:
        emission += MINER_SHARE * epoch_emission * incentive
        emission += VALIDATOR_SHARE * epoch_emission * dividends
    else:
        emission += VALIDATOR_SHARE * epoch_emission * s
    return YumaResult(
        consensus=consensus,
        clipped_weights=clipped,
        ranks=ranks,
        incentive=incentive,
        bonds=bonds,
        dividends=dividends,
        emission=emission,
        owner_emission=OWNER_SHARE * epoch_emission,
    )
