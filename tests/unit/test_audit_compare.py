"""``validator.audit_compare``: which fields match, under which rule, and what is never called a match."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from validator.audit_compare import (
    HALF_PRECISION_LOSS_TOLERANCE,
    Tol,
    compare_receipt,
    format_checks,
    summarise,
    tolerances,
)

SETUP = {"spec_version": 1, "hparams_digest": "ab" * 32, "model": "tiny", "model_seed": 0, "data_digest": "cd" * 32,
         "seq_len": 128, "page_seqs": 8, "size_rule": "cap", "eval_eta": 0.2, "eval_step": 0.2, "step_factor": 1.0,
         "device": "cpu", "dtype": "float32", "evaluator": "validator"}


def _receipt(**changes: object) -> dict[str, object]:
    r: dict[str, object] = {
        "hotkey": "5Fhk", "uid": 3, "status": "accepted", "reject_reason": None, "copy_of_hotkey": None,
        "payload_hash": "ee" * 32, "upload_bytes": 38389, "uploaded_at": "2026-12-01T18:38:01.395655Z",
        "filters_passed": ["registered", "signature"], "base_model_hash": "aa" * 32, "random_seed_hex": "11" * 32,
        "random_page_ids": [509, 81, 732, 917], "assigned_page_ids": [57, 368], "indicator": 1.0,
        "loss_before_assigned": 8.2763, "loss_after_assigned": 8.2401, "loss_before_random": 8.2989,
        "loss_after_random": 8.2731, "contribution": 0.0031, "estimate": -0.0247, "sync_score": 1.0,
        "bma_after": 0.1426, "rating_mu_before": 20.87, "rating_sigma_before": 8.01, "rating_mu_after": 19.31,
        "rating_sigma_after": 7.87, "final_score": 0.0, "weight": None, "eval_seconds": 0.56, "reject_detail": None,
        "setup": dict(SETUP),
        "details": {"norm": 0.834, "median_norm": 1.173, "steps_behind": 0, "eval_step": 0.2,
                    "exact_change_random": -0.0258,
                    "assigned_pages": [{"page": 57, "before": 8.27, "after": 8.235},
                                       {"page": 368, "before": 8.28, "after": 8.245}]},
    }
    r.update(changes)
    return r


def _by_field(checks: list) -> dict[str, object]:
    return {c.field: c for c in checks}


def test_identical_receipts_match_and_nothing_unrecomputable_is_a_match() -> None:
    checks = compare_receipt(_receipt(), _receipt(), tolerances(SETUP))
    counts = summarise(checks)
    assert counts["mismatch"] == 0 and counts["match"] > 30
    by = _by_field(checks)
    for f in ("uid", "weight", "eval_seconds"):  # reported with a reason, never as a match
        assert by[f].status == "not recomputed" and by[f].rule
    assert by["details.assigned_pages[1].after"].status == "match"
    assert by["setup.hparams_digest"].status == "match"


def test_a_changed_loss_beyond_the_tolerance_is_a_mismatch_and_float_noise_is_not() -> None:
    tol = tolerances(SETUP)
    noisy = _receipt(loss_after_random=8.2731 + 3e-6, contribution=0.0031 + 4e-7)
    assert summarise(compare_receipt(_receipt(), noisy, tol))["mismatch"] == 0
    tampered = _receipt(loss_after_random=8.2631)
    bad = [c for c in compare_receipt(tampered, _receipt(), tol) if c.status == "mismatch"]
    assert [c.field for c in bad] == ["loss_after_random"]
    assert bad[0].rule == "abs 0.0001" and bad[0].published == 8.2631 and bad[0].recomputed == 8.2731


def test_page_ids_and_decisions_are_exact() -> None:
    tol = tolerances(SETUP)
    pages = _receipt()
    pages["details"]["assigned_pages"][0]["page"] = 58  # type: ignore[index]
    changed = {"assigned_page_ids": [58, 368], "random_page_ids": [509, 81, 732, 918], "indicator": 0.0,
               "payload_hash": "ff" * 32, "status": "rejected"}
    for field, value in changed.items():
        bad = [c for c in compare_receipt(_receipt(**{field: value}), _receipt(), tol) if c.status == "mismatch"]
        assert [c.field for c in bad] == [field], field
    bad = [c.field for c in compare_receipt(pages, _receipt(), tol) if c.status == "mismatch"]
    assert bad == ["details.assigned_pages[0].page"]
    short = _receipt()
    short["details"] = {**short["details"], "assigned_pages": []}  # type: ignore[dict-item]
    assert "details.assigned_pages" in [c.field for c in compare_receipt(short, _receipt(), tol)
                                        if c.status == "mismatch"]


def test_skipped_fields_are_not_recomputed_and_absent_fields_are_left_out() -> None:
    rejected = _receipt(status="rejected", reject_reason="copy", copy_of_hotkey="5Fother",
                        reject_detail="of 5Fother@3 overlap=0.9", loss_before_assigned=None)
    why = "needs earlier windows"
    checks = compare_receipt(rejected, {**rejected, "loss_before_assigned": None}, tolerances(SETUP),
                             skip=[("reject_reason", why), ("copy_of_hotkey", why)])
    by = _by_field(checks)
    assert by["reject_reason"].status == "not recomputed" and by["reject_reason"].rule == why
    assert "loss_before_assigned" not in by  # neither side has it: not applicable, not a match
    assert "reject_detail" not in by  # a copy's detail names what the audit may not recompute


def test_timestamps_and_numbers_compare_across_json_forms() -> None:
    recomputed = _receipt(uploaded_at=datetime(2026, 12, 1, 18, 38, 1, 395900, tzinfo=UTC), upload_bytes=38389.0)
    by = _by_field(compare_receipt(_receipt(), recomputed, tolerances(SETUP)))
    assert by["uploaded_at"].status == "match" and by["upload_bytes"].status == "match"
    late = _receipt(uploaded_at="2026-12-01T18:38:02Z")
    assert _by_field(compare_receipt(late, _receipt(), tolerances(SETUP)))["uploaded_at"].status == "mismatch"


def test_older_receipts_without_setup_skip_the_setup_fields() -> None:
    old = _receipt(setup=None)
    fields = {c.field for c in compare_receipt(old, _receipt(setup=None), tolerances(None))}
    assert not any(f.startswith("setup.") for f in fields)


def test_tolerance_follows_the_device_class_and_dtype() -> None:
    assert tolerances(None).loss == Tol(abs=1e-4)  # an older validator evaluated on the CPU in float32
    assert tolerances({"device": "cuda", "dtype": "float32"}).loss.abs > tolerances(SETUP).loss.abs
    assert tolerances({"device": "cuda", "dtype": "bfloat16"}).loss.abs == HALF_PRECISION_LOSS_TOLERANCE
    assert tolerances(SETUP, loss_abs=0.5).loss == Tol(abs=0.5)
    assert Tol().ok(1.0, 1.0) and not Tol().ok(1.0, 1.0 + 1e-15)
    assert Tol(rel=1e-9).ok(1e9, 1e9 + 0.5) and not Tol(abs=1e-3).ok(float("nan"), 1.0)
    assert Tol(abs=1e-4, rel=1e-6).describe() == "abs 0.0001 + rel 1e-06" and Tol().describe() == "exact"


@pytest.mark.parametrize("verbose", [True, False])
def test_format_lists_each_field_with_its_rule(verbose: bool) -> None:
    checks = compare_receipt(_receipt(loss_after_random=9.0), _receipt(), tolerances(SETUP))
    text = format_checks(checks, verbose=verbose)
    assert "MISMATCH loss_after_random" in text and "[abs 0.0001]" in text
    assert ("match    payload_hash" in text) is verbose
    assert "n/a      weight" in text
