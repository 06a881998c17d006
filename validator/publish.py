"""The outer step: aggregate the best accepted deltas, publish it (and checkpoints), advance theta.

theta_{W+1} = theta_W - U_W with U_W = outer lr x robust_aggregate(clipped deltas of the top
``outer.max_peers`` evaluated peers that improved the random loss). The aggregate is
published signed at ``aggregate_key(W)`` with the base and result model hashes (possibly
empty: then theta_{W+1} = theta_W), and every ``checkpoint_every`` windows a full
checkpoint of theta_{W+1} at ``checkpoint_key(W+1)`` (the key names the window whose
start the weights are). The validator advances its own model by *parsing the bytes it
published* (``GlobalModel.step``), exactly the path a miner takes.

Once published, an aggregate is authoritative: a validator that crashed after publishing
and re-scores the window re-uses it rather than publishing a different outer step.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from protocol.global_model import GlobalModel, checkpoint_bytes
from protocol.hparams import HParams
from protocol.model import model_hash
from protocol.storage import ObjectNotFound, aggregate_key, checkpoint_key
from protocol.sync import (
    AggregateMeta,
    SparseUpdate,
    apply_update,
    dense_to_update,
    pack_aggregate,
    parse_aggregate,
)
from validator.combine import WindowOutcome
from validator.stage1 import Stage1Result

log = logging.getLogger(__name__)

MAX_AGGREGATE_BYTES = 8 << 30


@dataclass(frozen=True)
class Published:
    aggregate_hash: str
    peers: list[str]
    next_model: GlobalModel
    reused: bool = False


def robust_aggregate(updates: Sequence[SparseUpdate], shapes: Mapping[str, tuple[int, ...]], hp: HParams
                     ) -> dict[str, torch.Tensor]:
    """Dense aggregate of sparse deltas: clip to the median norm, then the configured rule."""
    from scoring.aggregate import aggregate

    dense = []
    for update in updates:
        d = {}
        for name, shape in shapes.items():
            t = torch.zeros(int(torch.Size(shape).numel()), dtype=torch.float32)
            if name in update:
                idx, val = update[name]
                t.index_copy_(0, idx, val)
            d[name] = t.view(shape)
        dense.append(d)
    if not dense:
        return {}
    return aggregate(dense, rule=hp.outer.rule, trim_fraction=hp.outer.trim_fraction, clip_to_median=True)


def _existing(ctx: Any, window: int, model: GlobalModel) -> Published | None:
    try:
        data = ctx.own_storage.get(aggregate_key(window), max_bytes=MAX_AGGREGATE_BYTES)
    except ObjectNotFound:
        return None
    meta, _ = parse_aggregate(data, shapes=model.shapes, max_bytes=MAX_AGGREGATE_BYTES, publisher=ctx.hotkey)
    if meta.base_model_hash != model.hash:
        raise RuntimeError(f"published aggregate {window} extends {meta.base_model_hash[:12]}, not theta_W")
    nxt = model.copy()
    nxt.step(data, max_bytes=MAX_AGGREGATE_BYTES, publisher=ctx.hotkey)
    log.info("window %d: re-using the aggregate published before a restart", window)
    return Published(hashlib.blake2b(data, digest_size=32).hexdigest(), list(meta.peers), nxt, reused=True)


def publish_window(ctx: Any, window: int, model: GlobalModel, s1: Stage1Result, outcome: WindowOutcome) -> Published:
    """Publish aggregate(W) (or re-use it), then a checkpoint when due; return theta_{W+1}."""
    published = _existing(ctx, window, model)
    if published is None:
        hp: HParams = ctx.hp
        peers = outcome.ranked_for_aggregate(hp.outer.max_peers)
        agg = robust_aggregate([s1.accepted[hk].decoded.update for hk in peers], model.shapes, hp)
        update = dense_to_update(agg, lr=hp.outer.lr)
        nxt = model.copy()
        apply_update(nxt.state, update)
        meta = AggregateMeta(window=window, base_model_hash=model.hash, result_model_hash=model_hash(nxt.state),
                             validator=ctx.hotkey, spec_version=hp.spec_version, peers=peers)
        data = pack_aggregate(update, meta, ctx.keypair)
        ctx.own_storage.put(aggregate_key(window), data)
        nxt = model.copy()
        nxt.step(data, max_bytes=MAX_AGGREGATE_BYTES, publisher=ctx.hotkey)
        published = Published(hashlib.blake2b(data, digest_size=32).hexdigest(), peers, nxt)
    maybe_checkpoint(ctx, published.next_model)
    return published


def maybe_checkpoint(ctx: Any, model: GlobalModel, *, force: bool = False) -> bool:
    """Publish theta_{model.window} at checkpoint_key(model.window) when due (never twice)."""
    if not force and model.window % ctx.hp.outer.checkpoint_every:
        return False
    key = checkpoint_key(model.window)
    try:
        ctx.own_storage.stat(key)
        return False
    except ObjectNotFound:
        pass
    ctx.own_storage.put(key, checkpoint_bytes(model, validator_hotkey=ctx.hotkey,
                                              spec_version=ctx.hp.spec_version, keypair=ctx.keypair))
    return True
