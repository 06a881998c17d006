"""SparseLoCo codec: chunked top-k sparsification, 2-bit quantization and Elias-Fano index packing.

This module owns the *numbers* of a delta upload (what is kept, how it is packed, how it
is checked); ``protocol.wire`` owns the signed file around it. Everything is pure torch,
vectorised over all chunks of a tensor, and runs on CPU or CUDA tensors. No I/O.

Per tensor (SparseLoCo, arXiv 2508.15706):

* flatten and split into ``n_chunks = ceil(numel / chunk)`` chunks; the last one is
  conceptually zero-padded, and padding positions always lose to real positions;
* keep the ``k`` largest magnitudes of each chunk, kept offsets sorted ascending;
* quantize kept values to 2 bits: ``code = 2 * (v < 0) + (|v| > median |v|)`` with a
  per-tensor float32 lookup table (LUT) holding the mean of each of the 4 bins;
* pack the ``k`` sorted offsets of a chunk with Elias-Fano: ``L = floor(log2(chunk/k))``
  low bits each, plus a ``k + (chunk >> L)``-bit bitmap with bit ``(off_i >> L) + i``
  set for the high parts. At chunk 4096, k 64 that is 64 bytes per chunk (8 bits per
  index, against 12 for plain packing), plus 16 bytes of codes: 10 bits per kept value,
  against an information bound of about 9.4.

Bit streams are little-endian: bit ``b`` of a stream is bit ``b % 8`` of byte ``b // 8``,
and field ``i`` of width ``w`` occupies stream bits ``[i*w, (i+1)*w)``. Unused trailing
bits must be zero, so every accepted encoding is canonical.

Speed (benchmarks/codec.py): on CPU the cost is the per-chunk top-k, done hierarchically
(see ``protocol.topk``), about 3-4 CPU-seconds per billion parameters. torch's OpenMP
threads spin while they wait; on a small or shared host run with ``OMP_WAIT_POLICY=PASSIVE``,
and reuse output buffers (``decode_tensor(..., out=)``) rather than page-faulting new ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from protocol.hparams import CodecParams
from protocol.topk import map_threads, select_rows, topk_sorted

R = TypeVar("R")

__all__ = [
    "CODEC_REASONS",
    "LUT_BOUND",
    "CodecConfig",
    "EncodedTensor",
    "SparseTensor",
    "bits_per_kept_value",
    "decode",
    "decode_sparse",
    "decode_tensor",
    "encode",
    "encode_tensor",
    "encode_tensor_with_decoded",
    "encoded_layout",
    "find_encoding_error",
    "information_bound_bits",
    "map_tensors",
    "sparse_to_dense",
    "validate_encoded",
]

# Largest accepted |LUT entry|. Honest pseudo-gradients are many orders of magnitude smaller;
# the bound stops a single upload from injecting huge values into the aggregate.
LUT_BOUND = 1e4

# Reason codes of validate_encoded / find_encoding_error (protocol.wire.REASONS includes them).
CODEC_REASONS = frozenset(
    {
        "missing_tensor",
        "unexpected_tensor",
        "bad_dtype",
        "bad_shape",
        "lut_not_finite",
        "lut_out_of_range",
        "index_bitmap_invalid",
        "padding_bits_set",
        "index_not_increasing",
        "index_out_of_range",
    }
)


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CodecConfig:
    """Chunk size and kept values per chunk. ``chunk`` is a power of two, ``1 <= topk <= chunk``."""

    chunk: int = 4096
    topk: int = 64

    def __post_init__(self) -> None:
        if not (1 <= self.chunk <= 1 << 24) or self.chunk & (self.chunk - 1):
            raise ValueError(f"chunk must be a power of two in [1, 2**24], got {self.chunk}")
        if not 1 <= self.topk <= self.chunk:
            raise ValueError(f"topk must be in [1, chunk={self.chunk}], got {self.topk}")

    @classmethod
    def from_params(cls, p: CodecParams) -> CodecConfig:
        return cls(chunk=p.chunk, topk=p.topk)

    @property
    def low_bits(self) -> int:
        """Elias-Fano low bits per index, ``floor(log2(chunk / topk))``."""
        return (self.chunk // self.topk).bit_length() - 1

    @property
    def high_bits(self) -> int:
        """Length of the Elias-Fano high-part bitmap: ``topk`` ones among ``topk + (chunk >> L)`` bits."""
        return self.topk + (self.chunk >> self.low_bits)

    @property
    def low_bytes(self) -> int:
        return _ceil_div(self.topk * self.low_bits, 8)

    @property
    def high_bytes(self) -> int:
        return _ceil_div(self.high_bits, 8)

    @property
    def idx_bytes(self) -> int:
        """Bytes per chunk of the ``idx`` tensor: low-bit stream, then high-part bitmap."""
        return self.low_bytes + self.high_bytes

    @property
    def code_bytes(self) -> int:
        """Bytes per chunk of the ``codes`` tensor (2 bits per kept value)."""
        return _ceil_div(2 * self.topk, 8)

    def n_chunks(self, numel: int) -> int:
        return _ceil_div(numel, self.chunk)


def bits_per_kept_value(cfg: CodecConfig) -> float:
    """Wire bits per kept value, excluding the 16-byte per-tensor LUT."""
    return 8 * (cfg.idx_bytes + cfg.code_bytes) / cfg.topk


def information_bound_bits(cfg: CodecConfig) -> float:
    """``log2 C(chunk, k) / k + 2``: the fewest bits per kept value any index code can reach, plus the 2-bit code."""
    n, k = cfg.chunk, cfg.topk
    log_binom = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return log_binom / math.log(2) / k + 2


# ----------------------------------------------------------------------------- containers


@dataclass
class EncodedTensor:
    """One tensor on the wire: ``idx`` uint8 [n_chunks, idx_bytes], ``codes`` uint8 [n_chunks, code_bytes], ``lut`` float32 [4]."""

    shape: tuple[int, ...]
    idx: Tensor
    codes: Tensor
    lut: Tensor

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to(self, device: torch.device | str | None) -> EncodedTensor:
        if device is None:
            return self
        return EncodedTensor(self.shape, self.idx.to(device), self.codes.to(device), self.lut.to(device))


@dataclass
class SparseTensor:
    """Decoded sparse form: ``indices`` int64 [n_chunks, k] are flat positions in the padded tensor.

    Positions ``>= numel`` only occur in the last chunk when it has fewer than ``k`` real
    positions; their values are 0 and dense decoding drops them.
    """

    shape: tuple[int, ...]
    indices: Tensor
    values: Tensor

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# ----------------------------------------------------------------------------- bit packing


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pack_fields(values: Tensor, width: int) -> Tensor:
    """Pack ``values`` [n, m] (each < 2**width) into a little-endian bit stream, uint8 [n, ceil(m*width/8)]."""
    n, m = values.shape
    nbytes = _ceil_div(m * width, 8)
    if width == 0 or m == 0:
        return torch.zeros(n, nbytes, dtype=torch.uint8, device=values.device)
    m8 = _ceil_div(m, 8) * 8
    v = values.to(torch.int64)
    if m8 != m:
        v = torch.nn.functional.pad(v, (0, m8 - m))
    dev = v.device
    if width <= 8:
        # 8 fields of <= 8 bits make one int64 word of exactly `width` bytes.
        shifts = torch.arange(8, device=dev, dtype=torch.int64) * width
        words = (v.view(n, m8 // 8, 8) << shifts).sum(-1)
        byte_shifts = torch.arange(width, device=dev, dtype=torch.int64) * 8
        out = ((words.unsqueeze(-1) >> byte_shifts) & 0xFF).to(torch.uint8)
    else:
        # General widths: expand to bits, then regroup by 8 (slower, only for unusual configs).
        bit_shifts = torch.arange(width, device=dev, dtype=torch.int64)
        bits = ((v.unsqueeze(-1) >> bit_shifts) & 1).view(n, m8 * width // 8, 8)
        out = (bits << torch.arange(8, device=dev, dtype=torch.int64)).sum(-1).to(torch.uint8)
    return out.reshape(n, m8 * width // 8)[:, :nbytes].contiguous()


def _unpack_fields(packed: Tensor, width: int, m: int) -> Tensor:
    """Inverse of :func:`_pack_fields`: int64 [n, m]."""
    n = packed.shape[0]
    dev = packed.device
    if width == 0 or m == 0:
        return torch.zeros(n, m, dtype=torch.int64, device=dev)
    m8 = _ceil_div(m, 8) * 8
    full = m8 * width // 8
    p = packed.to(torch.int64)
    if full != p.shape[1]:
        p = torch.nn.functional.pad(p, (0, full - p.shape[1]))
    if width <= 8:
        byte_shifts = torch.arange(width, device=dev, dtype=torch.int64) * 8
        words = (p.view(n, m8 // 8, width) << byte_shifts).sum(-1)
        shifts = torch.arange(8, device=dev, dtype=torch.int64) * width
        v = (words.unsqueeze(-1) >> shifts) & ((1 << width) - 1)
    else:
        bits = (p.unsqueeze(-1) >> torch.arange(8, device=dev, dtype=torch.int64)) & 1
        bits = bits.view(n, m8, width)
        v = (bits << torch.arange(width, device=dev, dtype=torch.int64)).sum(-1)
    return v.reshape(n, m8)[:, :m]


def _pack_high(offsets: Tensor, cfg: CodecConfig) -> Tensor:
    """Elias-Fano high parts of sorted offsets [n, k] -> bitmap bytes [n, high_bytes] (bit ``h_i + i`` set)."""
    n, k = offsets.shape
    pos = (offsets >> cfg.low_bits) + torch.arange(k, device=offsets.device)
    out = torch.zeros(n, cfg.high_bytes, dtype=torch.int32, device=offsets.device)
    # Positions are distinct, so adding the single-bit values is an OR.
    out.scatter_add_(1, pos >> 3, (1 << (pos & 7)).to(torch.int32))
    return out.to(torch.uint8)


def _encode_offsets(offsets: Tensor, cfg: CodecConfig) -> Tensor:
    """Elias-Fano ``idx`` bytes [n, idx_bytes] of strictly increasing offsets [n, k]."""
    low = offsets & ((1 << cfg.low_bits) - 1)
    return torch.cat([_pack_fields(low, cfg.low_bits), _pack_high(offsets, cfg)], dim=1)


def _padding_mask(total_bits: int, nbytes: int) -> int:
    """Mask of the unused high bits of the last byte of a ``total_bits``-bit stream (0 when byte-aligned)."""
    used = total_bits - 8 * (nbytes - 1)
    return (0xFF << used) & 0xFF if nbytes else 0


# ----------------------------------------------------------------------------- top-k selection
#
# The exact hierarchical per-chunk top-k lives in protocol.topk; this part lays a tensor out
# in chunks (padding the last one) and runs the per-tensor work in parallel.


def map_tensors(fn: Callable[[str], R], tensors: Mapping[str, Tensor]) -> dict[str, R]:
    """``{name: fn(name)}``, in parallel when every tensor is on the CPU (a GPU gains nothing from threads).

    Public so the miner's error feedback (``miner.error_feedback``) parallelises exactly like :func:`encode`.
    """
    names = list(tensors)
    if any(tensors[n].device.type != "cpu" for n in names):
        return {n: fn(n) for n in names}
    return dict(zip(names, map_threads(fn, names), strict=True))


def _select(flat: Tensor, cfg: CodecConfig) -> tuple[Tensor, Tensor]:
    """Sorted kept offsets int64 [n_chunks, k] and their float32 values (0 at padding positions)."""
    chunk, k = cfg.chunk, cfg.topk
    numel = flat.numel()
    n_full, rem = divmod(numel, chunk)
    offsets, values = [], []
    if n_full:
        off, val = select_rows(flat[: n_full * chunk].view(n_full, chunk), k)
        offsets.append(off)
        values.append(val)
    if rem:
        tail = torch.zeros(1, chunk, dtype=torch.float32, device=flat.device)
        tail[0, :rem] = flat[n_full * chunk :]
        # Padding gets negative keys, so it is only kept when the chunk has fewer than k real
        # positions, and then canonically the lowest padding offsets (keys fall with position).
        keys = torch.bitwise_and(tail.view(torch.int32), 0x7FFFFFFF)
        keys[0, rem:] = -torch.arange(1, chunk - rem + 1, dtype=torch.int32, device=flat.device)
        off = topk_sorted(keys, k)
        offsets.append(off)
        values.append(tail.gather(1, off))
    if len(offsets) == 1:
        return offsets[0], values[0]
    return torch.cat(offsets), torch.cat(values)


# ----------------------------------------------------------------------------- quantization


def _quantize(values: Tensor, real: Tensor | None) -> tuple[Tensor, Tensor]:
    """2-bit codes int64 [n, k] and the float32 LUT [4]; ``real`` masks out kept padding positions."""
    mag = values.abs()
    ref = mag if real is None else mag[real]
    median = ref.median() if ref.numel() else mag.new_zeros(())
    # Bins: 0 = +small, 1 = +big, 2 = -small, 3 = -big ("big": above the median magnitude).
    codes = (values < 0).to(torch.int64) * 2 + (mag > median).to(torch.int64)
    # Bin means are the least-squares reconstruction for this partition; an empty bin stays 0.
    bins = codes if real is None else torch.where(real, codes, 4)  # bin 4 collects padding
    flat_bins, v64 = bins.reshape(-1), values.reshape(-1).to(torch.float64)
    if values.device.type == "cpu":  # CPU bincount is sequential, hence deterministic
        sums = torch.bincount(flat_bins, weights=v64, minlength=5)[:4]
        counts = torch.bincount(flat_bins, minlength=5)[:4]
    else:  # CUDA bincount adds floats atomically (run-to-run jitter); reduce bin by bin instead
        member = flat_bins.unsqueeze(0) == torch.arange(4, device=values.device).unsqueeze(1)
        sums = torch.where(member, v64, 0.0).sum(1)
        counts = member.sum(1)
    lut = torch.where(counts > 0, sums / counts.clamp(min=1), 0.0)
    return codes, lut.to(torch.float32)


# ----------------------------------------------------------------------------- encode / decode


def encode_tensor_with_decoded(x: Tensor, cfg: CodecConfig) -> tuple[EncodedTensor, SparseTensor | None]:
    """Encode one tensor; also return what the receiver will decode (None for an empty tensor).

    The sender's error feedback (``miner.error_feedback``) subtracts exactly that decoded part,
    without decoding its own upload again.
    """
    shape = tuple(x.shape)
    flat = x.detach().reshape(-1)
    numel, dev = flat.numel(), flat.device
    if numel == 0:
        idx = torch.zeros(0, cfg.idx_bytes, dtype=torch.uint8, device=dev)
        codes = torch.zeros(0, cfg.code_bytes, dtype=torch.uint8, device=dev)
        return EncodedTensor(shape, idx, codes, torch.zeros(4, device=dev)), None
    offsets, values = _select(flat, cfg)
    if not bool(torch.isfinite(values).all()):
        # Non-finite values always win top-k (NaN sorts first), so checking kept values suffices.
        raise ValueError("cannot encode a tensor with NaN or infinite values")
    n = offsets.shape[0]
    positions = offsets + torch.arange(n, device=dev).unsqueeze(1) * cfg.chunk
    rem = numel % cfg.chunk
    real = positions < numel if rem and rem < cfg.topk else None  # None: no padding was kept
    codes, lut = _quantize(values, real)
    enc = EncodedTensor(shape, _encode_offsets(offsets, cfg), _pack_fields(codes, 2), lut)
    decoded = lut[codes] if real is None else torch.where(real, lut[codes], 0.0)
    return enc, SparseTensor(shape, positions, decoded)


def encode_tensor(x: Tensor, cfg: CodecConfig) -> EncodedTensor:
    """Compress one tensor (any float dtype, any shape). Raises ValueError on NaN/Inf."""
    return encode_tensor_with_decoded(x, cfg)[0]


def encode(state: Mapping[str, Tensor], cfg: CodecConfig) -> dict[str, EncodedTensor]:
    """Encode every tensor; CPU tensors are encoded in parallel (see :func:`protocol.topk.map_threads`)."""
    return map_tensors(lambda n: encode_tensor(state[n], cfg), state)


def _decode_offsets(idx: Tensor, cfg: CodecConfig) -> Tensor:
    """Kept offsets int64 [n, k] from ``idx`` bytes; the high bitmap must hold exactly k ones per row."""
    n, k = idx.shape[0], cfg.topk
    low = _unpack_fields(idx[:, : cfg.low_bytes], cfg.low_bits, k)
    high = idx[:, cfg.low_bytes :]
    bits = (high.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=idx.device)) & 1
    cols = bits.view(n, 8 * high.shape[1]).nonzero()[:, 1]
    if cols.numel() != n * k:
        raise ValueError("index bitmap does not hold exactly topk ones per chunk")
    # nonzero() is row-major, so each row's set bits come out in increasing order.
    high_parts = cols.view(n, k) - torch.arange(k, device=idx.device)
    return (high_parts << cfg.low_bits) | low


def decode_sparse(enc: EncodedTensor, cfg: CodecConfig) -> SparseTensor:
    """Kept positions and dequantized values, without building the dense tensor."""
    n, k = enc.idx.shape[0], cfg.topk
    offsets = _decode_offsets(enc.idx, cfg)
    indices = offsets + torch.arange(n, device=offsets.device).unsqueeze(1) * cfg.chunk
    codes = _unpack_fields(enc.codes, 2, k)
    values = enc.lut.to(torch.float32)[codes]
    numel = enc.numel
    if n and numel % cfg.chunk and numel % cfg.chunk < k:
        values[-1] = torch.where(indices[-1] < numel, values[-1], 0.0)
    return SparseTensor(enc.shape, indices, values)


def sparse_to_dense(
    sp: SparseTensor,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    out: Tensor | None = None,
) -> Tensor:
    """Dense tensor of ``sp.shape``; positions beyond the tensor (kept padding) are dropped.

    ``out`` (contiguous, right shape and dtype) is overwritten instead of allocating; reusing
    one buffer avoids first-touch page faults, which dominate decoding on small CPU hosts.
    """
    numel = sp.numel
    if out is None:
        out = torch.zeros(sp.shape, dtype=dtype, device=device if device is not None else sp.indices.device)
    else:
        if tuple(out.shape) != sp.shape or not out.is_contiguous():
            raise ValueError("out must be contiguous with the sparse tensor's shape")
        out.zero_()
    flat = out.view(-1)
    idx = sp.indices.reshape(-1).to(flat.device)
    val = sp.values.reshape(-1).to(device=flat.device, dtype=flat.dtype)
    if idx.numel() and int(sp.indices[-1].max()) >= numel:  # only the last chunk can hold padding
        keep = idx < numel
        idx, val = idx[keep], val[keep]
    flat.index_copy_(0, idx, val)
    return out


def decode_tensor(
    enc: EncodedTensor,
    cfg: CodecConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    out: Tensor | None = None,
) -> Tensor:
    """Dense decoded tensor in ``enc.shape`` (on ``device``, default the encoding's device)."""
    if out is not None:
        device = out.device
    return sparse_to_dense(decode_sparse(enc.to(device), cfg), dtype=dtype, out=out)


def decode(encoded: Mapping[str, EncodedTensor], cfg: CodecConfig) -> dict[str, Tensor]:
    return {name: decode_tensor(enc, cfg) for name, enc in encoded.items()}


# ----------------------------------------------------------------------------- layout and validation


def encoded_layout(
    shapes: Mapping[str, tuple[int, ...]], cfg: CodecConfig
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Exact payload tensors: ``{param}.idx`` / ``.codes`` (uint8) and ``.lut`` (float32 [4]) per parameter."""
    layout: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        n = cfg.n_chunks(math.prod(shape))
        layout[f"{name}.idx"] = (torch.uint8, (n, cfg.idx_bytes))
        layout[f"{name}.codes"] = (torch.uint8, (n, cfg.code_bytes))
        layout[f"{name}.lut"] = (torch.float32, (4,))
    return layout


def _check_layout(
    tensors: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], cfg: CodecConfig
) -> tuple[str, str] | None:
    layout = encoded_layout(shapes, cfg)
    extra = sorted(set(tensors) - set(layout))
    if extra:
        return "unexpected_tensor", extra[0]
    missing = sorted(set(layout) - set(tensors))
    if missing:
        return "missing_tensor", missing[0]
    for name, (dtype, shape) in layout.items():
        t = tensors[name]
        if t.dtype != dtype:
            return "bad_dtype", f"{name}: {t.dtype} != {dtype}"
        if tuple(t.shape) != shape:
            return "bad_shape", f"{name}: {tuple(t.shape)} != {shape}"
    return None


def _padding_set(stream: Tensor, total_bits: int) -> bool:
    mask = _padding_mask(total_bits, stream.shape[1])
    return bool(mask) and stream.shape[0] > 0 and bool((stream[:, -1] & mask).any())


def _check_param(idx: Tensor, codes: Tensor, lut: Tensor, numel: int, cfg: CodecConfig) -> str | None:
    """Reason code for one parameter's tensors (layout already checked), or None."""
    k = cfg.topk
    if not bool(torch.isfinite(lut).all()):
        return "lut_not_finite"
    if bool((lut.abs() > LUT_BOUND).any()):
        return "lut_out_of_range"
    n = idx.shape[0]
    if n == 0:
        return None
    high = idx[:, cfg.low_bytes :]
    ones = _POPCOUNT.to(high.device)[high.to(torch.int64)].sum(1, dtype=torch.int64)
    if bool((ones != k).any()) or _padding_set(high, cfg.high_bits):
        return "index_bitmap_invalid"
    if _padding_set(idx[:, : cfg.low_bytes], k * cfg.low_bits) or _padding_set(codes, 2 * k):
        return "padding_bits_set"
    offsets = _decode_offsets(idx, cfg)
    if k > 1 and bool((offsets[:, 1:] <= offsets[:, :-1]).any()):
        return "index_not_increasing"
    if bool((offsets[:, -1] >= cfg.chunk).any()):
        return "index_out_of_range"
    # Only a last chunk with fewer than k real positions may keep padding, and then canonically:
    # every real position plus the lowest padding offsets, i.e. offsets 0..k-1.
    real = numel - (n - 1) * cfg.chunk
    if real < k:
        if not torch.equal(offsets[-1], torch.arange(k, device=offsets.device)):
            return "index_out_of_range"
    elif int(offsets[-1, -1]) >= real:
        return "index_out_of_range"
    return None


def find_encoding_error(
    tensors: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], cfg: CodecConfig
) -> tuple[str, str] | None:
    """``(reason, detail)`` for the first problem in a payload's tensors, or None if valid.

    Checks the exact layout, then per parameter: finite and bounded LUT, a high bitmap with
    exactly ``topk`` ones per chunk, zero padding bits, strictly increasing in-range offsets.
    """
    problem = _check_layout(tensors, shapes, cfg)
    if problem is not None:
        return problem
    for name, shape in shapes.items():
        idx, codes, lut = tensors[f"{name}.idx"], tensors[f"{name}.codes"], tensors[f"{name}.lut"]
        reason = _check_param(idx, codes, lut, math.prod(shape), cfg)
        if reason is not None:
            return reason, name
    return None


def validate_encoded(
    enc_tensors: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], cfg: CodecConfig
) -> str | None:
    """Reason code (one of :data:`CODEC_REASONS`) if the payload tensors are invalid, else None."""
    problem = find_encoding_error(enc_tensors, shapes, cfg)
    return None if problem is None else problem[0]
