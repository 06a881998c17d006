"""Stage-1 filters: timing window, norm bounds, stable rejection reasons."""

from __future__ import annotations

import math

import pytest

from scoring.filters import Rejection, check_norm, check_timing


def test_rejection_values_are_pinned() -> None:
    # Persisted in receipts and metrics: renaming one would orphan stored rows.
    assert [r.value for r in Rejection] == [
        "not_registered",
        "missing",
        "late",
        "early",
        "bad_signature",
        "malformed",
        "out_of_sync",
        "norm_too_large",
        "norm_too_small",
        "not_finite",
        "copy",
        "replay",
        "banned",
        "foreign",  # appended: uploads not signed by the hotkey for W, judged missing (never a ban)
        "wrong_window",
        "timeout",  # appended: collection failures and the validator's own, enum members since issue 14
        "bad_storage_url",
        "storage_unavailable",
        "too_large",
        "evaluation_failed",
    ]
    assert Rejection("late") is Rejection.LATE
    assert f"{Rejection.COPY}" == "copy"


# Window runs [1000, 2500]; grace 70 s, so the deadline is 2500 + 70 = 2570.
@pytest.mark.parametrize(
    ("uploaded_at", "expected"),
    [
        (1000.0, None),  # start is inclusive
        (1800.0, None),
        (2500.0, None),
        (2570.0, None),  # deadline is inclusive
        (2570.001, Rejection.LATE),
        (999.999, Rejection.EARLY),  # before the window: pre-computed or replayed
        (math.nan, Rejection.LATE),
        (math.inf, Rejection.LATE),
    ],
)
def test_check_timing(uploaded_at: float, expected: Rejection | None) -> None:
    assert check_timing(uploaded_at, 1000.0, 2500.0, 70.0) == expected


def test_check_norm_relative_to_median() -> None:
    norms = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 100.0, "e": 0.0, "f": math.nan, "g": 1e-5}
    # usable (finite, > 1e-12): 1e-5, 1, 2, 3, 100 -> median 2.
    # d: 100 > 10 * 2 = 20 -> too large; g: 1e-5 < 1e-3 * 2 = 2e-3 -> too small;
    # e: exactly zero -> too small; f: NaN -> not finite; a, b, c pass.
    assert check_norm(norms, max_ratio=10.0) == {
        "d": Rejection.NORM_TOO_LARGE,
        "e": Rejection.NORM_TOO_SMALL,
        "f": Rejection.NOT_FINITE,
        "g": Rejection.NORM_TOO_SMALL,
    }


def test_check_norm_even_count_uses_midpoint_median() -> None:
    # median(1, 3) = 2; 3 > 1.4 * 2 = 2.8 -> too large; 1 passes.
    assert check_norm({"a": 1.0, "b": 3.0}, max_ratio=1.4) == {"b": Rejection.NORM_TOO_LARGE}
    # bound is inclusive: 2.8 is not > 2.8.
    assert check_norm({"a": 1.2, "b": 2.8}, max_ratio=1.4) == {}


def test_zero_uploading_crowd_cannot_drag_the_median_down() -> None:
    # Five free riders at 0 and one honest peer at 1: median over non-zero norms is 1.
    norms = {f"z{i}": 0.0 for i in range(5)} | {"honest": 1.0}
    assert check_norm(norms, max_ratio=10.0) == {f"z{i}": Rejection.NORM_TOO_SMALL for i in range(5)}


def test_check_norm_without_reference() -> None:
    assert check_norm({"a": 0.0, "b": math.inf}, max_ratio=10.0) == {
        "a": Rejection.NORM_TOO_SMALL,
        "b": Rejection.NOT_FINITE,
    }
    assert check_norm({}, max_ratio=10.0) == {}


def test_check_norm_custom_min_ratio() -> None:
    # median(0.5, 1, 2) = 1; with min_ratio 0.6, 0.5 < 0.6 -> too small.
    assert check_norm({"a": 0.5, "b": 1.0, "c": 2.0}, max_ratio=10.0, min_ratio=0.6) == {
        "a": Rejection.NORM_TOO_SMALL
    }


def test_negative_norm_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="negative"):
        check_norm({"a": -1.0}, max_ratio=10.0)
