"""This validator's proposed outer step for a window (``protocol.follow`` decides whose is applied).

P_W = outer lr x robust_aggregate(the top ``outer.max_peers`` evaluated peers that improved
the random loss, sized by the subnet's rule as Stage 2 scored them, ``scoring.scale``), rounded
to the aggregate's 7-bit block code (``protocol.compact``), signed at ``proposal_key(W)`` with the base and result model
hashes (possibly empty: then the result is theta_W). Every validator proposes; the
follower rule picks the publisher's proposal, or the next validator's at failover, so a
follower's proposal is what keeps the subnet going the window its publisher dies.

Once stored, a proposal is final: other nodes may already have applied it, so a validator
that crashed after proposing and re-scores the window re-uses it rather than storing a
different one (its store timestamp, which the deadline judges, stays that of the first put).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from protocol.compact import CompactTensor, CompactUpdate
from protocol.global_model import GlobalModel
from protocol.hparams import HParams
from protocol.model import model_hash
from protocol.storage import ObjectNotFound, Storage, proposal_key
from protocol.sync import (
    AggregateMeta,
    SparseUpdate,
    apply_update,
    pack_aggregate,
    parse_aggregate,
    revert_update,
)
from validator.combine import WindowScores
from validator.stage1 import Decoded, Stage1Result

log = logging.getLogger(__name__)

MAX_AGGREGATE_BYTES = 8 << 30


@dataclass(frozen=True)
class Published:
    aggregate_hash: str  # blake2b of the stored proposal bytes
    peers: list[str]
    result_model_hash: str
    reused: bool = False


def robust_aggregate(updates: Sequence[SparseUpdate], norms: Sequence[float], shapes: Mapping[str, tuple[int, ...]],
                     hp: HParams, median_norm: float | None, *,
                     reuse_buffer: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """The aggregate of sparse deltas under the subnet's size rule (``scoring.scale``), then the configured rule.

    Yields ``(name, dense tensor)`` one tensor at a time (``scoring.aggregate.aggregate_sparse``):
    no peer's delta is ever densified, and ``selected_mean``/``mean`` need only one
    tensor-sized buffer, so memory is the peers' sparse deltas plus one tensor.
    ``norms`` are the deltas' norms as Stage 1 measured them. ``normalise``: each delta scaled to
    ``median_norm`` as Stage 2 scored it; ``cap``: each tensor clipped to the median of that
    tensor's norms (the reference's rule). ``reuse_buffer``: see ``aggregate_sparse``.
    """
    from scoring.aggregate import aggregate_sparse
    from scoring.scale import normalising_factor

    if not updates:
        return iter(())
    normalise = hp.scoring.eval_norm == "normalise"
    scales = [normalising_factor(norm, median_norm) if normalise else 1.0 for norm in norms]
    if len(scales) != len(updates):
        raise ValueError("one norm per update")
    return aggregate_sparse(updates, shapes, rule=hp.outer.rule, trim_fraction=hp.outer.trim_fraction,
                            clip_to_median=hp.scoring.eval_norm == "cap", scales=scales, reuse_buffer=reuse_buffer)


def outer_step(updates: Sequence[SparseUpdate], norms: Sequence[float], shapes: Mapping[str, tuple[int, ...]],
               hp: HParams, median_norm: float | None) -> CompactUpdate:
    """U_W in canonical form: outer lr x :func:`robust_aggregate`, quantised as the aggregate carries it.

    The quantisation (``protocol.compact``: 7-bit magnitudes, one bf16 scale per 64 touched
    values, zeros dropped) comes before anything is applied or hashed, and what is applied and
    hashed is decoded from the very codes that are packed, so the result hash is that of exactly
    the values every node decodes from the published bytes. Each tensor is encoded as it is
    computed (about 1.4 bytes per touched coordinate), so the step never exists as int64
    positions + fp32 values for the whole model (12 bytes).
    """
    step: dict[str, CompactTensor] = {}
    for name, combined in robust_aggregate(updates, norms, shapes, hp, median_norm, reuse_buffer=True):
        enc = CompactTensor.quantise_dense(combined.mul_(hp.outer.lr))  # fp32 x lr, then the format's one rounding
        if enc is not None:
            step[name] = enc
        del combined, enc
    return CompactUpdate(step)


class _TensorwiseDelta(Mapping[str, tuple[torch.Tensor, torch.Tensor]]):
    """A peer's delta decoded one tensor at a time from its compressed upload, as the aggregation asks.

    The aggregation visits tensor by tensor, so the validator holds each peer's upload in its
    compressed form (about 10 bits per kept value) plus one decoded tensor, never a whole
    decoded delta per peer (12 bytes per kept value: ~4 GB for 20 peers at 1B shapes).
    """

    def __init__(self, decoded: Decoded) -> None:
        self._decoded = decoded
        self._encoded = decoded.encoded if decoded.update is None else None
        self._names = set(self._encoded if self._encoded is not None else decoded.load_update())

    def __getitem__(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._encoded is None:
            return self._decoded.load_update()[name]
        from protocol.codec import decode_sparse

        assert self._decoded.cfg is not None and self._decoded.shapes is not None
        sparse = decode_sparse(self._encoded[name], self._decoded.cfg)
        idx, values = sparse.indices.reshape(-1).to(torch.int64), sparse.values.reshape(-1).to(torch.float32)
        real = idx < math.prod(self._decoded.shapes[name])  # chunk padding carries no parameter
        return idx[real].contiguous(), values[real].contiguous()

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)


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
                     outcome: WindowScores, hp: HParams) -> Published:
    """Store this validator's proposal for ``window`` (or re-use the stored one)."""
    hotkey = str(keypair.ss58_address)
    published = _existing(storage, hotkey, window, model)
    if published is not None:
        return published
    peers = outcome.ranked_for_aggregate(hp.outer.max_peers)
    chosen = [s1.accepted[hk].decoded for hk in peers]
    update = outer_step([_TensorwiseDelta(d) for d in chosen], [d.norm for d in chosen], model.shapes, hp,
                        s1.median_norm)
    # Hash theta_W - U_W without a model copy: apply in place, hash, restore the touched coordinates exactly.
    undo: dict[str, torch.Tensor] = {}
    apply_update(model.state, update, undo=undo)
    try:
        result = model_hash(model.state)
    finally:
        revert_update(model.state, update, undo)
    meta = AggregateMeta(window=window, base_model_hash=model.hash, result_model_hash=result,
                         validator=hotkey, spec_version=hp.spec_version, peers=peers)
    data = pack_aggregate(update, meta, keypair, shapes=model.shapes)
    storage.put(proposal_key(window), data)
    return Published(hashlib.blake2b(data, digest_size=32).hexdigest(), peers, result)
