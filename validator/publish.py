"""This validator's proposed outer step for a window (``protocol.follow`` decides whose is applied).

P_W = outer lr x robust_aggregate(the top ``outer.max_peers`` evaluated peers that improved
the random loss, sized by the subnet's rule as Stage 2 scored them, ``scoring.scale``), signed at ``proposal_key(W)`` with the base and result
model hashes (possibly empty: then the result is theta_W). Every validator proposes; the
follower rule picks the publisher's proposal, or the next validator's at failover, so a
follower's proposal is what keeps the subnet going the window its publisher dies.

Once stored, a proposal is final: other nodes may already have applied it, so a validator
that crashed after proposing and re-scores the window re-uses it rather than storing a
different one (its store timestamp, which the deadline judges, stays that of the first put).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from protocol.global_model import GlobalModel
from protocol.hparams import HParams
from protocol.model import model_hash
from protocol.storage import ObjectNotFound, Storage, proposal_key
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
    aggregate_hash: str  # blake2b of the stored proposal bytes
    peers: list[str]
    result_model_hash: str
    reused: bool = False


def robust_aggregate(updates: Sequence[SparseUpdate], norms: Sequence[float], shapes: Mapping[str, tuple[int, ...]],
                     hp: HParams, median_norm: float | None) -> dict[str, torch.Tensor]:
    """Dense aggregate of sparse deltas under the subnet's size rule (``scoring.scale``), then the configured rule.

    ``norms`` are the deltas' norms as Stage 1 measured them. ``normalise``: each delta scaled to
    ``median_norm`` as Stage 2 scored it; ``cap``: each tensor clipped to the median of that
    tensor's norms (the reference's rule).
    """
    from scoring.aggregate import aggregate
    from scoring.scale import normalising_factor

    normalise = hp.scoring.eval_norm == "normalise"
    dense = []
    for update, norm in zip(updates, norms, strict=True):
        factor = normalising_factor(norm, median_norm) if normalise else 1.0
        d = {}
        for name, shape in shapes.items():
            t = torch.zeros(int(torch.Size(shape).numel()), dtype=torch.float32)
            if name in update:
                idx, val = update[name]
                t.index_copy_(0, idx, val * factor)
            d[name] = t.view(shape)
        dense.append(d)
    if not dense:
        return {}
    return aggregate(dense, rule=hp.outer.rule, trim_fraction=hp.outer.trim_fraction,
                     clip_to_median=hp.scoring.eval_norm == "cap")


def _existing(storage: Storage, hotkey: str, window: int, model: GlobalModel) -> Published | None:
    try:
        data = storage.get(proposal_key(window), max_bytes=MAX_AGGREGATE_BYTES)
    except ObjectNotFound:
        return None
    meta, _ = parse_aggregate(data, shapes=model.shapes, max_bytes=MAX_AGGREGATE_BYTES, publisher=hotkey)
    if meta.base_model_hash != model.hash:
        raise RuntimeError(f"stored proposal {window} extends {meta.base_model_hash[:12]}, not theta_W")
    log.info("window %d: re-using the proposal stored before a restart", window)
    return Published(hashlib.blake2b(data, digest_size=32).hexdigest(), list(meta.peers), meta.result_model_hash,
                     reused=True)


def publish_proposal(storage: Storage, keypair: Any, window: int, model: GlobalModel, s1: Stage1Result,
                     outcome: WindowOutcome, hp: HParams) -> Published:
    """Store this validator's proposal for ``window`` (or re-use the stored one)."""
    hotkey = str(keypair.ss58_address)
    published = _existing(storage, hotkey, window, model)
    if published is not None:
        return published
    peers = outcome.ranked_for_aggregate(hp.outer.max_peers)
    chosen = [s1.accepted[hk].decoded for hk in peers]
    agg = robust_aggregate([d.update for d in chosen], [d.norm for d in chosen], model.shapes, hp, s1.median_norm)
    update = dense_to_update(agg, lr=hp.outer.lr)
    nxt = model.copy()
    apply_update(nxt.state, update)
    result = model_hash(nxt.state)
    meta = AggregateMeta(window=window, base_model_hash=model.hash, result_model_hash=result,
                         validator=hotkey, spec_version=hp.spec_version, peers=peers)
    data = pack_aggregate(update, meta, keypair)
    storage.put(proposal_key(window), data)
    return Published(hashlib.blake2b(data, digest_size=32).hexdigest(), peers, result)
