"""Crash-safe miner state: error-feedback buffer, optimizer state and progress.

A miner can be ``kill -9``-ed at any instruction. What must survive is (a) the
error-feedback buffer, which carries every coordinate not yet sent, (b) the inner
optimizer's moments and (c) which window was last uploaded, so a restart neither loses
training signal nor uploads twice for one window.

Layout under the state directory (one per hotkey):

* ``train-<W>.safetensors``: EF buffer (``ef/<param>``) and optimizer tensors (``opt/...``),
  written once to a temporary name, fsynced and renamed. Never modified afterwards.
* ``upload-<W>.gdlt``: the signed payload of a window in flight, written before uploading
  so a restart can finish the same upload (same bytes, same signature) or, if the window
  has passed, put the unsent values back into the EF buffer exactly.
* ``progress.json``: the commit record. It names the tensor file (with its SHA-256) and
  the pending upload. Replacing it atomically is the single commit point; files it does
  not name are leftovers of an interrupted step and are deleted on the next commit.

No pickle: tensors go through safetensors, everything else through JSON (optimizer
``state_dict`` trees are flattened into both).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from protocol.storage import fsync_dir

PROGRESS = "progress.json"
STATE_VERSION = 1


class StateError(RuntimeError):
    """The state directory is unreadable or inconsistent (the message says which file)."""


@dataclass
class Progress:
    hotkey: str
    uid: int | None = None
    last_uploaded_window: int | None = None  # highest window whose delta is confirmed in storage
    trained_window: int | None = None  # window the saved EF/optimizer state includes
    pending_window: int | None = None  # payload written, upload not yet confirmed
    pending_payload: str | None = None
    pending_sha256: str | None = None
    tensors: str | None = None
    tensors_sha256: str | None = None
    inner_steps_done: int = 0  # over the miner's life (drives lr warm-up)
    version: int = STATE_VERSION
    history: list[dict[str, Any]] = field(default_factory=list)  # last few windows, for operators


# --------------------------------------------------------------------------- atomic files


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old file or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- optimizer trees


def flatten_tree(tree: Any, tensors: dict[str, torch.Tensor], prefix: str = "opt") -> Any:
    """JSON-able skeleton of a nested state_dict; tensors are moved into ``tensors`` by path."""
    if isinstance(tree, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = tree.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(tree, dict):
        items = [[k, flatten_tree(v, tensors, f"{prefix}/{k}")] for k, v in tree.items()]
        return {"__dict__": items}
    if isinstance(tree, list | tuple):
        out = [flatten_tree(v, tensors, f"{prefix}/{i}") for i, v in enumerate(tree)]
        return {"__tuple__": out} if isinstance(tree, tuple) else out
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise TypeError(f"cannot persist {type(tree).__name__} at {prefix}")


def unflatten_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_tree(v, tensors) for v in skeleton["__tuple__"])
        return {k: unflatten_tree(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_tree(v, tensors) for v in skeleton]
    return skeleton


# --------------------------------------------------------------------------- the store


class MinerState:
    """The miner's persistent state in ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | Path, hotkey: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hotkey = hotkey

    # -- reading

    def load(self) -> tuple[Progress, dict[str, torch.Tensor], Any | None]:
        """(progress, EF buffer, optimizer state_dict or None); a fresh Progress when nothing is saved."""
        path = self.dir / PROGRESS
        if not path.exists():
            return Progress(hotkey=self.hotkey), {}, None
        try:
            raw = json.loads(path.read_text())
            progress = Progress(**raw)
        except (ValueError, TypeError) as exc:
            raise StateError(f"{path} is corrupt: {exc}") from None
        if progress.hotkey != self.hotkey:
            raise StateError(f"{self.dir} belongs to hotkey {progress.hotkey}, not {self.hotkey}")
        ef: dict[str, torch.Tensor] = {}
        opt = None
        if progress.tensors:
            data = self._read_checked(progress.tensors, progress.tensors_sha256)
            try:
                tensors = st_load(data)
                header_len = int.from_bytes(data[:8], "little")
                meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
            except Exception as exc:
                raise StateError(f"{progress.tensors} is not a valid safetensors file: {exc}") from None
            ef = {k.removeprefix("ef/"): v for k, v in tensors.items() if k.startswith("ef/")}
            if "optimizer" in meta:
                opt = unflatten_tree(json.loads(meta["optimizer"]), tensors)
        return progress, ef, opt

    def pending_payload(self, progress: Progress) -> bytes | None:
        if progress.pending_payload is None:
            return None
        return self._read_checked(progress.pending_payload, progress.pending_sha256)

    def _read_checked(self, name: str, digest: str | None) -> bytes:
        path = self.dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StateError(f"{path} named by {PROGRESS} is missing") from None
        if digest is not None and sha256(data) != digest:
            raise StateError(f"{path} does not match the checksum recorded in {PROGRESS}")
        return data

    # -- writing

    def write_tensors(self, window: int, ef: dict[str, torch.Tensor], optimizer_state: Any | None) -> tuple[str, str]:
        """Write a new immutable tensor file; returns (name, sha256) for the next commit."""
        tensors = {f"ef/{k}": v.detach().float().cpu().contiguous() for k, v in ef.items()}
        meta = {"version": str(STATE_VERSION)}
        if optimizer_state is not None:
            opt_tensors: dict[str, torch.Tensor] = {}
            meta["optimizer"] = json.dumps(flatten_tree(optimizer_state, opt_tensors))
            tensors.update(opt_tensors)
        data = st_save(tensors, metadata=meta)
        name = f"train-{window:010d}.safetensors"
        atomic_write(self.dir / name, data)
        return name, sha256(data)

    def write_payload(self, window: int, payload: bytes) -> tuple[str, str]:
        name = f"upload-{window:010d}.gdlt"
        atomic_write(self.dir / name, payload)
        return name, sha256(payload)

    def commit(self, progress: Progress) -> None:
        """Atomically make ``progress`` (and the files it names) the current state; drop leftovers."""
        progress.history = progress.history[-20:]
        atomic_write(self.dir / PROGRESS, json.dumps(asdict(progress), indent=1).encode())
        keep = {PROGRESS, progress.tensors, progress.pending_payload}
        for path in self.dir.iterdir():
            if path.name not in keep and (path.name.startswith(("train-", "upload-", ".")) and path.is_file()):
                path.unlink(missing_ok=True)
