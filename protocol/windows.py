"""Window arithmetic: which window a block belongs to and when its uploads are due.

A window is ``blocks_per_window`` chain blocks. Miners upload their delta for window W
while W runs; uploads are on time if the *store's* timestamp is no later than the end of
W plus ``upload_grace_s`` (the miner's clock is never trusted). Window W is scored once
the chain has entered W+1.

The window's **beacon** is the hash of :func:`beacon_block`, the first block produced after the
upload deadline (in whole blocks of the chain's nominal block time, so every node names the same
block). Nobody can know it while uploads are still accepted, and every validator reads the same
one: it seeds what all validators must draw alike but no miner may predict (the proof-of-work
control pages, ``protocol.pages.control_pages``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.hparams import WindowParams

__all__ = [
    "Window",
    "beacon_block",
    "is_on_time",
    "upload_deadline",
    "window_bounds",
    "window_of",
]


@dataclass(frozen=True, slots=True)
class Window:
    index: int
    start_block: int
    end_block: int  # exclusive


def window_of(block: int, p: WindowParams) -> int:
    """Window index containing ``block`` (blocks before genesis belong to window 0)."""
    return max(0, block - p.genesis_block) // p.blocks_per_window


def window_bounds(index: int, p: WindowParams) -> Window:
    start = p.genesis_block + index * p.blocks_per_window
    return Window(index=index, start_block=start, end_block=start + p.blocks_per_window)


def beacon_block(index: int, p: WindowParams, block_seconds: float) -> int:
    """The first block after window ``index``'s upload deadline: ``end + ceil(grace / block time) + 1``."""
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
    return window_bounds(index, p).end_block + math.ceil(p.upload_grace_s / block_seconds) + 1


def upload_deadline(window_end_time: float, p: WindowParams) -> float:
    """Latest store timestamp (unix seconds) at which an upload for a window still counts."""
    return window_end_time + p.upload_grace_s


def is_on_time(uploaded_at: float, window_start_time: float, window_end_time: float, p: WindowParams) -> bool:
    """On time means uploaded during the window or within the grace after it.

    An upload stamped before the window began cannot have trained on that window's
    global model; it is a replay or a pre-computed delta and does not count.
    """
    return window_start_time <= uploaded_at <= upload_deadline(window_end_time, p)
