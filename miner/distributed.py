"""Data parallelism under ``torchrun``: who is rank 0, and how rank 0 shares what only it reads.

Only rank 0 talks to the chain and the store (one wallet signature, one upload per window);
the other ranks receive the window's decision, the global weights, the window's token
rows and (once) the optimizer state by broadcast, then train their disjoint share of the
rows with DDP, whose gradient all-reduce keeps every rank's weights identical.
Broadcasts carry a JSON skeleton plus tensors (``miner.state.flatten_tree``), never pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from miner.state import flatten_tree, unflatten_tree


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(device: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def broadcast_ints(values: list[int], info: DistInfo) -> list[int]:
    """Rank 0's ``values`` on every rank (fixed length)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.int64)
    dist.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def _broadcast_bytes(data: bytes | None, info: DistInfo) -> bytes:
    (n,) = broadcast_ints([len(data) if data is not None else 0], info)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if info.is_main and n else torch.empty(n, dtype=torch.uint8)
    if n:
        dist.broadcast(buf, src=0)
    return bytes(buf.numpy().tobytes())


def broadcast_tree(tree: Any, info: DistInfo) -> Any:
    """Rank 0's nested dict/list/tensor structure on every rank (tensors on the CPU)."""
    if not info.enabled:
        return tree
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(flatten_tree(tree, tensors)).encode() if info.is_main else None
    skeleton_bytes = _broadcast_bytes(skeleton, info)
    spec = json.loads(skeleton_bytes)
    names = sorted(_tensor_names(spec))
    out: dict[str, torch.Tensor] = {}
    for name in names:
        header = _broadcast_bytes(
            json.dumps([str(tensors[name].dtype).removeprefix("torch."), list(tensors[name].shape)]).encode()
            if info.is_main else None, info)
        dtype_name, shape = json.loads(header)
        t = tensors[name].contiguous() if info.is_main else torch.empty(shape, dtype=getattr(torch, dtype_name))
        dist.broadcast(t, src=0)
        out[name] = t
    return unflatten_tree(spec, out)


def _tensor_names(spec: Any) -> list[str]:
    if isinstance(spec, dict):
        if "__tensor__" in spec:
            return [spec["__tensor__"]]
        values = spec.get("__dict__") or [[None, v] for v in spec.get("__tuple__", [])]
        return [n for _, v in values for n in _tensor_names(v)]
    if isinstance(spec, list):
        return [n for v in spec for n in _tensor_names(v)]
    return []


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
