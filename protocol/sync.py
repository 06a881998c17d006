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
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

AGGREGATE_MAGIC = b"GAGG"
CHECKPOINT_MAGIC = b"GCKP"
FORMAT_VERSION = 1
_SIG_LEN = 64
_PREFIX = 4 + 1 + _SIG_LEN

SparseUpdate = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Per parameter: (flat int64 indices, float32 values); the step is theta.flat[idx] -= values."""


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
def apply_update(state: Mapping[str, torch.Tensor], update: SparseUpdate) -> None:
    """theta -= U in place, exactly (one rounding per touched coordinate)."""
    for name, (idx, values) in update.items():
        flat = state[name].view(-1)
        flat.index_put_((idx.to(flat.device),), flat[idx.to(flat.device)] - values.to(flat.device, flat.dtype))


# ------------------------------------------------------------------ envelope


def _digest(domain: bytes, payload: bytes) -> bytes:
    return domain + hashlib.blake2b(payload, digest_size=32).digest()


def _seal(magic: bytes, domain: bytes, payload: bytes, keypair) -> bytes:
    signature = keypair.sign(_digest(domain, payload))
    return magic + struct.pack("<B", FORMAT_VERSION) + bytes(signature) + payload


def _open(data: bytes, magic: bytes, domain: bytes, max_bytes: int) -> tuple[bytes, dict[str, str]]:
    """Check size, magic, version and header; return the payload and its metadata (signature not yet checked)."""
    if len(data) > max_bytes:
        raise SyncError("too_large", f"{len(data)} bytes > cap {max_bytes}")
    if len(data) < _PREFIX + 8 or data[:4] != magic:
        raise SyncError("bad_magic")
    if data[4] != FORMAT_VERSION:
        raise SyncError("bad_version", f"format version {data[4]}")
    payload = data[_PREFIX:]
    (header_len,) = struct.unpack("<Q", payload[:8])
    if header_len > min(len(payload) - 8, 16 * 1024 * 1024):
        raise SyncError("bad_header", "header length out of bounds")
    try:
        header = json.loads(payload[8 : 8 + header_len])
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise TypeError("metadata is not a mapping")
    except (ValueError, TypeError, AttributeError) as exc:
        raise SyncError("bad_header", str(exc)) from None
    return payload, meta


def _verify(data: bytes, domain: bytes, payload: bytes, hotkey: str) -> None:
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


def _meta_fields(meta: dict[str, str], keys: tuple[str, ...]) -> dict[str, str]:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise SyncError("bad_metadata", f"missing {missing}")
    return meta


# ------------------------------------------------------------------ aggregates

_AGG_DOMAIN = b"gauntlet-aggregate-v1"


def pack_aggregate(update: SparseUpdate, meta: AggregateMeta, keypair) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    for name, (idx, values) in update.items():
        tensors[f"{name}.idx"] = idx.to(torch.int64).contiguous().cpu()
        tensors[f"{name}.val"] = values.to(torch.float32).contiguous().cpu()
    fields = {k: json.dumps(v) for k, v in asdict(meta).items()}
    return _seal(AGGREGATE_MAGIC, _AGG_DOMAIN, st_save(tensors, metadata=fields), keypair)


def parse_aggregate(
    data: bytes, *, shapes: Mapping[str, tuple[int, ...]], max_bytes: int, publisher: str | None = None
) -> tuple[AggregateMeta, SparseUpdate]:
    """Verify and decode an aggregate; ``publisher``, if given, pins the hotkey that must have signed it."""
    payload, raw = _open(data, AGGREGATE_MAGIC, _AGG_DOMAIN, max_bytes)
    raw = _meta_fields(raw, ("window", "base_model_hash", "result_model_hash", "validator", "spec_version", "peers",
                             "null"))
    try:
        meta = AggregateMeta(**{k: json.loads(raw[k]) for k in AggregateMeta.__dataclass_fields__})
    except (ValueError, TypeError) as exc:
        raise SyncError("bad_metadata", str(exc)) from None
    if publisher is not None and meta.validator != publisher:
        raise SyncError("wrong_publisher", f"{meta.validator} is not {publisher}")
    _verify(data, _AGG_DOMAIN, payload, meta.validator)
    tensors = _load_tensors(payload)
    update: SparseUpdate = {}
    for name, shape in shapes.items():
        idx, val = tensors.pop(f"{name}.idx", None), tensors.pop(f"{name}.val", None)
        if idx is None and val is None:
            continue  # nothing touched this parameter
        numel = int(torch.Size(shape).numel())
        if idx is None or val is None or idx.dtype != torch.int64 or val.dtype != torch.float32:
            raise SyncError("bad_tensor", name)
        if idx.ndim != 1 or idx.shape != val.shape:
            raise SyncError("bad_shape", name)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
            raise SyncError("index_out_of_range", name)
        if not torch.isfinite(val).all():
            raise SyncError("not_finite", name)
        update[name] = (idx, val)
    if tensors:
        raise SyncError("unexpected_tensor", ", ".join(sorted(tensors)[:3]))
    return meta, update


# ------------------------------------------------------------------ checkpoints

_CKPT_DOMAIN = b"gauntlet-checkpoint-v1"


def pack_checkpoint(state: Mapping[str, torch.Tensor], meta: CheckpointMeta, keypair) -> bytes:
    tensors = {name: t.detach().to(torch.float32).contiguous().cpu() for name, t in state.items()}
    fields = {k: json.dumps(v) for k, v in asdict(meta).items()}
    return _seal(CHECKPOINT_MAGIC, _CKPT_DOMAIN, st_save(tensors, metadata=fields), keypair)


def parse_checkpoint(
    data: bytes, *, shapes: Mapping[str, tuple[int, ...]], max_bytes: int, publisher: str | None = None
) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """Verify and decode a checkpoint; the caller re-hashes the weights against ``meta.model_hash``."""
    payload, raw = _open(data, CHECKPOINT_MAGIC, _CKPT_DOMAIN, max_bytes)
    raw = _meta_fields(raw, ("window", "model_hash", "validator", "spec_version", "publisher",
                                   "genesis_window"))
    try:
        meta = CheckpointMeta(**{k: json.loads(raw[k]) for k in CheckpointMeta.__dataclass_fields__})
    except (ValueError, TypeError) as exc:
        raise SyncError("bad_metadata", str(exc)) from None
    if publisher is not None and meta.validator != publisher:
        raise SyncError("wrong_publisher", f"{meta.validator} is not {publisher}")
    _verify(data, _CKPT_DOMAIN, payload, meta.validator)
    state = _load_tensors(payload)
    if set(state) != set(shapes):
        raise SyncError("bad_tensor", "parameter names differ from the model spec")
    for name, shape in shapes.items():
        if state[name].dtype != torch.float32 or tuple(state[name].shape) != tuple(shape):
            raise SyncError("bad_shape", name)
        if not torch.isfinite(state[name]).all():
            raise SyncError("not_finite", name)
    return meta, state
