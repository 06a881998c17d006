"""The global model every node holds: theta_W, its hash, and how to reach the next window's.

Every validator keeps, in its own store, the history of the aggregates every node applied
(``aggregate_key(W)``, the bytes as their publisher signed them: see ``protocol.follow``
for who that is) and every ``checkpoint_every`` windows a full checkpoint it signs itself.
A node reaches theta_W by loading a checkpoint at or before W and replaying the aggregates
after it, checking the chain of model hashes at every step: a node can be behind, never
silently different.

The master copy is fp32 on the CPU; trainers copy it to their device. Hashing and the
outer step stay on the CPU so that every node computes the same bits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from protocol.hparams import HParams
from protocol.model import ModelConfig, build_model, model_hash, param_shapes, preset
from protocol.storage import ObjectNotFound, Storage, StorageError, aggregate_key, checkpoint_key
from protocol.sync import (
    AggregateMeta,
    CheckpointMeta,
    SyncError,
    apply_update,
    pack_checkpoint,
    parse_aggregate,
    parse_checkpoint,
    revert_update,
    undo_arena,
)

__all__ = [
    "GlobalModel",
    "OutOfSync",
    "checkpoint_bytes",
    "latest_checkpoint_window",
    "load_checkpoint",
    "sync_global_model",
]

log = logging.getLogger(__name__)


class OutOfSync(RuntimeError):
    """The published history does not lead to a model this node can reproduce."""


@dataclass
class GlobalModel:
    """theta at the start of ``window``; ``state`` maps parameter names to fp32 CPU tensors.

    ``publisher`` is the validator whose aggregate of ``window`` every node takes unless it
    fails over (the signer of the aggregate that led here; None at genesis or after a null window).
    """

    config: ModelConfig
    window: int
    state: dict[str, torch.Tensor]
    hash: str
    publisher: str | None = None
    genesis_window: int | None = None  # the window of the subnet's first checkpoint
    # Old values of the coordinates the last step touched, kept between windows so that
    # applying an aggregate does not page-fault fresh memory every window (see step()).
    _undo: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def initial(cls, hp: HParams, window: int = 0) -> GlobalModel:
        """The deterministic starting weights every node can build from the hyper-parameters."""
        config = preset(hp.model)
        model = build_model(config, seed=hp.model_seed)
        state = {k: v.detach().float().cpu().clone() for k, v in model.named_parameters()}
        return cls(config=config, window=window, state=state, hash=model_hash(state))

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return param_shapes(self.config)

    def copy(self) -> GlobalModel:
        return GlobalModel(self.config, self.window, {k: v.clone() for k, v in self.state.items()}, self.hash,
                           self.publisher, self.genesis_window)

    def step(self, data: bytes, *, max_bytes: int, publisher: str | None = None) -> AggregateMeta:
        """Apply the aggregate of ``self.window`` and move to the next window (``publisher`` pins its signer)."""
        meta, update = parse_aggregate(data, shapes=self.shapes, max_bytes=max_bytes, publisher=publisher)
        if meta.window != self.window or meta.base_model_hash != self.hash:
            raise OutOfSync(f"aggregate for window {meta.window} does not extend window {self.window} ({self.hash[:12]})")
        # Keep the touched coordinates' old values: a result that does not match its claim leaves theta as it was.
        undo: dict[str, torch.Tensor] = {}
        if self._undo is None or self._undo.numel() < update.touched:
            self._undo = undo_arena(update.touched)
        apply_update(self.state, update, undo=undo, arena=self._undo)
        new_hash = model_hash(self.state)
        if new_hash != meta.result_model_hash:
            revert_update(self.state, update, undo)
            raise OutOfSync(f"aggregate {meta.window} gave {new_hash[:12]}, publisher claims {meta.result_model_hash[:12]}")
        self.window, self.hash = meta.window + 1, new_hash
        self.publisher = None if meta.null else meta.validator
        return meta


def checkpoint_bytes(model: GlobalModel, *, validator_hotkey: str, spec_version: int, keypair) -> bytes:
    meta = CheckpointMeta(window=model.window, model_hash=model.hash, validator=validator_hotkey,
                          spec_version=spec_version, publisher=model.publisher, genesis_window=model.genesis_window)
    return pack_checkpoint(model.state, meta, keypair)


def latest_checkpoint_window(storage: Storage, at_most: int) -> int | None:
    windows = []
    for info in storage.list("checkpoints/"):
        stem = info.key.rsplit("/", 1)[-1].split(".", 1)[0]
        if stem.isdigit() and int(stem) <= at_most:
            windows.append(int(stem))
    return max(windows, default=None)


def sync_global_model(
    current: GlobalModel | None,
    target_window: int,
    *,
    hp: HParams,
    storage: Storage,
    owner: str | None,
    max_bytes: int = 8 << 30,
    on_step: Callable[[int], None] | None = None,
) -> GlobalModel:
    """Advance (or restore) the global model to ``target_window`` from one validator's history.

    ``owner`` is the validator whose store this is: its checkpoints must carry its signature;
    the aggregates may be signed by whoever published them, the hash chain vouches for them.
    Returns the model as far as the history reaches; the caller compares ``result.window``
    with what it needs and waits or retries.
    """
    model = current
    if model is None or model.window > target_window:
        model = load_checkpoint(hp, storage, owner, target_window, max_bytes)
    while model.window < target_window:
        try:
            data = storage.get(aggregate_key(model.window), max_bytes=max_bytes)
        except ObjectNotFound:
            ckpt = latest_checkpoint_window(storage, target_window)
            if ckpt is not None and ckpt > model.window:
                model = load_checkpoint(hp, storage, owner, target_window, max_bytes)
                continue
            break  # not published yet
        try:
            model.step(data, max_bytes=max_bytes)
        except (SyncError, OutOfSync) as exc:
            log.warning("cannot apply aggregate %d: %s; trying a checkpoint", model.window, exc)
            ckpt = latest_checkpoint_window(storage, target_window)
            if ckpt is None or ckpt <= model.window:
                raise OutOfSync(f"aggregate {model.window} unusable and no newer checkpoint: {exc}") from exc
            model = load_checkpoint(hp, storage, owner, target_window, max_bytes)
        if on_step:
            on_step(model.window)
    return model


def load_checkpoint(
    hp: HParams, storage: Storage, owner: str | None, target_window: int, max_bytes: int = 8 << 30
) -> GlobalModel:
    """The newest checkpoint at or before ``target_window`` in ``storage``, signed by ``owner``."""
    window = latest_checkpoint_window(storage, target_window)
    if window is None:
        raise OutOfSync(f"no checkpoint at or before window {target_window} has been published yet")
    try:
        data = storage.get(checkpoint_key(window), max_bytes=max_bytes)
    except StorageError as exc:
        raise OutOfSync(f"checkpoint {window} unreadable: {exc}") from exc
    config = preset(hp.model)
    meta, state = parse_checkpoint(data, shapes=param_shapes(config), max_bytes=max_bytes, publisher=owner)
    digest = model_hash(state)
    if digest != meta.model_hash or meta.window != window:
        raise OutOfSync(f"checkpoint {window} hash {digest[:12]} does not match its claim {meta.model_hash[:12]}")
    return GlobalModel(config=config, window=window, state=state, hash=digest, publisher=meta.publisher,
                       genesis_window=meta.genesis_window)
