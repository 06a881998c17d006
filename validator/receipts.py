"""Score receipts: one row per registered peer and window, whatever happened to it.

A receipt holds everything needed to re-check a score: the upload (hash, size, store
time), the filters passed or the reason rejected, the pages and seed of the evaluation,
the base model hash, the exact losses and the first-order estimate, the rating before and
after, the final score. The window's secret seed is stored with it but published only
once the window is scored (``Window.published_seed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from validator.combine import PeerOutcome, PeerPrev, WindowOutcome
from validator.evaluate import EvalResult
from validator.stage1 import Stage1Result
from validator.stage2 import Stage2Plan

#: Stage-1 checks in the order they run, recorded as passed for accepted peers.
STAGE1_FILTERS = ["registered", "not_banned", "on_time", "parse", "signature", "metadata", "sync",
                  "finite", "norm", "copy"]


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, tz=UTC)


def _rating(prev: PeerPrev, out: PeerOutcome) -> dict[str, Any]:
    return {"rating_mu_before": prev.mu, "rating_sigma_before": prev.sigma, "rating_mu_after": out.mu,
            "rating_sigma_after": out.sigma, "bma_after": out.bma, "final_score": out.score}


def build_receipts(
    window: int, s1: Stage1Result, plan: Stage2Plan, results: Mapping[str, EvalResult], outcome: WindowOutcome,
    *, prev: Mapping[str, PeerPrev], base_hash: str, seed_hex: str,
) -> list[dict[str, Any]]:
    """Receipts for every peer in ``outcome`` (all registered miners of the window)."""
    jobs = {j.hotkey: j for j in plan.jobs}
    receipts = []
    for hk, out in outcome.peers.items():
        r: dict[str, Any] = {"hotkey": hk, "status": out.status, "uid": out.uid, "base_model_hash": base_hash,
                             **_rating(prev[hk], out)}
        if hk in s1.accepted:
            cand = s1.accepted[hk]
            r.update(payload_hash=cand.payload_hash, upload_bytes=cand.size, uploaded_at=_ts(cand.uploaded_at),
                     filters_passed=STAGE1_FILTERS, random_page_ids=list(plan.random_page_ids),
                     random_seed_hex=seed_hex, sync_score=out.sync,
                     details={"norm": cand.decoded.norm, "steps_behind": cand.steps_behind,
                              "median_norm": s1.median_norm})
            if hk in jobs:
                r["assigned_page_ids"] = list(jobs[hk].assigned_page_ids)
                r["details"]["eval_step"] = jobs[hk].step
        if hk in results:
            res = results[hk]
            r.update(loss_before_assigned=res.loss_before_assigned, loss_after_assigned=res.loss_after_assigned,
                     loss_before_random=res.loss_before_random, loss_after_random=res.loss_after_random,
                     estimate=res.estimate, contribution=out.contribution, indicator=out.indicator,
                     eval_seconds=res.seconds)
            r["details"]["exact_change_random"] = res.loss_after_random - res.loss_before_random
            if res.page_losses and hk in jobs:
                r["details"]["assigned_pages"] = [
                    {"page": p, "before": b, "after": a}
                    for p, (b, a) in zip(jobs[hk].assigned_page_ids, res.page_losses, strict=True)]
        rej = s1.rejected.get(hk)
        if rej is not None:
            r.update(reject_reason=rej.reason, reject_detail=rej.detail or None, copy_of_hotkey=rej.copy_of,
                     payload_hash=rej.payload_hash, upload_bytes=rej.size, uploaded_at=_ts(rej.uploaded_at),
                     details={"norm": rej.norm} if rej.norm is not None else {})
        elif hk in outcome.broken:
            r.update(reject_reason="not_finite", reject_detail="loss after the evaluation step is not finite")
        elif hk in s1.accepted and hk not in results:
            r.update(reject_reason="evaluation_failed")
        receipts.append(r)
    return receipts
