"""Signed wire format of a delta upload, and its strict parser. Every upload is hostile input.

A delta file is::

    b"GDLT" | u8 format_version (= 1) | 64-byte sr25519 signature | safetensors bytes

The safetensors ``__metadata__`` (string -> string) holds ``format_version``, ``spec_version``,
``window``, ``hotkey`` (SS58), ``base_model_hash`` (64 lowercase hex chars), ``chunk`` and
``topk``. The signature is the hotkey's over ``b"gauntlet-delta-v1" + blake2b-256(safetensors
bytes)``, so it binds hotkey, window, spec and base model: an upload replayed under another
window or hotkey, or edited after signing, is rejected.

:func:`parse_delta` checks, cheapest first and before any allocation sized by the upload:
total size, magic and version, the safetensors header length, the header JSON (exact tensor
names, dtypes, shapes and contiguous offsets from :func:`protocol.codec.encoded_layout`), the
metadata, the hotkey, the signature, the caller's expectations, and last the codec checks of
:func:`protocol.codec.find_encoding_error`. Nothing is unpickled; tensors are copied out of
validated byte ranges. Every rejection is a :class:`WireError` whose ``reason`` is in
:data:`REASONS`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from bittensor.sp_core import Keypair

from protocol.codec import CODEC_REASONS, CodecConfig, EncodedTensor, encoded_layout, find_encoding_error

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "REASONS",
    "DeltaMeta",
    "ParsedDelta",
    "Signer",
    "WireError",
    "pack_delta",
    "parse_delta",
    "payload_hash",
    "signing_message",
]

MAGIC = b"GDLT"
FORMAT_VERSION = 1
SIGNATURE_DOMAIN = b"gauntlet-delta-v1"
SIGNATURE_BYTES = 64
PREFIX_BYTES = len(MAGIC) + 1 + SIGNATURE_BYTES
MAX_HEADER_BYTES = 1 << 20  # our headers are a few hundred bytes per parameter

# Every reason a delta can be rejected for. Wire-level ones first, then the codec's own.
WIRE_REASONS = frozenset(
    {
        "too_large",  # more than max_bytes
        "truncated",  # shorter than the fixed prefix plus the header length field
        "bad_magic",
        "bad_version",
        "bad_header",  # header length out of bounds, not UTF-8 JSON, or malformed entries
        "bad_offsets",  # data_offsets not contiguous, overlapping, out of the buffer or wrong size
        "bad_metadata",  # metadata missing, extra, or malformed
        "codec_mismatch",  # metadata chunk/topk differ from the caller's codec config
        "bad_hotkey",  # not a canonical SS58 address
        "bad_signature",
        "window_mismatch",
        "hotkey_mismatch",
        "base_model_mismatch",
        "spec_version_mismatch",
    }
)
REASONS = WIRE_REASONS | CODEC_REASONS

_DTYPES = {torch.uint8: "U8", torch.float32: "F32"}
_META_KEYS = frozenset(
    {"format_version", "spec_version", "window", "hotkey", "base_model_hash", "chunk", "topk"}
)
_UINT_RE = re.compile(r"0|[1-9][0-9]{0,17}")  # canonical decimal, < 10**18
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_EXPECTABLE = {
    "window": "window_mismatch",
    "hotkey": "hotkey_mismatch",
    "base_model_hash": "base_model_mismatch",
    "spec_version": "spec_version_mismatch",
}


class WireError(Exception):
    """A rejected upload: ``reason`` is a stable code from :data:`REASONS`, ``detail`` is for humans."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown wire rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Signer(Protocol):
    """What pack_delta needs of a keypair (``bittensor.sp_core.Keypair`` fits)."""

    ss58_address: str

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class DeltaMeta:
    window: int
    hotkey: str
    base_model_hash: str
    spec_version: int


@dataclass
class ParsedDelta:
    meta: DeltaMeta
    encoded: dict[str, EncodedTensor]
    payload_hash: str  # hex blake2b-256 of the safetensors bytes (what was signed)
    size: int  # bytes of the whole file
    signature: bytes


def payload_hash(body: bytes | memoryview) -> bytes:
    return hashlib.blake2b(body, digest_size=32).digest()


def signing_message(body: bytes | memoryview) -> bytes:
    """The bytes the hotkey signs for a safetensors body."""
    return SIGNATURE_DOMAIN + payload_hash(body)


# ----------------------------------------------------------------------------- packing


