"""Global-model sync: the signed outer step ("aggregate") and signed checkpoints.

Every node holds the same global weights theta_W at the start of window W. After scoring
window W the validator publishes the outer step as a sparse update U_W (already scaled
by the outer learning rate) and the hash of the result, so

    theta_{W+1} = theta_W - U_W

Miners apply U_W with one elementwise fp32 subtraction, which IEEE arithmetic makes
bit-exact on every device; recomputing the robust aggregate locally would not be (sums
reorder on GPUs), and a single differing bit breaks the model-hash proof of sync.
A miner that fell behind loads the newest checkpoint and replays the aggregates after it.

Both files use the same envelope as deltas: ``MAGIC | u8 version | 64-byte sr25519
signature | safetensors``, signed by the publishing validator's hotkey over a domain tag
and the payload hash, and are checked for size, signature, names, dtypes and shapes
before use. No pickle anywhere.

Aggregates are format version 3 (domain ``gauntlet-aggregate-v3``): per touched tensor the
compact canonical code of ``protocol.compact`` (the count, positions as a bitmap or
Elias-Fano, whichever is smaller, and 7-bit values with one bf16 scale per 64), about 1.4
bytes per touched coordinate at 20 peers. Version 2 (the same positions, bf16 values: 2.5)
and version 1 (int64 indices and fp32 values: 12) are not read: no deployed subnet holds
either, keeping version 2 would keep a second value code in every node for nothing, and the
domain tag changes with the version, so a signature over one can never pass for another.
Checkpoints stay version 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from protocol.compact import CompactError, CompactTensor, CompactUpdate, round_update
from protocol.topk import map_threads

AGGREGATE_MAGIC = b"GAGG"
CHECKPOINT_MAGIC = b"GCKP"
AGGREGATE_VERSION = 3  # versions 1 (int64 + fp32) and 2 (bf16 values) were never deployed
CHECKPOINT_VERSION = 1
_SIG_LEN = 64
_PREFIX = 4 + 1 + _SIG_LEN

SparseUpdate = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Per parameter: (flat int64 indices, float32 values); the step is theta.flat[idx] -= values."""

__all__ = [
    "AGGREGATE_VERSION", "CHECKPOINT_VERSION", "AggregateMeta", "CheckpointMeta", "CompactUpdate", "SparseUpdate",
    "SyncError", "apply_update", "dense_to_update", "pack_aggregate", "pack_checkpoint", "parse_aggregate",
    "parse_checkpoint", "revert_update", "round_update", "undo_arena",
]


