"""Copy and replay detection on sparse top-k deltas.

What it decides: whether an upload is a copy of uploads made before it in the same window
(the *later* uploader by store timestamp is the copier; the earliest one keeps its score)
or a replay of uploads from earlier windows. Three criteria, checked in this order:

* **whole-delta replay** -- one earlier-window upload, the peer's own old deltas included,
  over either threshold below;
* **whole-delta copy** -- one earlier same-window upload over either threshold:
  **index overlap**, the mean over chunks of ``|A_c ∩ B_c| / k`` (``copy_overlap_threshold``,
  0.6), or **value cosine** of the two sparse vectors (``copy_value_cosine``, 0.95; Gauntlet
  notes: "use value sketches, not only index sets"), which catches rescaled copies. Honest
  peers training on different data pick top-k sets that barely meet: at random the expected
  overlap is ``k / chunk = 64 / 4096 ≈ 1.6 %``, while a sybil or a noisy copy overlaps ≈ 1;
* **coverage** -- ``mean_c max_s |A_c ∩ S_c| / k`` over several earlier uploads ``S``
  (``copy_coverage_threshold``; 0.5 here, 0.6 in the subnet's hyper-parameters). A delta assembled from chunks of ``m`` peers keeps
  every chunk's index set intact, so each chunk's best overlap is ≈ 1 while each pair's
  whole-delta overlap is only ≈ 1/m and passes the two checks above. The peer's *own*
  history is not a coverage source: with error feedback (beta 0.99) an honest miner's
  consecutive uploads share indices (≈ 0.4), which only the whole-delta replay check judges.
  The finding names the source whose chunks add most to the coverage; it is a replay when
  that source is from an earlier window.

Scaling (128+ peers, plus ``copy_history_windows`` windows of history): comparing every pair
exactly is O(peers²) sorts of whole deltas. Instead each upload is first reduced to a
**signed count sketch** (feature hashing; Charikar et al. 2002, Weinberger et al. 2009) of
``dim`` floats, twice: once of its index *indicator* vector and once of its *values*.
Signed hashing preserves inner products in expectation, so one matrix product gives an
estimate of every pair's overlap and cosine with standard error ≈ ``1/sqrt(dim)``
(≈ 0.016 at the default ``dim = 4096``), independent of the model size. Only pairs whose
estimate comes within ``margin`` (0.1, > 6 standard errors) of a threshold are confirmed
exactly by a batched binary search over sorted rows, and each peer stops at its first
confirmed match. For coverage, the candidate sources of a peer are the earlier uploads whose
overlap estimate reaches ``source_floor`` (0.05): a source dealt 8 % of the chunks estimates
≈ 0.08 + 0.016 of background, 2.8 standard errors above the floor, while an unrelated
upload (≈ 0.016) crosses it with probability ≈ 2 %. At most ``max_sources`` (16) of the
highest estimates are kept, and only if their estimates sum to ``coverage_threshold - margin``
(coverage is at most the sum of the sources' overlaps). A delta of more than 1,024 chunks is
then scored on 1,024 random chunks (standard error ≤ 0.016) before the exact pass over all of
them. Cost: O(total entries) to hash, one ``[peers, peers + history] x dim`` product, and per
peer that passes the gate at most ``max_sources`` lookups of 1,024·k entries; the exact
O(max_sources·n_chunks·k·log k) pass runs only for likely copies. An honest window with
a short history does no exact work at all.
MinHash was the alternative; it sees only index sets, while the count sketch serves both
criteria from one mechanism.

The hash is a 2-universal ``(a·x + b) mod (2^31 - 1)`` family drawn from ``seed``. Pass
a per-window seed the miners cannot predict (and publish it afterwards in the receipt):
with a known hash, a copier could pick replacement indices whose collisions cancel the
estimate. Callers may also put the top-k compressed previous aggregate into ``history``
under a reserved hotkey, so that re-uploading the public aggregate counts as a replay.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_COVERAGE_THRESHOLD",
    "DEFAULT_MARGIN",
    "DEFAULT_MAX_SOURCES",
    "DEFAULT_SKETCH_DIM",
    "DEFAULT_SOURCE_FLOOR",
    "CopyFinding",
    "PeerSketch",
    "count_sketch",
    "count_sketches",
    "detect_copies",
    "index_overlap",
    "pair_similarity",
    "value_cosine",
]

#: Width of the count sketch; standard error of the estimates ≈ 1/sqrt(dim) ≈ 0.016.
DEFAULT_SKETCH_DIM = 4096
#: A pair is confirmed exactly when its estimate is within this of a threshold (> 6 s.e.).
DEFAULT_MARGIN = 0.1
#: Coverage (mean over chunks of the best source's overlap) at which an upload is a copy.
DEFAULT_COVERAGE_THRESHOLD = 0.5
#: Overlap estimate from which an earlier upload is a coverage source candidate: an 8 % source
#: estimates >= 0.08 + 0.016 background, 2.8 s.e. above; an unrelated upload crosses it ~2 % of the time.
DEFAULT_SOURCE_FLOOR = 0.05
#: Candidate sources computed exactly per peer (the highest estimates): bounds the exact work.
DEFAULT_MAX_SOURCES = 16

#: A source is listed in a finding when the chunks it best explains add this much to the coverage:
#: above the ~1.6 % that an unrelated upload scores by chance on the copier's own chunks.
_MIN_SOURCE_SHARE = 0.02

#: Chunks whose coverage is sampled before the exact pass: s.e. <= 0.5/sqrt(1024) ~ 0.016.
_COVERAGE_SAMPLE = 1024
#: Index lookups per batched ``searchsorted`` of the coverage pass (~32 MB of int64).
_LOOKUP_BATCH = 1 << 22

#: Peers hashed per batch (~2M entries at 1,000 chunks x 64 each): few large ops, bounded memory.
_SKETCH_BATCH = 32
#: ...and at most this many entries per batch (~200 MB of temporaries), so 1B-parameter uploads
#: (16M entries each) are hashed one at a time.
_SKETCH_ENTRIES = 1 << 24

_PRIME = (1 << 31) - 1  # Mersenne prime; a*x stays below 2**62, so int64 never overflows


@dataclass(frozen=True, slots=True, eq=False)
class PeerSketch:
    """One upload as copy detection sees it.

    ``indices``: int64 ``[n_chunks, k]``, every tensor's kept flat indices with a per-tensor
    offset so they are unique across the model; row ``c`` is chunk ``c`` for every peer.
    ``values``: float32 of the same shape (the decoded kept values). ``uploaded_at`` is the
    store's timestamp.

    A validator holding many peers (and ``copy_history_windows`` windows of them) keeps each
    upload compressed instead: :meth:`lazy` takes a ``load`` that decodes the rows when they
    are needed (hashing, and an exact check of a likely copy) and ``shape``, and nothing
    decoded is kept, so memory grows by the compressed size per upload, not 12 bytes per entry.
    """

    hotkey: str
    window: int
    uploaded_at: float
    indices: Tensor | None = None
    values: Tensor | None = None
    load: Callable[[], tuple[Tensor, Tensor]] | None = None
    rows_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.indices is None or self.values is None:
            if self.load is None or len(self.rows_shape) != 2:
                raise ValueError(f"{self.hotkey}: a sketch needs its rows, or load and a [n_chunks, k] shape")
            return
        if self.indices.dim() != 2 or self.indices.shape != self.values.shape:
            raise ValueError(
                f"{self.hotkey}: indices {tuple(self.indices.shape)} and values "
                f"{tuple(self.values.shape)} must be equal 2-D shapes [n_chunks, k]"
            )
        object.__setattr__(self, "rows_shape", tuple(self.indices.shape))

    @classmethod
    def lazy(cls, hotkey: str, window: int, uploaded_at: float, load: Callable[[], tuple[Tensor, Tensor]],
             shape: tuple[int, int]) -> PeerSketch:
        return cls(hotkey, window, uploaded_at, load=load, rows_shape=tuple(shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.rows_shape

    @property
    def numel(self) -> int:
        return math.prod(self.rows_shape)

    def rows(self) -> tuple[Tensor, Tensor]:
        """``(indices, values)``, decoded now if this sketch is lazy."""
        if self.indices is not None and self.values is not None:
            return self.indices, self.values
        assert self.load is not None
        idx, val = self.load()
        if tuple(idx.shape) != self.rows_shape or idx.shape != val.shape:
            raise ValueError(f"{self.hotkey}: loaded rows {tuple(idx.shape)} do not have the sketch's shape")
        return idx, val

    @classmethod
    def from_tensors(
        cls,
        hotkey: str,
        window: int,
        uploaded_at: float,
        tensors: Mapping[str, tuple[Tensor, Tensor]],
        chunk: int,
    ) -> PeerSketch:
        """Concatenate per-tensor ``(indices, values)`` (each ``[n_chunks_t, k]``, indices flat
        positions in the chunk-padded tensor, as ``protocol.codec.decode_sparse`` gives them)
        in name order, offsetting each tensor's indices past the previous tensors' padded size.
        """
        idx_parts: list[Tensor] = []
        val_parts: list[Tensor] = []
        offset = 0
        for name in sorted(tensors):
            idx, val = tensors[name]
            idx_parts.append(idx.to(torch.int64) + offset)
            val_parts.append(val.to(torch.float32))
            offset += idx.shape[0] * chunk
        if not idx_parts:
            empty = torch.zeros((0, 0))
            return cls(hotkey, window, uploaded_at, empty.to(torch.int64), empty)
        return cls(hotkey, window, uploaded_at, torch.cat(idx_parts), torch.cat(val_parts))


@dataclass(frozen=True, slots=True)
class CopyFinding:
    """``hotkey``'s upload copies ``of_hotkey``'s upload of ``of_window`` (exact similarities).

    ``overlap`` and ``cosine`` are the whole-delta similarities with ``of_hotkey``'s upload.
    ``sources`` lists every contributing ``(hotkey, window)``, largest contribution first, and
    ``coverage`` is the mean over chunks of their best per-chunk overlap (for a whole-delta
    finding: the one source and its overlap).
    """

    kind: Literal["copy", "replay"]
    of_hotkey: str
    of_window: int
    overlap: float
    cosine: float
    sources: tuple[tuple[str, int], ...] = ()
    coverage: float = 0.0


@dataclass(frozen=True, slots=True)
class _Sorted:
    """A peer's rows sorted by index (done once per peer, reused for every pair it is in)."""

    idx: Tensor  # int64 [n, k], each row ascending
    val: Tensor  # float64 [n, k], permuted alongside
    norm: float  # Euclidean norm of all values


