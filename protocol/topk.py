"""Exact per-row top-k by magnitude, the selection step of the SparseLoCo codec (``protocol.codec``).

Split out of the codec because it is a self-contained algorithm with its own cost model:
the codec decides *what* a chunk is and how the kept values are packed; this module only
answers "which k offsets of each row have the largest |value|", fast on CPU.

torch.topk on CPU costs ~5-10 ns per element of a row, which alone would take several
seconds per billion parameters. Selection is therefore hierarchical: view a row as G x S
(S columns of G elements), keep the k columns with the largest column max (a cheap
vectorised reduction), and select among those k*G candidates. This is exact: an element
outside the kept columns is dominated by the k kept column maxima, so it can be in a top-k
set only through a tie (ties are broken deterministically, by torch.topk on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["map_threads", "select_rows", "topk_sorted"]

# Rows of a [rows, chunk] magnitude buffer processed at once by the CPU top-k: about 1M
# elements keeps the scratch buffer in cache and avoids page-faulting fresh allocations.
_CPU_BLOCK_ELEMS = 1 << 20


def _level_columns(width: int, k: int) -> int | None:
    """Columns S of a pruning level over rows of ``width`` keys, or None to select directly.

    The level costs a top-k over S column maxima plus one over the k * width / S candidates;
    S = sqrt(width * k) balances the two (512 at width 4096, k 64). Narrow rows go direct.
    """
    if width < 16 * k:
        return None
    cols = 1 << (math.isqrt(width * k).bit_length() - 1)  # power of two <= sqrt(width * k)
    return cols if width % cols == 0 else None


def _topk_offsets(keys: Tensor, k: int) -> Tensor:
    """Offsets int64 [r, k] (in no particular order) of a top-k set of each row of ``keys`` [r, w]."""
    r, width = keys.shape
    cols = _level_columns(width, k)
    if cols is None:
        return torch.topk(keys, k, dim=1, sorted=False).indices
    grid = keys.view(r, width // cols, cols)
    best = torch.topk(grid.amax(1), k, dim=1, sorted=False).indices
    # Candidate (i, j) of the [G, k] grid is offset i*S + best[j].
    cand = grid.gather(2, best.unsqueeze(1).expand(r, grid.shape[1], k)).reshape(r, -1)
    flat = _topk_offsets(cand, k)
    return (flat // k) * cols + best.gather(1, flat % k)


def topk_sorted(keys: Tensor, k: int) -> Tensor:
    """Offsets int64 [r, k] of a top-k set of each row of ``keys`` [r, w] (contiguous), ascending."""
    return _topk_offsets(keys, k).sort(dim=1).values


def _magnitude_keys(block: Tensor, out: Tensor) -> Tensor:
    """int32 keys ordered like ``|block|`` (float32 bits without the sign; NaN sorts highest)."""
    if block.dtype != torch.float32:
        out.view(torch.float32).copy_(block)
        block = out.view(torch.float32)
    return torch.bitwise_and(block.view(torch.int32), 0x7FFFFFFF, out=out)


def map_threads(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on ``torch.get_num_threads()`` threads, each single-threaded inside.

    The CPU codec works on cache-sized pieces, too small for torch's intra-op threading to pay
    off (1.3x on 2 cores); independent pieces on their own threads do (1.6x; ops release the
    GIL). Results never depend on the thread count. The intra-op setting is process-wide, so it
    is lowered to 1 for the duration and restored.
    """
    items = list(items)
    configured = torch.get_num_threads()
    if configured <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(configured, len(items))) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(configured)


def _select_block(rows: Tensor, k: int, offsets: Tensor, values: Tensor) -> None:
    """CPU top-k of ``rows`` [r, chunk] into ``offsets``/``values`` [r, k], one cache-sized block at a time."""
    r, chunk = rows.shape
    block = max(1, _CPU_BLOCK_ELEMS // chunk)
    scratch = torch.empty(min(block, r), chunk, dtype=torch.int32)
    for start in range(0, r, block):
        stop = min(start + block, r)
        keys = _magnitude_keys(rows[start:stop], scratch[: stop - start])
        off = topk_sorted(keys, k)
        offsets[start:stop] = off
        values[start:stop] = rows[start:stop].gather(1, off)  # still in cache


def select_rows(rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Sorted kept offsets int64 [r, k] and their float32 values for full chunks ``rows`` [r, chunk]."""
    r, chunk = rows.shape
    if rows.device.type != "cpu":
        offsets = torch.topk(rows.abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
        return offsets, rows.gather(1, offsets).to(torch.float32)
    offsets = torch.empty(r, k, dtype=torch.int64)
    values = torch.empty(r, k, dtype=torch.float32)
    threads = max(1, min(torch.get_num_threads(), r * chunk // _CPU_BLOCK_ELEMS))
    bounds = [r * i // threads for i in range(threads + 1)]
    map_threads(lambda i: _select_block(rows[bounds[i]:bounds[i + 1]], k, offsets[bounds[i]:bounds[i + 1]],
                                         values[bounds[i]:bounds[i + 1]]), range(threads))
    return offsets, values