class SyncError(ValueError):
    """An aggregate or checkpoint is unusable; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AggregateMeta:
    window: int  # the window whose deltas were aggregated
    base_model_hash: str  # theta_W
    result_model_hash: str  # theta_{W+1}
    validator: str  # SS58 hotkey of the publisher
    spec_version: int
    peers: list[str] = field(default_factory=list)  # hotkeys aggregated, best first
    # True when no validator's proposal for ``window`` was on time (protocol.follow): theta is
    # unchanged and the next window's publisher is chosen afresh from the ranking.
    null: bool = False


@dataclass(frozen=True)
class CheckpointMeta:
    window: int  # the weights are theta_window (before that window's training)
    model_hash: str
    validator: str
    spec_version: int
    # Who publishes the aggregate of ``window`` unless it fails over (the signer of the last
    # applied aggregate; None after a null window): lets a node that starts here follow on.
    publisher: str | None = None
    genesis_window: int | None = None  # where the subnet's history starts (a later joiner knows it is late)


# ------------------------------------------------------------------ the update itself


def dense_to_update(dense: Mapping[str, torch.Tensor], lr: float = 1.0) -> SparseUpdate:
    """Sparse update from a dense aggregate: only the coordinates some peer touched."""
    update: SparseUpdate = {}
    for name, tensor in dense.items():
        flat = (tensor.detach().float().cpu().reshape(-1) * lr).contiguous()
        idx = torch.nonzero(flat, as_tuple=False).reshape(-1)
        update[name] = (idx.to(torch.int64), flat[idx].contiguous())
    return update


@torch.no_grad()
def apply_update(state: Mapping[str, torch.Tensor], update: Mapping[str, tuple[torch.Tensor, torch.Tensor]], *,
                 undo: dict[str, torch.Tensor] | None = None, arena: torch.Tensor | None = None) -> None:
    """theta -= U in place, exactly (one rounding per touched coordinate).

    ``undo``, if given, receives each tensor's old values at the touched positions, for
    :func:`revert_update`: a node keeps 4 bytes per touched coordinate, not a model copy.
    ``arena`` (flat fp32, at least ``update.touched`` long) holds them instead of fresh memory:
    a node that keeps one across windows does not page-fault 1.2 GB at 1B shapes each time.
    A :class:`CompactUpdate` is decoded one tensor at a time, tensors on parallel threads
    (elementwise, so the result cannot depend on the thread count).
    """

    def one(name: str) -> None:
        idx, values = update[name]
        flat = state[name].view(-1)
        idx = idx.to(flat.device)
        old = flat[idx]
        flat.index_put_((idx,), old - values.to(flat.device, flat.dtype))
        if undo is not None:
            undo[name] = old

    names = list(update)
    if isinstance(update, CompactUpdate) and all(state[n].device.type == "cpu" and state[n].dtype == torch.float32
                                                 and state[n].is_contiguous() for n in names):
        slots: dict[str, torch.Tensor | None] = dict.fromkeys(names)
        if undo is not None:
            if arena is None:
                arena = undo_arena(update.touched)
            elif arena.numel() < update.touched:
                raise ValueError(f"arena holds {arena.numel()} values, the update touches {update.touched}")
            offset = 0
            for name in names:
                n = update.tensors[name].n
                slots[name] = undo[name] = arena[offset : offset + n]
                offset += n

        def compact(name: str) -> None:
            update.tensors[name].subtract_from(state[name].view(-1), slots[name])

        # Largest first, so the last thread does not start the embedding alone.
        map_threads(compact, sorted(names, key=lambda n: -update.tensors[n].numel))
    else:
        for name in names:
            one(name)


def undo_arena(n: int) -> torch.Tensor:
    """Scratch for :func:`apply_update`'s undo values, its pages faulted in here, in one pass.

    Two apply threads first-touching fresh pages contend in the kernel: measured 5 s instead of
    1.5 s for a 1B aggregate on a 2-core VM, against 0.3 s for this fill.
    """
    return torch.empty(n, dtype=torch.float32).fill_(0.0)


@torch.no_grad()
def revert_update(state: Mapping[str, torch.Tensor], update: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                  undo: Mapping[str, torch.Tensor]) -> None:
    """Undo :func:`apply_update` exactly, from the old values it saved in ``undo``."""
    for name, old in undo.items():
        flat = state[name].view(-1)
        idx = update.tensors[name].indices() if isinstance(update, CompactUpdate) else update[name][0]  # no values
        flat.index_put_((idx.to(flat.device),), old)


# ------------------------------------------------------------------ envelope


def _digest(domain: bytes, *parts: bytes | memoryview) -> bytes:
    """What is signed: the domain tag and the blake2b-256 of the payload (given in parts, never joined)."""
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        h.update(part)
    return domain + h.digest()


def _seal(magic: bytes, version: int, domain: bytes, payload: bytes, keypair) -> bytes:
    signature = keypair.sign(_digest(domain, payload))
    return magic + struct.pack("<B", version) + bytes(signature) + payload


def _open(data: bytes, magic: bytes, version: int, max_bytes: int) -> tuple[memoryview, dict, int]:
    """Check size, magic, version and header; return the payload (no copy), header and header length.

    The signature is not checked yet.
    """
    if len(data) > max_bytes:
        raise SyncError("too_large", f"{len(data)} bytes > cap {max_bytes}")
    if len(data) < _PREFIX + 8 or data[:4] != magic:
        raise SyncError("bad_magic")
    if data[4] != version:
        raise SyncError("bad_version", f"format version {data[4]}")
    payload = memoryview(data)[_PREFIX:]
    (header_len,) = struct.unpack("<Q", payload[:8])
    if header_len > min(len(payload) - 8, 16 * 1024 * 1024):
        raise SyncError("bad_header", "header length out of bounds")
    try:
        header = json.loads(bytes(payload[8 : 8 + header_len]))
        if not isinstance(header, dict) or not isinstance(header.get("__metadata__") or {}, dict):
            raise TypeError("header or metadata is not a mapping")
    except (ValueError, TypeError) as exc:
        raise SyncError("bad_header", str(exc)) from None
    return payload, header, header_len


def _metadata(header: dict) -> dict[str, str]:
    return header.get("__metadata__") or {}


def _verify(data: bytes, domain: bytes, payload: memoryview, hotkey: str) -> None:
    from bittensor.sp_core import Keypair  # the SDK's sr25519 implementation

    try:
        ok = Keypair(ss58_address=hotkey).verify(_digest(domain, payload), data[5:_PREFIX])
    except Exception as exc:  # malformed address or signature bytes
        raise SyncError("bad_signature", str(exc)) from None
    if not ok:
        raise SyncError("bad_signature", f"not signed by {hotkey}")


def _load_tensors(payload: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(payload)
    except Exception as exc:  # safetensors raises its own error types on malformed input
        raise SyncError("bad_payload", str(exc)) from None


# The canonical container of an aggregate: safetensors with sorted JSON keys and no spaces, the
# data of the int64 tensors (counts) first, then of the bf16 ones (scales), then of the uint8
# ones (streams), each group in name order: every tensor starts aligned to its element size.
_ST_DTYPES = {torch.int64: "I64", torch.bfloat16: "BF16", torch.uint8: "U8"}
_ST_TORCH = {v: k for k, v in _ST_DTYPES.items()}
_DTYPE_RANK = {dtype: rank for rank, dtype in enumerate(_ST_DTYPES)}


def _data_order(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted(tensors, key=lambda n: (_DTYPE_RANK[tensors[n].dtype], n))


def _canonical_header(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The one safetensors header an aggregate may have (``_data_order``); read back byte for byte.

    safetensors' own writer orders metadata by hash (it differs between two saves), so
    aggregates are written here and their header is compared exactly when read.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for name in _data_order(tensors):
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    # Spaces up to a data start 8-byte aligned in the whole file (magic, version and signature
    # included), so the counts and scales can be used in place, without an aligning copy.
    text += b" " * (-(_PREFIX + 8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text


def _canonical_parts(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> list[bytes | memoryview]:
    """Header and data of the canonical container, as views (joined once, into the sealed file)."""
    data = [memoryview(tensors[n].contiguous().view(torch.uint8).numpy()) for n in _data_order(tensors)]
    return [_canonical_header(tensors, metadata), *data]


def _canonical_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    return b"".join(_canonical_parts(tensors, metadata))


def _view_tensors(data: bytes, header: dict, header_len: int) -> dict[str, torch.Tensor]:
    """The tensors of an aggregate as views into ``data`` (no copy), every entry checked against the buffer.

    Offsets are only bounds-checked here; that they are the canonical ones is checked with the
    whole header once the content is known good (``parse_aggregate``).
    """
    start, out = _PREFIX + 8 + header_len, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _ST_TORCH:
            raise SyncError("bad_dtype", name)
        dtype, shape, offsets = _ST_TORCH[entry["dtype"]], entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int and shape[0] >= 0):
            raise SyncError("bad_shape", name)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise SyncError("bad_payload", name)
        (n,), (a, b) = shape, offsets
        if a < 0 or b - a != n * dtype.itemsize or start + b > len(data):
            raise SyncError("bad_payload", f"{name}: data outside the file")
        if n == 0:
            out[name] = torch.empty(0, dtype=dtype)
            continue
        with warnings.catch_warnings():  # read-only bytes: the views are never written
            warnings.simplefilter("ignore", UserWarning)
            t = torch.frombuffer(data, dtype=dtype, count=n, offset=start + a)
        out[name] = t.clone() if t.data_ptr() % dtype.itemsize else t  # kernels get aligned elements
    return out


def _meta_fields(meta: dict[str, str], keys: tuple[str, ...]) -> dict[str, str]:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise SyncError("bad_metadata", f"missing {missing}")
    return meta


# ------------------------------------------------------------------ aggregates

_AGG_DOMAIN = b"gauntlet-aggregate-v3"
_PARTS = ("count", "pos", "scale", "code")  # stored as <param>.<part> (protocol.compact)


def pack_aggregate(update: Mapping[str, tuple[torch.Tensor, torch.Tensor]], meta: AggregateMeta, keypair, *,
                   shapes: Mapping[str, tuple[int, ...]] | None = None) -> bytes:
    """Sign and serialise a canonical update (:func:`round_update`, or a :class:`CompactUpdate`).

    ``shapes`` is needed unless the update is empty or already compact.

    Raises ValueError for values that the 7-bit code does not carry exactly, zero or non-finite
    values, or positions out of order or range: packing never rounds behind the caller's back,
    so the result hash the caller computed is the one every node reproduces.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(update):
        if isinstance(update, CompactUpdate):  # already canonical: validated when it was encoded
            enc = update.tensors[name]
            if shapes is not None and enc.numel != math.prod(shapes[name]):
                raise ValueError(f"{name}: encoded for {enc.numel} elements, the model has {shapes[name]}")
        else:
            idx, values = update[name]
            if idx.numel() == 0:
                continue  # an untouched tensor is left out, never written empty
            if shapes is None or name not in shapes:
                raise ValueError(f"no shape for {name!r}: pass the model's shapes")
            try:
                enc = CompactTensor.encode(idx, values, math.prod(shapes[name]))
            except CompactError as exc:
                raise ValueError(f"{name}: {exc.reason}") from None
        tensors.update({f"{name}.{part}": t for part, t in enc.parts().items()})
    fields = {k: json.dumps(v) for k, v in asdict(meta).items()}
    parts = _canonical_parts(tensors, fields)
    signature = bytes(keypair.sign(_digest(_AGG_DOMAIN, *parts)))
    return b"".join([AGGREGATE_MAGIC, struct.pack("<B", AGGREGATE_VERSION), signature, *parts])


