"""``gauntlet audit``'s verdicts: a published receipt against the one recomputed from public data.

Pure (no I/O): the recomputation (``validator.audit``) hands over two receipts in the API's shape
(``validator.api.schemas.Receipt`` as JSON) and this module says, field by field, whether they
match and under which rule. Why rules differ per field:

* **exact**: identities and decisions (hashes, page ids, seeds, reasons, status, indicator).
  The same inputs give the same bits on any machine, or the decision is discrete.
* **arithmetic** (``rel 1e-9``): values computed in float64 from the same inputs (norms of the
  same decoded values, the step, the sync score, the moving average). Only summation order can
  move them, far below any value that decides anything.
* **loss**: a forward pass in float32. A sequence's loss depends in its last bits on which other
  sequences share its batch and on the kernels of the device, so the tolerance follows the
  receipt's ``setup`` (device class and dtype): ``1e-4`` absolute on CPU in float32, looser on
  accelerators and half precision. A tampered loss moves by far more than that.
* **contribution / estimate / ratings**: derived from losses (relative improvement, a gradient
  dot product, the OpenSkill update), so their tolerance is the loss tolerance carried through.

A field the auditor cannot recompute from public data is reported ``not recomputed`` with the
reason, never as a match.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Status = Literal["match", "mismatch", "not recomputed"]


@dataclass(frozen=True, slots=True)
class Tol:
    """``|a - b| <= abs + rel * max(|a|, |b|)``; zero for both means exact equality."""

    abs: float = 0.0
    rel: float = 0.0

    def ok(self, a: float, b: float) -> bool:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= self.abs + self.rel * max(abs(a), abs(b))

    def describe(self) -> str:
        parts = ([f"abs {self.abs:g}"] if self.abs else []) + ([f"rel {self.rel:g}"] if self.rel else [])
        return " + ".join(parts) or "exact"


@dataclass(frozen=True, slots=True)
class Tolerances:
    """The tolerance of each kind of number (see the module docstring)."""

    loss: Tol
    contribution: Tol
    estimate: Tol
    rating: Tol
    arithmetic: Tol = Tol(rel=1e-9, abs=1e-12)
    time_s: Tol = Tol(abs=1e-3)  # store timestamps go through the database's microseconds


#: (device class, dtype) -> loss tolerance. CPU float32 differs only by batch composition (~1e-6 measured).
LOSS_TOLERANCE = {("cpu", "float32"): 1e-4, ("cuda", "float32"): 2e-3}
HALF_PRECISION_LOSS_TOLERANCE = 5e-2


def tolerances(setup: Mapping[str, Any] | None, *, loss_abs: float | None = None) -> Tolerances:
    """The tolerances for a receipt evaluated as its ``setup`` says (none: an older CPU validator)."""
    device = str((setup or {}).get("device") or "cpu")
    dtype = str((setup or {}).get("dtype") or "float32")
    if loss_abs is None:
        half = dtype in ("bfloat16", "float16")
        loss_abs = HALF_PRECISION_LOSS_TOLERANCE if half else LOSS_TOLERANCE.get((device, dtype), 2e-3)
    # Losses are ~1-10 here, so a loss error e moves a relative improvement by about e / loss.
    return Tolerances(loss=Tol(abs=loss_abs), contribution=Tol(abs=loss_abs / 5), estimate=Tol(abs=1e-7, rel=1e-2),
                      rating=Tol(abs=1e-6, rel=1e-6))


@dataclass(frozen=True, slots=True)
class Check:
    """One field of one receipt: published value, recomputed value, verdict and the rule applied."""

    hotkey: str
    field: str
    status: Status
    published: Any = None
    recomputed: Any = None
    rule: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"hotkey": self.hotkey, "field": self.field, "status": self.status, "published": self.published,
                "recomputed": self.recomputed, "rule": self.rule}


# Receipt fields by rule. Losses and what derives from them are matched under ``Tolerances``.
EXACT = ("status", "reject_reason", "copy_of_hotkey", "payload_hash", "upload_bytes", "filters_passed",
         "base_model_hash", "random_seed_hex", "random_page_ids", "assigned_page_ids", "indicator",
         "details.steps_behind", "details.beacon.block", "details.beacon.hash", "details.beacon.control_pages")
ARITHMETIC = ("details.norm", "details.median_norm", "details.eval_step", "sync_score", "bma_after",
              "rating_mu_before", "rating_sigma_before")
LOSSES = ("loss_before_assigned", "loss_after_assigned", "loss_before_random", "loss_after_random",
          "details.exact_change_random")
RATINGS = ("rating_mu_after", "rating_sigma_after", "final_score")
#: What the validator and the auditor must share for the numbers to be comparable at all.
SETUP_EXACT = ("setup.spec_version", "setup.hparams_digest", "setup.model", "setup.model_seed", "setup.data_digest",
               "setup.seq_len", "setup.page_seqs", "setup.size_rule")
SETUP_ARITHMETIC = ("setup.eval_eta", "setup.eval_step", "setup.step_factor")
#: Reasons whose detail text is a pure function of the upload (the others carry measured floats,
#: compared as numbers instead, or name a copy source the auditor may not recompute).
DETAIL_EXACT_REASONS = frozenset({"malformed", "bad_signature", "foreign", "wrong_window", "out_of_sync",
                                  "not_finite", "missing", "late", "early"})
#: Fields never recomputed, and why (printed once per receipt).
NOT_RECOMPUTED = {
    "uid": "registration at scoring time; the chain's current metagraph may differ",
    "weight": "weights are set on chain from all peers' scores, not stored per receipt",
    "eval_seconds": "wall-clock time of the validator's machine",
}


def get(receipt: Mapping[str, Any], dotted: str) -> Any:
    """``details.norm`` -> ``receipt["details"]["norm"]``; None when any level is missing."""
    node: Any = receipt
    for key in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return _num(value)


def _listify(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def exact(hotkey: str, field: str, published: Any, recomputed: Any) -> Check:
    published, recomputed = _listify(published), _listify(recomputed)
    same = published == recomputed
    if not same and _num(published) is not None and _num(recomputed) is not None:
        same = _num(published) == _num(recomputed)  # 1 and 1.0 after a JSON round trip
    return Check(hotkey, field, "match" if same else "mismatch", published, recomputed, "exact")


def close(hotkey: str, field: str, published: Any, recomputed: Any, tol: Tol) -> Check:
    if published is None and recomputed is None:
        return Check(hotkey, field, "match", None, None, tol.describe())
    a, b = _num(published), _num(recomputed)
    ok = a is not None and b is not None and tol.ok(a, b)
    return Check(hotkey, field, "match" if ok else "mismatch", published, recomputed, tol.describe())


#: Lists of losses in ``details``: field, its exact key, its loss keys.
LOSS_LISTS = (("details.assigned_pages", "page", ("before", "after")), ("details.reach", "multiple", ("after",)),
              ("details.control_pages", "page", ("before", "after")))


def _loss_list(hotkey: str, field: str, key: str, losses: tuple[str, ...], published: Any, recomputed: Any,
               tol: Tol) -> list[Check]:
    """A list of losses (per assigned page, or along the direction): keys exact, losses under the loss tolerance."""
    pub = published if isinstance(published, list) else []
    rec = recomputed if isinstance(recomputed, list) else []
    if len(pub) != len(rec):
        return [Check(hotkey, field, "mismatch", len(pub), len(rec), "entry count")]
    out: list[Check] = []
    for i, (p, r) in enumerate(zip(pub, rec, strict=True)):
        p, r = (p if isinstance(p, Mapping) else {}), (r if isinstance(r, Mapping) else {})
        out.append(exact(hotkey, f"{field}[{i}].{key}", p.get(key), r.get(key)))
        out.extend(close(hotkey, f"{field}[{i}].{k}", p.get(k), r.get(k), tol) for k in losses)
    return out


def compare_receipt(published: Mapping[str, Any], recomputed: Mapping[str, Any], tol: Tolerances,
                    *, skip: Iterable[tuple[str, str]] = ()) -> list[Check]:
    """Every field of ``published`` against ``recomputed``; ``skip`` lists (field, why) not recomputed."""
    hotkey = str(published.get("hotkey"))
    skipped = dict(skip)
    checks: list[Check] = []

    def add(field: str, make: Any) -> None:
        if field in skipped:
            checks.append(Check(hotkey, field, "not recomputed", get(published, field), None, skipped[field]))
        else:
            checks.append(make())

    for f in EXACT:
        add(f, lambda f=f: exact(hotkey, f, get(published, f), get(recomputed, f)))
    add("uploaded_at", lambda: close(hotkey, "uploaded_at", _timestamp(published.get("uploaded_at")),
                                     _timestamp(recomputed.get("uploaded_at")), tol.time_s))
    for group, t in ((ARITHMETIC, tol.arithmetic), (LOSSES, tol.loss), (RATINGS, tol.rating)):
        for f in group:
            add(f, lambda f=f, t=t: close(hotkey, f, get(published, f), get(recomputed, f), t))
    add("contribution", lambda: close(hotkey, "contribution", published.get("contribution"),
                                      recomputed.get("contribution"), tol.contribution))
    add("estimate", lambda: close(hotkey, "estimate", published.get("estimate"), recomputed.get("estimate"),
                                  tol.estimate))
    for field, key, losses in LOSS_LISTS:
        if field in skipped:
            checks.append(Check(hotkey, field, "not recomputed", None, None, skipped[field]))
        else:
            checks.extend(_loss_list(hotkey, field, key, losses, get(published, field), get(recomputed, field),
                                     tol.loss))
    if published.get("setup") is not None:  # older validators published none
        for f in SETUP_EXACT:
            add(f, lambda f=f: exact(hotkey, f, get(published, f), get(recomputed, f)))
        for f in SETUP_ARITHMETIC:
            add(f, lambda f=f: close(hotkey, f, get(published, f), get(recomputed, f), tol.arithmetic))
    if published.get("reject_reason") in DETAIL_EXACT_REASONS:
        add("reject_detail", lambda: exact(hotkey, "reject_detail", published.get("reject_detail"),
                                           recomputed.get("reject_detail")))
    for f, why in NOT_RECOMPUTED.items():
        checks.append(Check(hotkey, f, "not recomputed", published.get(f), None, why))
    # A field neither side has (a rejected peer's losses) is not applicable, not a match.
    return [c for c in checks if not (c.status == "match" and c.published is None and c.recomputed is None)]


def summarise(checks: Sequence[Check]) -> dict[str, int]:
    """Counts by verdict."""
    out = {"match": 0, "mismatch": 0, "not recomputed": 0}
    for c in checks:
        out[c.status] += 1
    return out


def _show(value: Any, width: int = 24) -> str:
    if isinstance(value, float):
        text = f"{value:.9g}"
    elif isinstance(value, list) and len(value) > 6:
        text = f"[{', '.join(map(str, value[:6]))}, ... {len(value)} items]"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_checks(checks: Sequence[Check], *, verbose: bool = True) -> str:
    """One line per field (only mismatches and skipped fields unless ``verbose``)."""
    lines = []
    for c in checks:
        if not verbose and c.status == "match":
            continue
        mark = {"match": "match   ", "mismatch": "MISMATCH", "not recomputed": "n/a     "}[c.status]
        if c.status == "not recomputed":
            lines.append(f"  {mark} {c.field:<34} {_show(c.published):<24} ({c.rule})")
        else:
            lines.append(f"  {mark} {c.field:<34} published {_show(c.published):<24} recomputed "
                         f"{_show(c.recomputed):<24} [{c.rule}]")
    return "\n".join(lines)
