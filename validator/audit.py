"""``gauntlet audit``: recompute a window's score receipts from public data, with the validator's own code.

Everything a receipt names is public once its window is scored: the upload (in the store the
miner committed on chain), theta_W (the subnet's shared history in the validators' stores, reached
the way every miner syncs: ``protocol.follow.Follower``), the assigned pages (public seed), the
random and control pages (the window's beacon, a block hash), the hyper-parameters and the
page store (their digests are in the receipt's ``setup``). The audit runs the validator's
pipeline on those inputs, one implementation for both:

1. collection and Stage 1: ``validator.collect.collect_window`` (store timestamps against the
   chain's block times, size cap, endpoint policy), then ``validator.stage1`` (wire parser,
   signature, metadata, sync against theta_W and the windows before it, decode, finiteness,
   norm bounds and median, copies within the window);
2. Stage 2: ``validator.stage2.plan_stage2`` (random pages, each peer's evaluation pages and
   step) and ``validator.evaluate.WindowEvaluator`` (loss before/after, first-order estimate,
   per-page losses) on theta_W;
3. ``validator.combine.combine_window`` (contribution, indicator, OpenSkill update, moving
   average, penalties, final score) from each peer's state before the window, rebuilt from its
   previous receipts, then ``validator.receipts.build_receipts``; the rebuilt receipt is compared
   field by field with the published one (``validator.audit_compare``).

What is not recomputable from public data, and is reported so rather than matched:

* copy or replay verdicts against *earlier* windows: they rest on the validator's in-memory
  sketches of up to ``copy_history_windows`` earlier windows' uploads; the verdict is taken as
  published (and the rest of the receipt recomputed given it). Copies *within* the window are
  recomputed with ``--all``.
* with ``--hotkey``: the window-wide inputs other peers contribute (their norms for the norm
  bounds and median, their Stage-2 results and ratings before, for the OpenSkill ranking) are
  their published receipts; ``--all`` recomputes every one of them, so the whole window's
  ranking is then recomputed from uploads alone.
* ``uid`` (registration at scoring time), ``weight`` (set on chain from all scores),
  ``eval_seconds`` (the validator's wall clock).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from chain.base import Chain
from protocol.follow import Follower, store_opener
from protocol.global_model import GlobalModel, OutOfSync
from protocol.hparams import HParams
from protocol.model import model_from_state
from protocol.peer_storage import EndpointPolicy
from protocol.storage import Storage, StorageError
from protocol.sync import SyncError
from scoring.filters import Rejection
from scoring.final import PeerState, is_banned
from scoring.ratings import DEFAULT_MU, DEFAULT_SIGMA, Rating
from validator.api.schemas import Receipt, receipt
from validator.audit_api import AuditError, ScoreApi
from validator.audit_compare import Check, Tolerances, compare_receipt, tolerances
from validator.collect import Collected, StorageCache, collect_window
from validator.combine import COPY_REASONS, combine_window
from validator.db.models import Evaluation
from validator.evaluate import EvalResult, PageSource, WindowEvaluator
from validator.receipts import build_receipts, evaluation_setup, hparams_digest
from validator.stage1 import (
    Candidate,
    Decoded,
    Rejected,
    Stage1Result,
    filter_norms,
    parse_uploads,
    run_stage1,
)
from validator.stage2 import Stage2Plan, plan_stage2
from validator.window import ModelNotReady, window_beacon, window_times

log = logging.getLogger(__name__)

#: Reasons of peers whose upload passed parsing and decoding (their norm entered the window's median).
PARSED_REASONS = frozenset({Rejection.NORM_TOO_LARGE, Rejection.NORM_TOO_SMALL, *COPY_REASONS})
_SOURCE_WINDOW = re.compile(r"@(\d+)")
#: Accepted peers the validator's Stage-2 time budget left out (``validator.stage2``): which ones
#: depends on its wall clock, so the audit takes them as published and evaluates the others.
UNEVALUATED = "unevaluated"
BUDGET = "which peers the Stage-2 time budget left out depends on the validator's wall clock"


@dataclass
class AuditInputs:
    """What the audit reads besides the score API: the chain, the consensus parameters, the pages."""

    hp: HParams
    chain: Chain
    netuid: int
    pages: PageSource
    codec_cfg: Any
    allow_local_storage: bool = False  # miners' and validators' file:// / loopback stores (local networks)
    loss_tolerance: float | None = None  # overrides the tolerance the receipts' setup implies
    per_peer_timeout_s: float = 60.0
    open_store: Callable[[str], Storage] | None = None  # validators' stores (tests inject)
    stores: StorageCache | None = None  # miners' stores (tests inject)


@dataclass
class AuditReport:
    window: int
    hotkeys: list[str]
    model_hash: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "mismatch" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"window": self.window, "hotkeys": self.hotkeys, "model_hash": self.model_hash, "ok": self.ok,
                "notes": self.notes, "checks": [c.as_dict() for c in self.checks]}


# --------------------------------------------------------------------------- public inputs


def follow_theta(inputs: AuditInputs, window: int) -> tuple[GlobalModel, dict[str, int]]:
    """theta_W from the subnet's published history, and the hashes of the windows a peer may lag behind by.

    The same follower miners run; the hashes of theta_{W-k} (k < ``sync_max_behind``) are what
    the validator's sync check accepts as "k steps behind".
    """
    hp = inputs.hp
    follower = Follower(hp, inputs.chain, inputs.netuid,
                        open_store=store_opener(allow_local=inputs.allow_local_storage, opener=inputs.open_store))
    model: GlobalModel | None = None
    hashes: dict[str, int] = {}
    for target in range(max(0, window - hp.scoring.sync_max_behind + 1), window + 1):
        try:
            model = follower.advance(model, target)
        except (OutOfSync, StorageError, SyncError) as exc:
            if target < window:  # nothing published that early (before genesis): start later
                continue
            raise AuditError(f"model theta_{window} is not reachable from the validators' stores: {exc}") from None
        if model.window == target:
            hashes[model.hash] = target
    if model is None or model.window != window:
        status = follower.status
        raise AuditError(f"model theta_{window} is not reachable from the validators' stores (history reaches "
                         f"window {model.window if model else None}: {status.state} {status.detail})".rstrip())
    return model, hashes


def previous_state(history: list[Receipt], window: int, hp: HParams) -> PeerState:
    """The peer's state before ``window`` as its earlier receipts publish it (``scoring.final`` rules).

    Rating, moving average and score are the last receipt's "after" values; the idle count and
    the ban follow from the receipts since the last evaluated window or copy, and the evaluated
    count (``bma``'s bias correction) from the receipts fetched: beyond the ~200 windows of
    history the audit reads, the correction differs from 1 by less than 1e-4.
    """
    rows = sorted((r for r in history if r.window < window), key=lambda r: -r.window)
    if not rows:
        return PeerState()
    last = rows[0]
    inactive = 0
    for r in rows:
        if r.status == "accepted" or r.reject_reason in COPY_REASONS:
            break
        if r.reject_reason != Rejection.BANNED and r.status != UNEVALUATED:  # these leave the count alone
            inactive += 1
    copies = [r.window for r in rows if r.reject_reason in COPY_REASONS]
    banned_until = max(copies) + hp.scoring.copy_ban_windows if copies else None
    evaluated = sum(1 for r in rows if r.status == "accepted")
    rating = Rating(_or(last.rating_mu_after, DEFAULT_MU), _or(last.rating_sigma_after, DEFAULT_SIGMA))
    return PeerState(rating, _or(last.bma_after, 0.0), _or(last.final_score, 0.0), inactive, banned_until, evaluated)


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def check_setup(receipts: Mapping[str, Receipt], hp: HParams, pages: PageSource) -> None:
    """Refuse to audit under other hyper-parameters or another page store than the validator's."""
    ours = evaluation_setup(hp, pages)
    for r in receipts.values():
        if r.setup is None:
            continue
        if r.setup.hparams_digest != hparams_digest(hp):
            raise AuditError(f"the receipts were scored under other hyper-parameters (digest "
                             f"{r.setup.hparams_digest[:12]}, ours {hparams_digest(hp)[:12]}): pass the subnet's "
                             "file with --hparams")
        if r.setup.data_digest and ours["data_digest"] and r.setup.data_digest != ours["data_digest"]:
            raise AuditError(f"the receipts were scored on another page store (digest {r.setup.data_digest[:12]}, "
                             f"ours {str(ours['data_digest'])[:12]})")
        return


# --------------------------------------------------------------------------- Stage 1


def collect(inputs: AuditInputs, window: int, targets: list[str], receipts: Mapping[str, Receipt]
            ) -> dict[str, Collected]:
    """Read the targets' uploads as the validator did; an upload the validator read and that is gone is an error."""
    commitments = inputs.chain.commitments(inputs.netuid)
    urls: dict[str, str] = {}
    for hk in targets:
        url = commitments.get(hk) or (receipts[hk].setup.upload_url if receipts[hk].setup else None)
        if url:
            urls[hk] = url
    stores = inputs.stores or StorageCache(policy=EndpointPolicy(allow_private=inputs.allow_local_storage))
    collected = collect_window(window, hotkeys={hk: receipts[hk].uid for hk in targets}, commitments=urls,
                               times=window_times(inputs.chain, window, inputs.hp), hp=inputs.hp,
                               allow_local_storage=inputs.allow_local_storage,
                               per_peer_timeout_s=inputs.per_peer_timeout_s, stores=stores)
    for hk in targets:
        r, got = receipts[hk], collected[hk]
        if r.upload_bytes is not None and got.reason == Rejection.MISSING:
            raise AuditError(f"the upload of {hk} for window {window} is gone from its store {urls.get(hk)} "
                             f"({got.detail or 'not found'})")
    return collected


def _placeholder(r: Receipt) -> tuple[Candidate, Collected]:
    """Another peer as its receipt publishes it: only the norm and lag enter the window-wide steps."""
    norm = float(r.details.get("norm") or 0.0)
    behind = int(r.details.get("steps_behind") or 0)
    empty = torch.zeros(0)
    decoded = Decoded({}, empty, empty, norm)
    at = r.uploaded_at.timestamp() if r.uploaded_at else 0.0
    return (Candidate(r.hotkey, r.uid, at, r.payload_hash or "", r.upload_bytes or 0, behind, decoded),
            Collected(r.hotkey, r.uid, None))


def stage1(inputs: AuditInputs, window: int, *, targets: list[str], receipts: Mapping[str, Receipt],
           collected: dict[str, Collected], prev: Mapping[str, PeerState], recent_hashes: Mapping[str, int],
           shapes: Mapping[str, tuple[int, ...]], seed: bytes, whole_window: bool,
           ) -> tuple[Stage1Result, dict[str, list[tuple[str, str]]]]:
    """The validator's Stage 1 on the fetched uploads; returns it and, per target, fields taken as published."""
    hp = inputs.hp
    banned = [hk for hk in targets if is_banned(prev[hk], window)]
    common = {"window": window, "hp": hp, "shapes": shapes, "cfg": inputs.codec_cfg, "recent_hashes": recent_hashes,
              "banned": banned}
    if whole_window:
        s1 = run_stage1(collected, **common, history=None, copy_seed=int.from_bytes(seed[:8], "little"))
    else:
        s1 = parse_uploads({hk: collected[hk] for hk in targets}, **common)
        for hk, r in receipts.items():  # the others' published norms make the window's median
            if hk not in targets and (r.filters_passed or r.reject_reason in PARSED_REASONS):
                s1.accepted[hk], collected[hk] = _placeholder(r)
        filter_norms(s1, hp)
    skips: dict[str, list[tuple[str, str]]] = {hk: [] for hk in targets}
    for hk, r in receipts.items():  # copies the validator found and the audit did not (or could not) look for
        if r.reject_reason not in COPY_REASONS or hk not in s1.accepted:
            continue
        source = _SOURCE_WINDOW.search(r.reject_detail or "")
        earlier = source is None or int(source.group(1)) < window
        if whole_window and not earlier:
            continue  # the audit saw every upload of the window and found no copy: a mismatch, reported as such
        if hk in skips:
            why = ("copy detection against earlier windows needs the validator's sketches of their uploads"
                   if earlier else "copy detection within the window needs every upload: use --all")
            skips[hk] += [("status", why), ("reject_reason", why), ("copy_of_hotkey", why), ("reject_detail", why)]
        cand = s1.accepted.pop(hk)  # taken as published, so the rest of the window is planned as it was
        s1.rejected[hk] = Rejected(hk, cand.uid, Rejection(r.reject_reason), r.reject_detail or "", r.copy_of_hotkey,
                                   cand.uploaded_at, cand.payload_hash, cand.size, cand.decoded.norm)
    for hk in targets:
        r, got = receipts[hk], collected[hk]
        if r.reject_reason == Rejection.MISSING and got.reason in (Rejection.LATE, Rejection.EARLY):
            why = "the store now holds an upload stamped outside the window; it was not there when the validator read"
            skips[hk] += [("status", why), ("reject_reason", why), ("reject_detail", why), ("uploaded_at", why),
                          ("upload_bytes", why)]
    return s1, skips


# --------------------------------------------------------------------------- Stage 2 and scores


def published_result(r: Receipt) -> EvalResult | None:
    """Another peer's Stage-2 result as its receipt publishes it (None if it was not evaluated)."""
    losses = (r.loss_before_assigned, r.loss_after_assigned, r.loss_before_random, r.loss_after_random)
    if any(x is None for x in losses):
        return None
    try:
        pages = tuple((float(p["before"]), float(p["after"])) for p in r.details.get("assigned_pages") or ())
        reach = tuple((float(p["multiple"]), float(p["after"])) for p in r.details.get("reach") or ())
        control = tuple((float(p["before"]), float(p["after"])) for p in r.details.get("control_pages") or ())
    except (TypeError, KeyError, ValueError):
        raise AuditError(f"the receipt of {r.hotkey} has malformed per-page, control or reach losses") from None
    return EvalResult(r.hotkey, *(float(x) for x in losses), estimate=float(r.estimate or 0.0),  # type: ignore[arg-type]
                      seconds=float(r.eval_seconds or 0.0), page_losses=pages, reach_losses=reach,
                      control_losses=control)


def stage2(theta: GlobalModel, pages: PageSource, plan: Stage2Plan, targets: list[str],
           receipts: Mapping[str, Receipt]) -> dict[str, EvalResult]:
    """Evaluate the targets' jobs in the plan's order, the validator's (so "before" batches match); others as published."""
    evaluator = WindowEvaluator(model_from_state(theta.config, theta.state), pages, plan.random_page_ids,
                                control_page_ids=plan.control_page_ids)
    results: dict[str, EvalResult] = {}
    for job in plan.jobs:
        if receipts[job.hotkey].status == UNEVALUATED:
            continue
        if job.hotkey in targets:
            try:
                results[job.hotkey] = evaluator.evaluate(job)
            except Exception:  # like the validator: a failed evaluation is recorded, never aborts the rest
                log.exception("window %d: evaluating %s failed", plan.window, job.hotkey)
        else:
            res = published_result(receipts[job.hotkey])
            if res is not None:
                results[job.hotkey] = res
    return results


def as_published(rebuilt: Evaluation) -> dict[str, Any]:
    """A rebuilt receipt in the API's shape, through the API's own conversion (same defaults, same split)."""
    return receipt(rebuilt, window_status="scored").model_dump(mode="json")


# --------------------------------------------------------------------------- the audit


def audit(api: ScoreApi, inputs: AuditInputs, window: int, hotkey: str | None = None) -> AuditReport:
    """Recompute ``hotkey``'s receipt of ``window`` (None: every receipt of the window) and compare."""
    hp = inputs.hp
    summary = api.window(window)
    receipts = {r.hotkey: r for r in api.receipts(window)}
    if hotkey is not None and hotkey not in receipts:
        raise AuditError(f"window {window} has no receipt for {hotkey}")
    if not receipts:
        raise AuditError(f"window {window} has no receipts (closed without evaluation)")
    targets = sorted(receipts) if hotkey is None else [hotkey]
    check_setup(receipts, hp, inputs.pages)
    try:
        seed = bytes.fromhex(summary.random_seed_hex or "")
    except ValueError:
        raise AuditError(f"window {window}'s published seed is not hex") from None
    if len(seed) < 16:
        raise AuditError(f"window {window}'s published seed is too short ({len(seed)} bytes)")
    theta, recent = follow_theta(inputs, window)
    report = AuditReport(window, targets, theta.hash)
    report.notes.append(f"theta_{window} from the validators' published history: {theta.hash[:16]} "
                        f"(window summary: {(summary.base_model_hash or '?')[:16]})")
    down_to = window - hp.scoring.copy_ban_windows - 1
    prev = {hk: PeerState(Rating(_or(r.rating_mu_before, DEFAULT_MU), _or(r.rating_sigma_before, DEFAULT_SIGMA)))
            for hk, r in receipts.items()}
    for hk in targets:
        prev[hk] = previous_state(api.history(hk, down_to=down_to), window, hp)
    collected = collect(inputs, window, targets, receipts)
    s1, skips = stage1(inputs, window, targets=targets, receipts=receipts, collected=collected, prev=prev,
                       recent_hashes=recent, shapes=theta.shapes, seed=seed, whole_window=hotkey is None)
    try:  # the beacon as the chain has it, not as the receipts say: it decides the control pages
        beacon = window_beacon(inputs.chain, window, hp)
    except ModelNotReady as exc:
        raise AuditError(str(exc)) from None
    plan = plan_stage2(window, s1, hp=hp, seed=seed, beacon=beacon,
                       num_pages=int(getattr(inputs.pages, "num_pages", 0)),
                       collected=collected, prev_scores={hk: p.score for hk, p in prev.items()})
    plan.unevaluated = [hk for hk in plan.remote if receipts[hk].status == UNEVALUATED]
    for hk in targets:
        if receipts[hk].status == UNEVALUATED:
            skips[hk].append(("status", BUDGET))
    results = stage2(theta, inputs.pages, plan, targets, receipts)
    outcome = combine_window(window, prev=prev, stage1=s1, results=results, hp=hp, unevaluated=plan.unevaluated)
    rebuilt = {r.hotkey: r for r in build_receipts(window, s1, plan, results, outcome, prev=prev,
                                                       base_hash=theta.hash, seed_hex=seed.hex(),
                                                       setup=evaluation_setup(hp, inputs.pages))}
    for hk in targets:
        published = receipts[hk].model_dump(mode="json")
        tol: Tolerances = tolerances(published.get("setup"), loss_abs=inputs.loss_tolerance)
        report.checks += compare_receipt(published, as_published(rebuilt[hk]), tol, skip=skips[hk])
        if hk in s1.accepted and hotkey is None:
            report.checks.append(Check(hk, "copy detection (earlier windows)", "not recomputed", None, None,
                                       "needs the validator's sketches of earlier windows' uploads"))
        elif hk in s1.accepted:
            report.checks.append(Check(hk, "copy detection", "not recomputed", None, None,
                                       "needs every upload of the window (--all) and of earlier windows"))
    if hotkey is not None:
        report.notes.append("window-wide inputs (other peers' norms, Stage-2 results and ratings before) are "
                            "their published receipts; --all recomputes them from their uploads")
    return report

