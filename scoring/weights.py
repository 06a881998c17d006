"""Chain weights from final scores.

What it decides: how the subnet's emission is split among miners (and an optional burn).

* Only the ``top_n`` best scores (default 32) are paid: the long tail of barely-positive
  peers would otherwise dilute the incentive to be among the peers actually aggregated
  (reference: 20 aggregated + 10 reserves). Ties at the cut-off go to the lower uid, so the
  result is deterministic.
* Weights are proportional to ``score ** power`` (default 1: linear in the score, unlike
  the reference's fixed rank ramp, whose reserve tier share was mis-computed — notes).
* With ``burn_uid`` set, it receives ``burn_fraction`` and the miners share the rest; when
  no miner has a positive score everything goes to the burn uid (or nothing is set at all
  if there is none), so emission never rewards a zero score. ``burn_fraction`` without a
  ``burn_uid`` has no recipient and is ignored. A burn uid's own score is never counted.
* Non-finite or negative scores count as zero.

``to_u16`` converts to the chain's format: uids ascending, the largest weight mapped to
65535 and the others scaled and rounded (the chain renormalises by the sum).
"""

from __future__ import annotations

import math

from protocol.hparams import WeightParams

__all__ = ["U16_MAX", "compute_weights", "to_u16"]

U16_MAX = 65535


def _payable(scores: dict[int, float], burn_uid: int | None) -> list[tuple[int, float]]:
    return [
        (uid, score)
        for uid, score in scores.items()
        if uid != burn_uid and math.isfinite(score) and score > 0
    ]


def compute_weights(scores: dict[int, float], params: WeightParams) -> dict[int, float]:
    """Normalised weights (summing to 1, or empty) keyed by uid; zero-weight uids are omitted."""
    payable = sorted(_payable(scores, params.burn_uid), key=lambda us: (-us[1], us[0]))[: params.top_n]
    top = payable[0][1] if payable else 0.0
    # Divide by the top score before the power so large or tiny scores cannot over/underflow.
    raw = {uid: (score / top) ** params.power for uid, score in payable}
    total = sum(raw.values())
    if total <= 0 or not math.isfinite(total):
        return {params.burn_uid: 1.0} if params.burn_uid is not None else {}
    burn = params.burn_fraction if params.burn_uid is not None else 0.0
    weights = {uid: (1.0 - burn) * value / total for uid, value in raw.items() if value > 0}
    if burn > 0 and params.burn_uid is not None:
        weights[params.burn_uid] = burn
    return {uid: w for uid, w in sorted(weights.items()) if w > 0}


def to_u16(weights: dict[int, float]) -> tuple[list[int], list[int]]:
    """``(uids, values)`` as the chain expects: uids ascending, max weight → 65535."""
    for uid, w in weights.items():
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"weight of uid {uid} is invalid ({w})")
    uids = sorted(weights)
    peak = max(weights.values(), default=0.0)
    if peak <= 0:
        return uids, [0] * len(uids)
    return uids, [round(weights[uid] / peak * U16_MAX) for uid in uids]