def _prepare(idx: Tensor, val: Tensor) -> _Sorted:
    sorted_idx, perm = torch.sort(idx, dim=1)
    sorted_val = val.to(torch.float64).gather(1, perm)
    return _Sorted(sorted_idx, sorted_val, float(torch.linalg.vector_norm(sorted_val)))


def _merge(a: _Sorted, b: _Sorted) -> tuple[float, float]:
    """Exact ``(overlap, cosine)`` of two prepared peers by a batched binary search.

    Each of B's indices is looked up in A's sorted row of the same chunk
    (``torch.searchsorted`` over all chunks at once): O(n·k·log k), no Python loop.
    """
    if a.idx.shape != b.idx.shape:
        raise ValueError(f"index shapes differ: {tuple(a.idx.shape)} vs {tuple(b.idx.shape)}")
    n, k = a.idx.shape
    if n == 0 or k == 0:
        return 0.0, 0.0
    pos = torch.searchsorted(a.idx, b.idx).clamp_(max=k - 1)
    match = a.idx.gather(1, pos) == b.idx
    # Duplicate indices inside a row are the parser's to reject; clamp so they cannot push past 1.
    overlap = min(1.0, float(match.sum()) / (n * k))
    dot = float((a.val.gather(1, pos) * b.val * match).sum())
    denom = a.norm * b.norm
    cosine = dot / denom if denom > 0 and math.isfinite(denom) and math.isfinite(dot) else 0.0
    return overlap, cosine


