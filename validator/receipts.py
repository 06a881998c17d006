"""Score receipts: one row per registered peer and window, whatever happened to it.

A receipt holds everything needed to re-check a score: the upload (hash, size, store
time), the filters passed or the reason rejected, the pages and seed of the evaluation, the
window's public beacon and control pages (``details["beacon"]``, ``details["control_pages"]``),
the base model hash, the exact losses and the first-order estimate, the rating before and
after, the final score. The window's secret seed is stored with it but published only
once the window is scored (``Window.published_seed``).

``details["setup"]`` (:func:`evaluation_setup` plus the per-peer part) names what is not a
public input but still decides the numbers: the hyper-parameters' digest, model preset and
seed, the page store's digest, the batch layout, device class and dtype, who evaluated
(validator or worker), the evaluation step and its size factor, and the store the upload was
read from. With it, ``gauntlet audit`` recomputes a receipt from public data alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from protocol.hparams import HParams
from scoring.filters import Rejection
from scoring.final import PeerState
from validator.combine import PeerOutcome, WindowScores
from validator.db.models import Evaluation
from validator.evaluate import EvalResult
from validator.stage1 import Candidate, Rejected, Stage1Result
from validator.stage2 import Stage2Plan

#: Stage-1 checks in the order they run, recorded as passed for accepted peers.
STAGE1_FILTERS = ["registered", "not_banned", "on_time", "parse", "signature", "metadata", "sync",
                  "finite", "norm", "copy"]


#: How Stage 2 batches pages (``validator.evaluate.WindowEvaluator``); sequences in another batch can
#: differ in the last float bits, so an auditor states its tolerance against this layout.
BATCH_LAYOUT = ("after: the peer's assigned pages, the window's control pages, then its random pages in one "
                "forward; before: per page id, random pages first, then control pages, then each peer's uncached "
                "assigned pages, peers in the plan's "
                "evaluation order (validator.stage2.evaluation_order)")


def hparams_digest(hp: HParams) -> str:
    """sha256 of the canonical hyper-parameters: an auditor must score under the same ones."""
    canonical = json.dumps(hp.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def evaluation_setup(hp: HParams, pages: object) -> dict[str, Any]:
    """The per-window part of ``details["setup"]`` (see the module docstring)."""
    manifest = getattr(pages, "manifest", None)
    return {"spec_version": hp.spec_version, "hparams_digest": hparams_digest(hp), "model": hp.model,
            "model_seed": hp.model_seed, "data_digest": getattr(manifest, "digest", None),
            "seq_len": hp.data.seq_len, "page_seqs": hp.data.page_seqs, "batch": BATCH_LAYOUT,
            "eval_eta": hp.scoring.eval_step_scale * hp.outer.lr, "size_rule": hp.scoring.eval_norm}


def _setup(base: Mapping[str, Any], step: float, url: str | None, res: EvalResult | None) -> dict[str, Any]:
    eta = float(base.get("eval_eta") or 0.0)
    out = {**base, "eval_step": step, "step_factor": step / eta if eta else None, "upload_url": url}
    if res is not None:
        out.update(device=res.device, dtype=res.dtype, evaluator=res.evaluator)
    return out


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, tz=UTC)


def _rating(r: Evaluation, prev: PeerState, out: PeerOutcome) -> None:
    r.rating_mu_before, r.rating_sigma_before = prev.rating.mu, prev.rating.sigma
    r.rating_mu_after, r.rating_sigma_after = out.state.rating.mu, out.state.rating.sigma
    r.bma_after, r.final_score = out.state.bma, out.state.score


def _accepted(r: Evaluation, cand: Candidate, s1: Stage1Result, plan: Stage2Plan, out: PeerOutcome,
              seed_hex: str) -> None:
    r.payload_hash, r.upload_bytes, r.uploaded_at = cand.payload_hash, cand.size, _ts(cand.uploaded_at)
    r.filters_passed, r.random_page_ids = list(STAGE1_FILTERS), list(plan.random_page_ids)
    r.random_seed_hex, r.sync_score = seed_hex, out.sync
    r.details = {"norm": cand.decoded.norm, "steps_behind": cand.steps_behind, "median_norm": s1.median_norm}
    if plan.beacon is not None:  # the public draw of the window (protocol.windows.beacon_block)
        r.details["beacon"] = {"block": plan.beacon.block, "hash": plan.beacon.hash.hex(),
                               "control_pages": list(plan.control_page_ids)}


def _measured(r: Evaluation, res: EvalResult, out: PeerOutcome, page_ids: Sequence[int] | None,
              plan: Stage2Plan) -> None:
    r.loss_before_assigned, r.loss_after_assigned = res.loss_before_assigned, res.loss_after_assigned
    r.loss_before_random, r.loss_after_random = res.loss_before_random, res.loss_after_random
    r.estimate, r.contribution, r.indicator, r.eval_seconds = res.estimate, out.contribution, out.indicator, res.seconds
    r.details["exact_change_random"] = res.loss_after_random - res.loss_before_random
    if res.control_losses:  # what the per-page proof of work is measured against
        r.details["control_pages"] = [{"page": p, "before": b, "after": a}
                                      for p, (b, a) in zip(plan.control_page_ids, res.control_losses, strict=True)]
    if res.reach_losses:  # the random loss further along the direction (scoring.loss.reach_contribution)
        r.details["reach"] = [{"multiple": c, "after": a} for c, a in res.reach_losses]
    if res.page_losses and page_ids is not None:
        r.details["assigned_pages"] = [{"page": p, "before": b, "after": a}
                                       for p, (b, a) in zip(page_ids, res.page_losses, strict=True)]


def _rejected(r: Evaluation, rej: Rejected) -> None:
    r.reject_reason, r.reject_detail, r.copy_of_hotkey = rej.reason, rej.detail or None, rej.copy_of
    r.payload_hash, r.upload_bytes, r.uploaded_at = rej.payload_hash, rej.size, _ts(rej.uploaded_at)
    r.details = {"norm": rej.norm} if rej.norm is not None else {}


def build_receipts(
    window: int, s1: Stage1Result, plan: Stage2Plan, results: Mapping[str, EvalResult], outcome: WindowScores,
    *, prev: Mapping[str, PeerState], base_hash: str, seed_hex: str, setup: Mapping[str, Any] | None = None,
) -> list[Evaluation]:
    """Receipts (transient ``evaluations`` rows) for every peer in ``outcome`` (all registered miners).

    ``setup`` is :func:`evaluation_setup`'s dict; each evaluated peer's receipt gets it with its own part.
    """
    jobs = {j.hotkey: j for j in plan.jobs}
    receipts = []
    for hk, out in outcome.peers.items():
        r = Evaluation(window=window, hotkey=hk, status=out.status, uid=out.uid, base_model_hash=base_hash,
                       details={})
        _rating(r, prev[hk], out)
        job = jobs.get(hk)
        if hk in s1.accepted:
            _accepted(r, s1.accepted[hk], s1, plan, out, seed_hex)
            if job is not None:
                r.assigned_page_ids = list(job.assigned_page_ids)
                r.details["eval_step"] = job.step
                if setup is not None:
                    r.details["setup"] = _setup(setup, job.step, plan.remote[hk].url if hk in plan.remote else None,
                                                results.get(hk))
        if hk in results:
            _measured(r, results[hk], out, job.assigned_page_ids if job is not None else None, plan)
        rej = s1.rejected.get(hk)
        if rej is not None:
            _rejected(r, rej)
        elif hk in outcome.broken:
            r.reject_reason, r.reject_detail = Rejection.NOT_FINITE, "loss after the evaluation step is not finite"
        elif out.status == "unevaluated":
            r.details["unevaluated"] = "the window's Stage-2 time budget ran out first (validator.stage2)"
        elif hk in s1.accepted and hk not in results:
            r.reject_reason = Rejection.EVALUATION_FAILED
        receipts.append(r)
    return receipts