def _serialize(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Canonical safetensors bytes: float32 tensors first, then by name; sorted JSON keys.

    Written here rather than with ``safetensors.torch.save`` because that orders the header
    differently from run to run; identical deltas must give identical (hashable) bytes.
    The result is plain safetensors, loadable by the safetensors library.
    """
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, cursor = [], 0
    for name in order:
        t = tensors[name]
        raw = t.numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [cursor, cursor + len(raw)],
        }
        chunks.append(raw)
        cursor += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def _check_meta(meta: DeltaMeta) -> None:
    if not (0 <= meta.window < 10**18 and 1 <= meta.spec_version < 10**18):
        raise ValueError("window must be >= 0 and spec_version >= 1 (both < 1e18)")
    if not _HASH_RE.fullmatch(meta.base_model_hash):
        raise ValueError("base_model_hash must be 64 lowercase hex characters")


def pack_delta(
    encoded: Mapping[str, EncodedTensor], meta: DeltaMeta, cfg: CodecConfig, keypair: Signer
) -> bytes:
    """Serialise and sign an encoded delta. Raises ValueError if it would not pass :func:`parse_delta`."""
    _check_meta(meta)
    if keypair.ss58_address != meta.hotkey:
        raise ValueError("meta.hotkey is not the signing keypair's address")
    tensors = {}
    for name, enc in encoded.items():
        tensors[f"{name}.idx"] = enc.idx.detach().cpu().contiguous()
        tensors[f"{name}.codes"] = enc.codes.detach().cpu().contiguous()
        tensors[f"{name}.lut"] = enc.lut.detach().cpu().to(torch.float32).contiguous()
    problem = find_encoding_error(tensors, {name: enc.shape for name, enc in encoded.items()}, cfg)
    if problem is not None:
        raise ValueError(f"refusing to pack an invalid encoding: {problem[0]} ({problem[1]})")
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "spec_version": str(meta.spec_version),
        "window": str(meta.window),
        "hotkey": meta.hotkey,
        "base_model_hash": meta.base_model_hash,
        "chunk": str(cfg.chunk),
        "topk": str(cfg.topk),
    }
    body = _serialize(tensors, metadata)
    signature = bytes(keypair.sign(signing_message(body)))
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError("keypair did not produce a 64-byte signature")
    return MAGIC + bytes([FORMAT_VERSION]) + signature + body


# ----------------------------------------------------------------------------- parsing


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _reject_float(text: str) -> Any:
    raise ValueError("floats do not occur in a delta header")


def _read_header(body: memoryview) -> tuple[dict[str, Any], int]:
    """Parse the safetensors header; returns it and the offset of the data buffer in ``body``."""
    if len(body) < 8:
        raise WireError("truncated", "no safetensors header length")
    header_len = int.from_bytes(body[:8], "little")
    if not 2 <= header_len <= min(MAX_HEADER_BYTES, len(body) - 8):
        raise WireError("bad_header", f"header length {header_len} out of bounds")
    try:
        text = bytes(body[8 : 8 + header_len]).decode("utf-8")
        header = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, parse_float=_reject_float
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError("bad_header", f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("bad_header", "header is not a JSON object")
    return header, 8 + header_len


def _is_uint(value: Any) -> bool:
    return type(value) is int and value >= 0


def _parse_meta(raw: Any, cfg: CodecConfig) -> DeltaMeta:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise WireError("bad_metadata", "__metadata__ missing or not a string map")
    if set(raw) != _META_KEYS:
        raise WireError("bad_metadata", f"metadata keys {sorted(raw)} != {sorted(_META_KEYS)}")
    for key in ("format_version", "spec_version", "window", "chunk", "topk"):
        if not _UINT_RE.fullmatch(raw[key]):
            raise WireError("bad_metadata", f"{key} is not a canonical unsigned integer")
    if raw["format_version"] != str(FORMAT_VERSION):
        raise WireError("bad_metadata", f"format_version {raw['format_version']} != {FORMAT_VERSION}")
    if not _HASH_RE.fullmatch(raw["base_model_hash"]):
        raise WireError("bad_metadata", "base_model_hash is not 64 lowercase hex characters")
    if (int(raw["chunk"]), int(raw["topk"])) != (cfg.chunk, cfg.topk):
        raise WireError(
            "codec_mismatch", f"chunk/topk {raw['chunk']}/{raw['topk']} != {cfg.chunk}/{cfg.topk}"
        )
    return DeltaMeta(
        window=int(raw["window"]),
        hotkey=raw["hotkey"],
        base_model_hash=raw["base_model_hash"],
        spec_version=int(raw["spec_version"]),
    )


def _check_entries(
    header: dict[str, Any], layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], data_len: int
) -> dict[str, tuple[int, int]]:
    """Validate every tensor entry against the layout; returns name -> (begin, end) in the data buffer."""
    extra = sorted(set(header) - set(layout))
    if extra:
        raise WireError("unexpected_tensor", extra[0][:200])
    missing = sorted(set(layout) - set(header))
    if missing:
        raise WireError("missing_tensor", missing[0])
    spans = {}
    for name, (dtype, shape) in layout.items():
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise WireError("bad_header", f"{name}: entry must have exactly dtype, shape, data_offsets")
        if entry["dtype"] != _DTYPES[dtype]:
            raise WireError("bad_dtype", f"{name}: {str(entry['dtype'])[:20]} != {_DTYPES[dtype]}")
        got = entry["shape"]
        if not isinstance(got, list) or not all(_is_uint(d) for d in got) or tuple(got) != shape:
            raise WireError("bad_shape", f"{name}: {str(got)[:60]} != {list(shape)}")
        offsets = entry["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
            raise WireError("bad_offsets", f"{name}: data_offsets must be two unsigned integers")
        begin, end = offsets
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise WireError("bad_offsets", f"{name}: {end - begin} bytes != {nbytes}")
        spans[name] = (begin, end)
    # The tensors must tile the data buffer exactly: no gaps, no overlaps, nothing after.
    cursor = 0
    for name, (begin, end) in sorted(spans.items(), key=lambda item: (item[1], item[0])):
        if begin != cursor:
            raise WireError("bad_offsets", f"{name}: starts at {begin}, expected {cursor}")
        cursor = end
    if cursor != data_len:
        raise WireError("bad_offsets", f"tensors cover {cursor} of {data_len} data bytes")
    return spans


def _check_hotkey(hotkey: str) -> Keypair:
    if not (hotkey.isascii() and 40 <= len(hotkey) <= 60):
        raise WireError("bad_hotkey", "hotkey is not an SS58 address")
    try:
        key = Keypair(ss58_address=hotkey)
    except Exception as exc:  # the SDK raises several types for malformed addresses
        raise WireError("bad_hotkey", str(exc)[:200]) from None
    if key.ss58_address != hotkey:
        raise WireError("bad_hotkey", "hotkey is not in the canonical SS58 format (42)")
    return key


def _check_signature(key: Keypair, digest: bytes, signature: bytes) -> None:
    try:
        ok = key.verify(SIGNATURE_DOMAIN + digest, signature)
    except Exception:  # a malformed signature may raise instead of returning False
        ok = False
    if not ok:
        raise WireError("bad_signature", "signature does not verify for the hotkey")


def _check_expected(meta: DeltaMeta, expected: Mapping[str, Any]) -> None:
    for key, reason in _EXPECTABLE.items():
        if key in expected and getattr(meta, key) != expected[key]:
            raise WireError(reason, f"{key} {getattr(meta, key)!r} != expected {expected[key]!r}")


def _tensor(data: memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor owning a copy of ``data`` (safetensors is little-endian, like every supported host)."""
    if len(data) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def parse_delta(
    data: bytes | bytearray | memoryview,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]],
    cfg: CodecConfig,
    max_bytes: int,
    expected: Mapping[str, Any] | None = None,
) -> ParsedDelta:
    """Validate and decode a delta file; raises :class:`WireError` on any problem.

    ``expected_shapes`` are the model's parameter shapes; ``expected`` may require
    ``window``, ``hotkey``, ``base_model_hash`` and/or ``spec_version`` to equal given values.
    """
    if sys.byteorder != "little":  # pragma: no cover - no supported host is big-endian
        raise RuntimeError("the delta wire format needs a little-endian host")
    unknown = set(expected or ()) - set(_EXPECTABLE)
    if unknown:  # a caller's bug, not the upload's: never reported as a WireError
        raise ValueError(f"unknown expectation keys: {sorted(unknown)}")
    view = memoryview(data).cast("B")
    size = len(view)
    if size > max_bytes:
        raise WireError("too_large", f"{size} bytes > {max_bytes}")
    if bytes(view[: len(MAGIC)]) != MAGIC[: min(size, len(MAGIC))] or size == 0:
        raise WireError("bad_magic", "not a Gauntlet delta file")
    if size < len(MAGIC) + 1:
        raise WireError("truncated", "no format version")
    if view[len(MAGIC)] != FORMAT_VERSION:
        raise WireError("bad_version", f"format version {view[len(MAGIC)]} != {FORMAT_VERSION}")
    if size < PREFIX_BYTES:
        raise WireError("truncated", "no signature")
    signature = bytes(view[len(MAGIC) + 1 : PREFIX_BYTES])
    body = view[PREFIX_BYTES:]

    header, data_start = _read_header(body)
    meta = _parse_meta(header.pop("__metadata__", None), cfg)
    layout = encoded_layout(expected_shapes, cfg)
    spans = _check_entries(header, layout, len(body) - data_start)

    # Cheap cryptographic rejection before any tensor is built or decoded.
    key = _check_hotkey(meta.hotkey)
    digest = payload_hash(body)
    _check_signature(key, digest, signature)
    if expected:
        _check_expected(meta, expected)

    buffer = body[data_start:]
    tensors = {name: _tensor(buffer[begin:end], *layout[name]) for name, (begin, end) in spans.items()}
    problem = find_encoding_error(tensors, expected_shapes, cfg)
    if problem is not None:
        raise WireError(*problem)
    encoded = {
        name: EncodedTensor(
            tuple(shape), tensors[f"{name}.idx"], tensors[f"{name}.codes"], tensors[f"{name}.lut"]
        )
        for name, shape in expected_shapes.items()
    }
    return ParsedDelta(
        meta=meta,
        encoded=encoded,
        payload_hash=digest.hex(),
        size=size,
        signature=signature,
    )
