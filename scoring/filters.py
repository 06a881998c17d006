"""Stage-1 verdicts: cheap checks that decide whether an upload is worth a loss evaluation.

Every rejected upload gets one stable, machine-readable reason (:class:`Rejection`), which
the validator stores in the peer's score receipt and counts in its metrics; the strings are
part of the receipt format, so members are only ever added, never renamed.

Timing follows ``protocol.windows``: an upload counts if the *store's* timestamp lies in
``[window_start, window_end + grace]`` (reference grace: 70 s, Gauntlet notes). A stamp
before the window began cannot have been trained on that window's global model.

Norm bounds are relative to the window's median norm because absolute scales drift with
the learning-rate schedule. Too large (> ``max_norm_ratio`` x median, default 10) would
dominate an average and waste an evaluation; zero or near zero (< ``min_ratio`` x median)
is a free rider who uploads nothing and hopes to be carried by the ranking. The median is
taken over finite, non-zero norms only, so a crowd of zero-uploading sybils cannot drag it
to zero and make every honest peer look "too large".
"""

from __future__ import annotations

import math
import statistics
from enum import StrEnum

__all__ = [
    "NORM_ABS_EPS",
    "NORM_MIN_RATIO",
    "Rejection",
    "check_norm",
    "check_timing",
]

#: Norms at or below this are "nothing uploaded", whatever the median.
NORM_ABS_EPS = 1e-12
#: Default lower bound relative to the median norm: 1000x smaller than typical is a free rider.
NORM_MIN_RATIO = 1e-3


class Rejection(StrEnum):
    """Why an upload was not scored. Values are persisted: add members, never rename them.

    Only what the hotkey itself signed for this window may count against it: anyone who can
    write to a miner's store can put bytes under the miner's key. Hence ``FOREIGN`` (signed
    by another hotkey) and ``WRONG_WINDOW`` (the miner's own signature, for another window,
    e.g. an old upload put back) are judged like ``MISSING``: the miner's real upload may
    have been overwritten, so they neither ban nor zero it. ``COPY`` and ``REPLAY`` (bans)
    are for deltas the hotkey signed for this window whose values are someone else's, or
    its own from an earlier window.
    """

    NOT_REGISTERED = "not_registered"
    MISSING = "missing"
    LATE = "late"
    EARLY = "early"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"
    OUT_OF_SYNC = "out_of_sync"
    NORM_TOO_LARGE = "norm_too_large"
    NORM_TOO_SMALL = "norm_too_small"
    NOT_FINITE = "not_finite"
    COPY = "copy"
    REPLAY = "replay"
    BANNED = "banned"
    FOREIGN = "foreign"
    WRONG_WINDOW = "wrong_window"
    # Collection failures (``validator.collect``): the upload could not be read.
    TIMEOUT = "timeout"  # the store did not answer within the per-peer time
    BAD_STORAGE_URL = "bad_storage_url"  # the committed URL is refused (private address, bad scheme, ...)
    STORAGE_UNAVAILABLE = "storage_unavailable"
    TOO_LARGE = "too_large"  # over ``max_upload_bytes``
    #: The validator's own Stage-2 evaluation of an accepted upload failed: not the miner's fault.
    EVALUATION_FAILED = "evaluation_failed"


def check_timing(
    uploaded_at: float, window_start_time: float, window_end_time: float, grace_s: float
) -> Rejection | None:
    """``None`` if the store stamped the upload within ``[start, end + grace]``; else early/late.

    Both bounds are inclusive, matching ``protocol.windows.is_on_time``.
    """
    if not math.isfinite(uploaded_at):
        return Rejection.LATE
    if uploaded_at < window_start_time:
        return Rejection.EARLY
    if uploaded_at > window_end_time + grace_s:
        return Rejection.LATE
    return None


def check_norm(
    norms: dict[str, float], max_ratio: float, min_ratio: float = NORM_MIN_RATIO
) -> dict[str, Rejection]:
    """Reject norms that are non-finite, ~zero, or out of ``[min_ratio, max_ratio]`` x median.

    Returns only the rejected hotkeys. With no usable reference (every norm zero or
    non-finite) only the absolute checks apply. A negative norm is a validator bug, not a
    peer's fault, and raises ``ValueError``.
    """
    rejected: dict[str, Rejection] = {}
    usable: list[float] = []
    for hotkey, norm in norms.items():
        if norm < 0:
            raise ValueError(f"norm of {hotkey!r} is negative ({norm}); norms are computed by the validator")
        if not math.isfinite(norm):
            rejected[hotkey] = Rejection.NOT_FINITE
        elif norm <= NORM_ABS_EPS:
            rejected[hotkey] = Rejection.NORM_TOO_SMALL
        else:
            usable.append(norm)
    if not usable:
        return rejected
    median = statistics.median(usable)
    for hotkey, norm in norms.items():
        if hotkey in rejected:
            continue
        if norm > max_ratio * median:
            rejected[hotkey] = Rejection.NORM_TOO_LARGE
        elif norm < min_ratio * median:
            rejected[hotkey] = Rejection.NORM_TOO_SMALL
    return rejected
