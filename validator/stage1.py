"""Stage 1: cheap per-peer filters that decide which uploads are worth a loss evaluation.

Each collected upload either becomes a :class:`Candidate` (parsed, signed, in sync,
decoded, finite, within the window's norm bounds, not a copy) or gets exactly one stored
reason (``scoring.filters.Rejection`` value plus a detail). The order is cheapest first,
and a failure of one peer never affects another (every step is per peer and caught).

1. registered hotkey and not banned (DB state), collected on time (collect.py);
2. the strict wire parser: size, structure, signature (its ``WireError.reason`` is kept
   as the detail of ``malformed``; a bad signature has its own reason);
3. the signed metadata: spec version, hotkey == uploader, window == W. An upload signed
   by another hotkey (``foreign``) or for another window (``wrong_window``) is not held
   against the miner: whoever can write to its store can put those there (another miner's
   signed delta, the victim's own old one), so they count as *missing*, never as a copy or
   replay (which ban for 200 windows);
4. sync: the signed base-model hash must be theta_W's; the hash of an older theta (kept
   in ``recent_hashes``) counts as ``steps_behind`` for the sync score, anything else
   (or too far behind) is ``out_of_sync``;
5. decode, finiteness, and norm bounds against the median of this window's norms;
6. copy detection within the window and against earlier windows' sketches
   (``scoring.copies``); the earlier uploader is kept, the later one rejected and banned.
   Only deltas that passed step 3 get here, so a ban always rests on the hotkey's own
   signature for W.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from protocol.codec import CodecConfig, EncodedTensor
from protocol.hparams import HParams
from protocol.sync import SparseUpdate
from protocol.wire import DeltaMeta
from scoring.copies import CopyFinding, PeerSketch, detect_copies
from scoring.filters import Rejection, check_norm
from validator.collect import Collected

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Decoded:
    """A peer's delta as the validator holds it: compressed, decoded only when it is used.

    The validator keeps every accepted upload of the window (and copy detection keeps a
    history of earlier windows), so what it holds per peer decides its memory. ``encoded`` is
    the parsed, validated codec form, about the upload's own size (10 bits per kept value);
    the decoded forms cost 12 bytes per kept value each, ~200 MB per peer at 1B parameters.
    So they are rebuilt on demand, one peer at a time:

    * :meth:`load_update`: name -> (flat int64 indices into the real tensor, float32 values),
      padding dropped, for the evaluation step and the aggregate;
    * :meth:`rows`: the codec's ``[n_chunks, k]`` layout with per-tensor offsets, for copy
      detection (``scoring.copies.PeerSketch.lazy``).

    ``norm`` is measured once, when the upload is parsed. Tests and tools may pass decoded
    forms directly (``update``, ``sketch_idx``, ``sketch_val``) instead of ``encoded``.
    """

    update: SparseUpdate | None
    sketch_idx: torch.Tensor | None
    sketch_val: torch.Tensor | None
    norm: float
    encoded: Mapping[str, EncodedTensor] | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = None
    cfg: CodecConfig | None = None

    def _tensors(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, int, int]]:
        assert self.encoded is not None and self.shapes is not None and self.cfg is not None
        return _decoded_tensors(self.encoded, self.shapes, self.cfg)

    def load_update(self) -> SparseUpdate:
        if self.update is not None:
            return self.update
        return {name: _real(idx, val, numel) for name, idx, val, numel, _offset in self._tensors()}

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sketch_idx is not None and self.sketch_val is not None:
            return self.sketch_idx, self.sketch_val
        parts = [(idx + offset, val) for _name, idx, val, _numel, offset in self._tensors()]
        return torch.cat([i for i, _ in parts]), torch.cat([v for _, v in parts])

    @property
    def sketch_shape(self) -> tuple[int, int]:
        if self.sketch_idx is not None:
            return (int(self.sketch_idx.shape[0]), int(self.sketch_idx.shape[1]))
        assert self.encoded is not None and self.cfg is not None
        return (sum(int(e.idx.shape[0]) for e in self.encoded.values()), self.cfg.topk)

    def nbytes(self) -> int:
        """Bytes of the tensors this object keeps alive (what each accepted peer costs the validator)."""
        held = [t for pair in (self.update or {}).values() for t in pair]
        held += [t for t in (self.sketch_idx, self.sketch_val) if t is not None]
        held += [t for e in (self.encoded or {}).values() for t in (e.idx, e.codes, e.lut)]
        return sum(t.numel() * t.element_size() for t in held)


@dataclass(slots=True)
class Candidate:
    """An upload that passed Stage 1."""

    hotkey: str
    uid: int | None
    uploaded_at: float
    payload_hash: str
    size: int
    steps_behind: int
    decoded: Decoded


@dataclass(slots=True)
class Rejected:
    """A peer with no usable upload this window, and why (stored in its receipt)."""

    hotkey: str
    uid: int | None
    reason: Rejection
    detail: str = ""
    copy_of: str | None = None
    uploaded_at: float | None = None
    payload_hash: str | None = None
    size: int | None = None
    norm: float | None = None


@dataclass(slots=True)
class Stage1Result:
    accepted: dict[str, Candidate] = field(default_factory=dict)
    rejected: dict[str, Rejected] = field(default_factory=dict)
    median_norm: float | None = None


class SketchHistory:
    """The last ``keep`` windows' accepted sketches, for replay detection (memory only).

    After a restart the history starts empty; signed window numbers still catch replays
    of a peer's own old uploads, so only cross-window copies of *someone else's* values in
    the first windows after a restart can slip through (documented limitation).
    """

    def __init__(self, keep: int) -> None:
        self._windows: deque[tuple[int, list[PeerSketch]]] = deque(maxlen=max(1, keep))

    def add(self, window: int, sketches: list[PeerSketch]) -> None:
        if not self._windows or self._windows[-1][0] < window:
            self._windows.append((window, sketches))

    def before(self, window: int) -> list[PeerSketch]:
        return [s for w, group in self._windows if w < window for s in group]


# --------------------------------------------------------------------------- decoding


def _decoded_tensors(encoded: Mapping[str, EncodedTensor], shapes: Mapping[str, tuple[int, ...]], cfg: CodecConfig
                     ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, int, int]]:
    """Per tensor, in name order: its decoded ``[n_chunks, k]`` indices and values, its size, and its
    offset in the sketch layout (past the previous tensors' chunk-padded sizes). One tensor at a time."""
    from protocol.codec import decode_sparse

    offset = 0
    for name in sorted(shapes):
        sparse = decode_sparse(encoded[name], cfg)
        numel = math.prod(shapes[name])
        idx = sparse.indices.to(torch.int64)
        yield name, idx, sparse.values.to(torch.float32), numel, offset
        offset += max(idx.shape[0] * cfg.chunk or numel, numel)


def _real(idx: torch.Tensor, val: torch.Tensor, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into the real tensor and their values: positions in the chunk padding carry no parameter."""
    flat_idx, flat_val = idx.reshape(-1), val.reshape(-1)
    real = flat_idx < numel
    return flat_idx[real].contiguous(), flat_val[real].contiguous()


def decode_upload(encoded: Mapping[str, EncodedTensor], shapes: Mapping[str, tuple[int, ...]], cfg: CodecConfig
                  ) -> Decoded:
    """Decode once to measure the norm (non-finite if any value is), keep the compressed form.

    Raises ValueError (or KeyError, RuntimeError) on anything inconsistent.
    """
    sq = sum(float(torch.sum(val.double() ** 2)) for _name, _idx, val, _numel, _offset in _decoded_tensors(
        encoded, shapes, cfg))
    return Decoded(None, None, None, math.sqrt(sq), encoded=dict(encoded), shapes=shapes, cfg=cfg)


# --------------------------------------------------------------------------- the filters


def _check_meta(meta: DeltaMeta, *, window: int, hotkey: str, hp: HParams) -> tuple[Rejection, str] | None:
    if meta.spec_version != hp.spec_version:
        return Rejection.MALFORMED, f"spec_version {meta.spec_version} != {hp.spec_version}"
    if meta.hotkey != hotkey:  # not this miner's signature: maybe planted, never a ban
        return Rejection.FOREIGN, f"signed by {str(meta.hotkey)[:64]}"
    if meta.window != window:  # the miner's own upload for another window: maybe put back by someone else
        return Rejection.WRONG_WINDOW, f"signed for window {str(meta.window)[:24]}"
    return None


def steps_behind(base_hash: str, *, window: int, recent_hashes: Mapping[str, int]) -> int | None:
    """How many windows old the peer's base model is (0 = theta_W); None if unknown."""
    base_window = recent_hashes.get(base_hash)
    return None if base_window is None or base_window > window else window - base_window


def _wire_rejection(reason: str) -> Rejection:
    """The Stage-1 reason for a wire parser's reason code (the code itself is kept as the detail)."""
    if "signature" in reason:
        return Rejection.BAD_SIGNATURE
    if reason.endswith("not_finite"):  # NaN/Inf in a value table: say so, not just "malformed"
        return Rejection.NOT_FINITE
    return Rejection.MALFORMED


def _parse_one(
    peer: Collected, *, window: int, hp: HParams, shapes: Mapping[str, tuple[int, ...]], cfg: CodecConfig,
    recent_hashes: Mapping[str, int],
) -> Candidate | Rejected:
    from protocol.wire import WireError, parse_delta

    base = Rejected(peer.hotkey, peer.uid, Rejection.MALFORMED, uploaded_at=peer.uploaded_at, size=peer.size)
    assert peer.data is not None
    try:
        parsed = parse_delta(peer.data, expected_shapes=shapes, cfg=cfg, max_bytes=hp.max_upload_bytes)
    except WireError as exc:
        base.reason = _wire_rejection(exc.reason)
        base.detail = f"{exc.reason}: {exc.detail}"[:500]
        return base
    base.payload_hash = parsed.payload_hash
    problem = _check_meta(parsed.meta, window=window, hotkey=peer.hotkey, hp=hp)
    if problem is not None:
        base.reason, base.detail = problem[0], problem[1]
        return base
    behind = steps_behind(parsed.meta.base_model_hash, window=window, recent_hashes=recent_hashes)
    if behind is None or behind >= hp.scoring.sync_max_behind:
        base.reason = Rejection.OUT_OF_SYNC
        base.detail = f"base {parsed.meta.base_model_hash[:16]} behind={behind}"
        return base
    try:
        decoded = decode_upload(parsed.encoded, shapes, cfg)
    except (ValueError, KeyError, RuntimeError) as exc:
        base.reason, base.detail = Rejection.MALFORMED, f"decode: {exc}"[:500]
        return base
    if not math.isfinite(decoded.norm):  # a NaN or an infinity anywhere makes the sum of squares non-finite
        base.reason = Rejection.NOT_FINITE
        return base
    return Candidate(peer.hotkey, peer.uid, float(peer.uploaded_at or 0.0), parsed.payload_hash,
                     int(parsed.size), behind, decoded)


def run_stage1(
    collected: Mapping[str, Collected],
    *,
    window: int,
    hp: HParams,
    shapes: Mapping[str, tuple[int, ...]],
    cfg: CodecConfig,
    recent_hashes: Mapping[str, int],
    banned: Iterable[str] = (),
    history: SketchHistory | None = None,
    copy_seed: int = 0,
) -> Stage1Result:
    """Apply every filter; each registered hotkey ends in ``accepted`` or ``rejected``."""
    result = parse_uploads(collected, window=window, hp=hp, shapes=shapes, cfg=cfg, recent_hashes=recent_hashes,
                           banned=banned)
    filter_norms(result, hp)
    _filter_copies(result, window=window, hp=hp, history=history, seed=copy_seed)
    return result


def parse_uploads(
    collected: Mapping[str, Collected],
    *,
    window: int,
    hp: HParams,
    shapes: Mapping[str, tuple[int, ...]],
    cfg: CodecConfig,
    recent_hashes: Mapping[str, int],
    banned: Iterable[str] = (),
) -> Stage1Result:
    """The per-peer filters (ban, collection, wire, metadata, sync, decode, finiteness), no window-wide ones.

    Public so that ``gauntlet audit`` can re-check one peer's upload with exactly these checks, then
    apply the window-wide norm bounds with the other peers' published norms (:func:`filter_norms`).
    """
    result = Stage1Result()
    banned = set(banned)
    for hotkey, peer in collected.items():
        if hotkey in banned:
            result.rejected[hotkey] = Rejected(hotkey, peer.uid, Rejection.BANNED)
        elif not peer.ok:
            result.rejected[hotkey] = Rejected(hotkey, peer.uid, peer.reason or Rejection.MISSING,
                                               peer.detail, uploaded_at=peer.uploaded_at, size=peer.size)
        else:
            try:
                out = _parse_one(peer, window=window, hp=hp, shapes=shapes, cfg=cfg, recent_hashes=recent_hashes)
            except Exception as exc:  # per-peer isolation: one upload never aborts the window
                log.exception("window %d: unexpected error parsing %s", window, hotkey)
                out = Rejected(hotkey, peer.uid, Rejection.MALFORMED, f"internal: {exc!r}"[:500])
            target = result.accepted if isinstance(out, Candidate) else result.rejected
            target[hotkey] = out  # type: ignore[assignment]
    return result


def filter_norms(result: Stage1Result, hp: HParams) -> None:
    """Norm bounds against the median of ``result.accepted``, then the median of the survivors (in place)."""
    norms = {hk: c.decoded.norm for hk, c in result.accepted.items()}
    for hotkey, reason in check_norm(norms, hp.scoring.max_norm_ratio).items():
        cand = result.accepted.pop(hotkey)
        result.rejected[hotkey] = Rejected(hotkey, cand.uid, reason, f"norm={cand.decoded.norm:.6g}",
                                           uploaded_at=cand.uploaded_at, payload_hash=cand.payload_hash,
                                           size=cand.size, norm=cand.decoded.norm)
    # The median for clipping is over the peers that survived, like the aggregate's.
    kept = [c.decoded.norm for c in result.accepted.values()]
    result.median_norm = statistics.median(kept) if kept else None


def _filter_copies(
    result: Stage1Result, *, window: int, hp: HParams, history: SketchHistory | None, seed: int
) -> None:
    sketches = [PeerSketch.lazy(c.hotkey, window, c.uploaded_at, c.decoded.rows, c.decoded.sketch_shape)
                for c in result.accepted.values()]
    earlier = history.before(window) if history is not None else []
    findings = detect_copies(sketches, earlier, hp.scoring.copy_overlap_threshold,
                             hp.scoring.copy_value_cosine, seed=seed,
                             coverage_threshold=hp.scoring.copy_coverage_threshold)
    for hotkey, finding in findings.items():
        cand = result.accepted.pop(hotkey)
        reason = Rejection.REPLAY if finding.kind == "replay" else Rejection.COPY
        result.rejected[hotkey] = Rejected(
            hotkey, cand.uid, reason, _copy_detail(finding),
            copy_of=finding.of_hotkey, uploaded_at=cand.uploaded_at, payload_hash=cand.payload_hash,
            size=cand.size, norm=cand.decoded.norm)
    if history is not None:
        # Keep every sketch (copies too): a later replay of a copy is still a replay.
        history.add(window, sketches)


def _copy_detail(finding: CopyFinding, shown: int = 4) -> str:
    """The receipt's rejection detail; a copy assembled from several sources names the first few."""
    detail = (f"of {finding.of_hotkey}@{finding.of_window} overlap={finding.overlap:.3f} "
              f"cos={finding.cosine:.3f}")
    if len(finding.sources) > 1:
        named = ",".join(f"{hk}@{w}" for hk, w in finding.sources[:shown])
        more = f"+{len(finding.sources) - shown}" if len(finding.sources) > shown else ""
        detail += f" coverage={finding.coverage:.3f} sources={named}{more}"
    return detail