def _meta_types_ok(meta: AggregateMeta) -> bool:
    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return (is_int(meta.window) and is_int(meta.spec_version) and isinstance(meta.null, bool)
            and all(isinstance(v, str) for v in (meta.base_model_hash, meta.result_model_hash, meta.validator))
            and isinstance(meta.peers, list) and all(isinstance(p, str) for p in meta.peers))


def parse_aggregate(
    data: bytes, *, shapes: Mapping[str, tuple[int, ...]], max_bytes: int, publisher: str | None = None
) -> tuple[AggregateMeta, CompactUpdate]:
    """Verify and decode an aggregate; ``publisher``, if given, pins the hotkey that must have signed it.

    Everything is checked before anything is returned (``protocol.compact.CompactTensor.parse``:
    dtypes, counts, lengths, zero padding, positions strictly increasing and in range, scales
    finite and in range, every block's scale the canonical one); the update stays compact and
    decodes one tensor at a time on access.
    """
    if len(data) > 4 and data[:4] == AGGREGATE_MAGIC and data[4] == 2 and len(data) <= max_bytes:
        raise SyncError("bad_version", "format version 2 (bf16 values) is no longer read: this build reads "
                        f"version {AGGREGATE_VERSION} (7-bit values)")
    payload, header, header_len = _open(data, AGGREGATE_MAGIC, AGGREGATE_VERSION, max_bytes)
    raw = _meta_fields(_metadata(header), ("window", "base_model_hash", "result_model_hash", "validator", "spec_version", "peers",
                             "null"))
    try:
        meta = AggregateMeta(**{k: json.loads(raw[k]) for k in AggregateMeta.__dataclass_fields__})
    except (ValueError, TypeError) as exc:
        raise SyncError("bad_metadata", str(exc)) from None
    if not _meta_types_ok(meta):
        raise SyncError("bad_metadata", "a field has the wrong type")
    if publisher is not None and meta.validator != publisher:
        raise SyncError("wrong_publisher", f"{meta.validator} is not {publisher}")
    _verify(data, _AGG_DOMAIN, payload, meta.validator)
    tensors = _view_tensors(data, header, header_len)
    parts: dict[str, list[torch.Tensor]] = {}
    for name in shapes:
        got = [tensors.pop(f"{name}.{part}", None) for part in _PARTS]
        if all(t is None for t in got):
            continue  # nothing touched this parameter
        if any(t is None for t in got):
            raise SyncError("bad_tensor", name)
        parts[name] = got  # type: ignore[assignment]
    if tensors:
        raise SyncError("unexpected_tensor", ", ".join(sorted(tensors)[:3]))

    def check(name: str) -> CompactTensor | str:
        try:
            return CompactTensor.parse(math.prod(shapes[name]), *parts[name])
        except CompactError as exc:
            return exc.reason

    names = sorted(parts)
    found: dict[str, CompactTensor] = {}
    for name, got in zip(names, map_threads(check, names), strict=True):
        if isinstance(got, str):
            raise SyncError(got, name)
        found[name] = got
    # One byte string per (meta, update): the metadata as pack_aggregate writes it, the header canonical.
    fields = {k: json.dumps(v) for k, v in asdict(meta).items()}
    stored = {f"{n}.{part}": t for n, ts in parts.items() for part, t in zip(_PARTS, ts, strict=True)}
    canonical = _canonical_header(stored, fields)
    size = len(canonical) + sum(t.numel() * t.element_size() for t in stored.values())
    if raw != fields or len(payload) != size or bytes(payload[: len(canonical)]) != canonical:
        raise SyncError("not_canonical", "header or metadata differ from the canonical encoding")
    return meta, CompactUpdate(found)