def _best_source(mine: Tensor, sources: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per chunk, the highest ``|A_c ∩ S_c| / k`` over ``sources`` and which source has it.

    ``mine`` is ``[n, k]``; each source is ``[n, k]`` with ascending rows. Sources are looked up
    in groups of about ``_LOOKUP_BATCH`` entries (one batched ``searchsorted`` each): no Python
    loop over chunks, bounded memory. Ties go to the first source (``argmax``'s first maximum).
    """
    n, k = mine.shape
    per = max(1, _LOOKUP_BATCH // max(1, n * k))
    rows: list[Tensor] = []
    for start in range(0, len(sources), per):
        group = torch.stack(sources[start : start + per])  # [g, n, k]
        wanted = mine.unsqueeze(0).expand_as(group).contiguous()
        pos = torch.searchsorted(group, wanted).clamp_(max=k - 1)
        rows.append((group.gather(2, pos) == wanted).sum(dim=2, dtype=torch.float64) / k)
    # Duplicate indices inside a row are the parser's to reject; clamp so they cannot push past 1.
    overlaps = torch.cat(rows).clamp_(max=1.0)  # [m, n]
    owner = overlaps.argmax(dim=0)
    return overlaps.gather(0, owner.unsqueeze(0)).squeeze(0), owner


def index_overlap(a_idx: Tensor, b_idx: Tensor) -> float:
    """Mean over chunks of ``|A_c ∩ B_c| / k`` for two ``[n_chunks, k]`` index tensors.

    Every row has exactly ``k`` entries, so the mean of per-chunk fractions equals the
    total shared count over ``n_chunks·k``.
    """
    overlap, _ = _merge(_prepare(a_idx, torch.zeros(a_idx.shape)), _prepare(b_idx, torch.zeros(b_idx.shape)))
    return overlap


def value_cosine(a: PeerSketch, b: PeerSketch) -> float:
    """Cosine similarity of the two sparse vectors; dense-free (matches on shared indices)."""
    _, cosine = _merge(_prepare(*a.rows()), _prepare(*b.rows()))
    return cosine


def pair_similarity(a: PeerSketch, b: PeerSketch) -> tuple[float, float]:
    """Exact ``(index_overlap, value_cosine)`` in one pass; ``(0, 0)`` if the shapes differ."""
    if a.shape != b.shape:
        return 0.0, 0.0
    return _merge(_prepare(*a.rows()), _prepare(*b.rows()))


def _hash_params(seed: int) -> tuple[int, int, int, int]:
    rng = random.Random(seed)  # a private generator: no global RNG state is touched
    return (rng.randrange(1, _PRIME), rng.randrange(_PRIME), rng.randrange(1, _PRIME), rng.randrange(_PRIME))


def count_sketches(
    peers: Sequence[PeerSketch], dim: int = DEFAULT_SKETCH_DIM, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Unit-norm signed count sketches of many peers: ``(of the index indicators, of the values)``.

    Both are ``[len(peers), dim]``. ``<row_a, row_b>`` estimates ``|A∩B| / sqrt(|A||B|)``
    (= the overlap for equal shapes) and the value cosine respectively, with standard error
    ≈ ``1/sqrt(dim)``. Peers are hashed in batches: a few large tensor operations instead of
    many small ones, which matters when CPU threads are contended.
    """
    a1, b1, a2, b2 = _hash_params(seed)
    supports: list[Tensor] = [torch.zeros((0, dim))]
    values: list[Tensor] = [torch.zeros((0, dim))]
    for group in _batches(peers):
        g = len(group)
        rows = [p.rows() for p in group]  # a lazy sketch is decoded here, one batch at a time
        sizes = torch.tensor([idx.numel() for idx, _ in rows], dtype=torch.int64)
        owner = torch.repeat_interleave(torch.arange(g), sizes)
        x = torch.remainder(torch.cat([idx.reshape(-1).to(torch.int64) for idx, _ in rows]), _PRIME)
        slot = owner * dim + torch.remainder(torch.remainder(x * a1 + b1, _PRIME), dim)
        sign = (torch.remainder(x * a2 + b2, _PRIME) & 1).to(torch.float32) * 2 - 1
        vals = torch.cat([val.reshape(-1).to(torch.float32) for _, val in rows])
        del rows
        vals = torch.nan_to_num(vals, nan=0.0, posinf=0.0, neginf=0.0)
        support = torch.zeros(g * dim).index_add_(0, slot, sign).view(g, dim)
        value = torch.zeros(g * dim).index_add_(0, slot, sign * vals).view(g, dim)
        vnorm = torch.zeros(g, dtype=torch.float64).index_add_(0, owner, vals.to(torch.float64) ** 2).sqrt()
        supports.append(support / sizes.to(torch.float32).sqrt().clamp(min=1.0).unsqueeze(1))
        values.append(value / torch.where(vnorm > 0, vnorm, 1.0).to(torch.float32).unsqueeze(1))
    return torch.cat(supports), torch.cat(values)


def _batches(peers: Sequence[PeerSketch]) -> list[list[PeerSketch]]:
    """Consecutive groups of at most ``_SKETCH_BATCH`` peers and ``_SKETCH_ENTRIES`` entries (one peer at least)."""
    out: list[list[PeerSketch]] = []
    group: list[PeerSketch] = []
    entries = 0
    for p in peers:
        if group and (len(group) == _SKETCH_BATCH or entries + p.numel > _SKETCH_ENTRIES):
            out.append(group)
            group, entries = [], 0
        group.append(p)
        entries += p.numel
    if group:
        out.append(group)
    return out


def count_sketch(peer: PeerSketch, dim: int = DEFAULT_SKETCH_DIM, seed: int = 0) -> tuple[Tensor, Tensor]:
    """One peer's ``(index, value)`` count sketches, each ``[dim]`` (see :func:`count_sketches`)."""
    support, value = count_sketches([peer], dim, seed)
    return support[0], value[0]


def _order_key(p: PeerSketch) -> tuple[int, float, str]:
    return (p.window, p.uploaded_at, p.hotkey)


class _Confirmer:
    """Exact pair and coverage checks with each peer's sorted rows computed at most once."""

    def __init__(self, overlap_threshold: float, cosine_threshold: float) -> None:
        self._thresholds = (overlap_threshold, cosine_threshold)
        self._cache: dict[int, _Sorted] = {}

    def _sorted(self, p: PeerSketch) -> _Sorted:
        key = id(p)
        if key not in self._cache:
            self._cache[key] = _prepare(*p.rows())
        return self._cache[key]

    def first(self, peer: PeerSketch, candidates: list[PeerSketch]) -> tuple[PeerSketch, float, float] | None:
        """The earliest candidate exactly over either threshold: the original, not a copy of it."""
        for other in sorted(candidates, key=_order_key):
            if other.shape != peer.shape:
                continue
            overlap, cosine = _merge(self._sorted(peer), self._sorted(other))
            if overlap >= self._thresholds[0] or cosine >= self._thresholds[1]:
                return other, overlap, cosine
        return None

    def covered(
        self,
        peer: PeerSketch,
        sources: list[PeerSketch],
        threshold: float,
        margin: float,
        gen: torch.Generator,
    ) -> CopyFinding | None:
        """A finding naming the largest source when ``sources`` (upload order) cover ``peer`` to ``threshold``.

        A large delta's coverage is first estimated on ``_COVERAGE_SAMPLE`` random chunks (their
        rows sorted on the fly, so no source is sorted whole), and computed exactly only if that
        reaches ``threshold - margin``. Chunk ``c`` goes to the source with the highest overlap
        there (the earliest upload on a tie); a source's share is the sum of the overlaps of the
        chunks it wins over ``n``, so the shares add up to the coverage. Listed: shares of at
        least ``_MIN_SOURCE_SHARE``, largest first, and always the largest.
        """
        n = peer.shape[0]
        mine = peer.rows()[0]
        if n > _COVERAGE_SAMPLE:
            rows = torch.randperm(n, generator=gen)[:_COVERAGE_SAMPLE]
            sampled = [torch.sort(s.rows()[0][rows], dim=1).values for s in sources]
            if float(_best_source(mine[rows], sampled)[0].mean()) < threshold - margin:
                return None
        best, owner = _best_source(mine, [self._sorted(s).idx for s in sources])
        coverage = float(best.mean())
        if coverage < threshold:
            return None
        share = torch.zeros(len(sources), dtype=torch.float64).index_add_(0, owner, best) / n
        ranked = share.argsort(descending=True, stable=True).tolist()
        listed = [sources[j] for r, j in enumerate(ranked) if r == 0 or share[j] >= _MIN_SOURCE_SHARE]
        top = listed[0]
        overlap, cosine = _merge(self._sorted(peer), self._sorted(top))
        kind: Literal["copy", "replay"] = "replay" if top.window < peer.window else "copy"
        named = tuple((s.hotkey, s.window) for s in listed)
        return CopyFinding(kind, top.hotkey, top.window, overlap, cosine, named, coverage)


def _coverage_candidates(
    est: Tensor,
    i: int,
    ordered: list[PeerSketch],
    history: Sequence[PeerSketch],
    floor: float,
    max_sources: int,
) -> tuple[list[PeerSketch], float]:
    """Earlier uploads that may have lent chunks to ``ordered[i]``, and their estimates' sum.

    ``est`` is the peer's row of overlap estimates against ``[*ordered, *history]``. Kept: the
    same-window peers before it, and history from earlier windows under *other* hotkeys (its own
    old uploads legitimately share indices), with the same shape and an estimate of at least
    ``floor``; at most ``max_sources`` of the highest, returned in upload order.
    """
    peer, n = ordered[i], len(ordered)
    picked: list[tuple[float, PeerSketch]] = []
    above = torch.nonzero(est >= floor).flatten()
    for j, e in zip(above.tolist(), est[above].tolist(), strict=True):
        other = ordered[j] if j < n else history[j - n]
        earlier = j < i if j < n else (other.window < peer.window and other.hotkey != peer.hotkey)
        if earlier and other.shape == peer.shape:
            picked.append((e, other))
    picked = sorted(picked, key=lambda e: -e[0])[:max_sources]
    return sorted((o for _, o in picked), key=_order_key), sum(e for e, _ in picked)


def detect_copies(
    peers: Sequence[PeerSketch],
    history: Sequence[PeerSketch],
    overlap_threshold: float,
    cosine_threshold: float,
    *,
    coverage_threshold: float = DEFAULT_COVERAGE_THRESHOLD,
    seed: int = 0,
    dim: int = DEFAULT_SKETCH_DIM,
    margin: float = DEFAULT_MARGIN,
    source_floor: float = DEFAULT_SOURCE_FLOOR,
    max_sources: int = DEFAULT_MAX_SOURCES,
) -> dict[str, CopyFinding]:
    """Flag copies within ``peers`` (one window) and replays of ``history`` (earlier windows).

    A replay is checked first: an upload matching an earlier window is a replay even if a
    same-window peer also sent it. Otherwise the upload is compared with the peers that
    uploaded before it (by ``uploaded_at``, ties broken by hotkey), and the earliest match
    is named as the original. Failing both, its coverage by several earlier uploads is
    checked (see the module docstring). History entries from the same or a later window
    than the peer are ignored. Returns findings for flagged hotkeys only.
    """
    hotkeys = [p.hotkey for p in peers]
    if len(set(hotkeys)) != len(hotkeys):
        raise ValueError("duplicate hotkeys in one window's uploads")
    if not peers:
        return {}
    ordered = sorted(peers, key=lambda p: (p.uploaded_at, p.hotkey))
    pool = [*ordered, *history]
    support, value = count_sketches(pool, dim, seed)
    n = len(ordered)
    est_overlap = support[:n] @ support.T  # [n, n + len(history)]
    est_cosine = value[:n] @ value.T
    near = (est_overlap >= overlap_threshold - margin) | (est_cosine >= cosine_threshold - margin)

    confirm = _Confirmer(overlap_threshold, cosine_threshold)
    # The same unpredictable seed picks the chunks that coverage is sampled on.
    sampler = torch.Generator().manual_seed(seed % (1 << 63))
    findings: dict[str, CopyFinding] = {}
    for i, peer in enumerate(ordered):
        row = near[i].tolist()
        replays = [h for j, h in enumerate(history) if row[n + j] and h.window < peer.window]
        hit = confirm.first(peer, replays)
        kind: Literal["copy", "replay"] = "replay"
        if hit is None:
            hit = confirm.first(peer, [ordered[j] for j in range(i) if row[j]])
            kind = "copy"
        if hit is not None:
            other, overlap, cosine = hit
            single = ((other.hotkey, other.window),)
            findings[peer.hotkey] = CopyFinding(
                kind, other.hotkey, other.window, overlap, cosine, single, overlap
            )
            continue
        if peer.numel == 0:
            continue
        sources, est_sum = _coverage_candidates(
            est_overlap[i], i, ordered, history, source_floor, max_sources
        )
        # Coverage is at most the sum of the sources' overlaps: skip the exact work when it cannot reach.
        if sources and est_sum >= coverage_threshold - margin:
            finding = confirm.covered(peer, sources, coverage_threshold, margin, sampler)
            if finding is not None:
                findings[peer.hotkey] = finding
    return findings
