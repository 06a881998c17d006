"""Window arithmetic: which window a block belongs to and when its uploads are due.

A window is ``blocks_per_window`` chain blocks. Miners upload their delta for window W
while W runs; uploads are on time if the *store's* timestamp is no later than the end of
W plus ``upload_grace_s`` (the miner's clock is never trusted). Window W is scored once
the chain has entered W+1.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.hparams import WindowParams

__all__ = [
    "Window",
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


def upload_deadline(window_end_time: float, p: WindowParams) -> float:
    """Latest store timestamp (unix seconds) at which an upload for a window still counts."""
    return window_end_time + p.upload_grace_s


def is_on_time(uploaded_at: float, window_start_time: float, window_end_time: float, p: WindowParams) -> bool:
    """On time means uploaded during the window or within the grace after it.

    An upload stamped before the window began cannot have trained on that window's
    global model; it is a replay or a pre-computed delta and does not count.
    """
    return window_start_time <= uploaded_at <= upload_deadline(window_end_time, p)