# ------------------------------------------------------------------ checkpoints

_CKPT_DOMAIN = b"gauntlet-checkpoint-v1"


def pack_checkpoint(state: Mapping[str, torch.Tensor], meta: CheckpointMeta, keypair) -> bytes:
    tensors = {name: t.detach().to(torch.float32).contiguous().cpu() for name, t in state.items()}
    fields = {k: json.dumps(v) for k, v in asdict(meta).items()}
    return _seal(CHECKPOINT_MAGIC, CHECKPOINT_VERSION, _CKPT_DOMAIN, st_save(tensors, metadata=fields), keypair)


def parse_checkpoint(
    data: bytes, *, shapes: Mapping[str, tuple[int, ...]], max_bytes: int, publisher: str | None = None
) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """Verify and decode a checkpoint; the caller re-hashes the weights against ``meta.model_hash``."""
    payload, header, _ = _open(data, CHECKPOINT_MAGIC, CHECKPOINT_VERSION, max_bytes)
    raw = _meta_fields(_metadata(header), ("window", "model_hash", "validator", "spec_version", "publisher",
                                   "genesis_window"))
    try:
        meta = CheckpointMeta(**{k: json.loads(raw[k]) for k in CheckpointMeta.__dataclass_fields__})
    except (ValueError, TypeError) as exc:
        raise SyncError("bad_metadata", str(exc)) from None
    if publisher is not None and meta.validator != publisher:
        raise SyncError("wrong_publisher", f"{meta.validator} is not {publisher}")
    _verify(data, _CKPT_DOMAIN, payload, meta.validator)
    state = _load_tensors(bytes(payload))
    if set(state) != set(shapes):
        raise SyncError("bad_tensor", "parameter names differ from the model spec")
    for name, shape in shapes.items():
        if state[name].dtype != torch.float32 or tuple(state[name].shape) != tuple(shape):
            raise SyncError("bad_shape", name)
        if not torch.isfinite(state[name]).all():
            raise SyncError("not_finite", name)
    return meta, state
