"""The outer step (``validator.publish``): the sparse aggregation equals the dense one bit for bit, and
what the publisher hashes is exactly what every node gets from the published bytes."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from protocol.codec import CodecConfig, encode
from protocol.global_model import GlobalModel
from protocol.hparams import HParams
from protocol.model import model_hash
from protocol.storage import LocalStorage, proposal_key
from protocol.sync import SparseUpdate, apply_update, round_update
from scoring.aggregate import aggregate
from scoring.scale import normalising_factor
from testing.validator_sim import keypair
from validator.publish import outer_step, publish_proposal, robust_aggregate
from validator.stage1 import Candidate, Decoded, Stage1Result, decode_upload

HP = HParams()
SHAPES = GlobalModel.initial(HP).shapes  # the tiny preset
CFG = CodecConfig.from_params(HP.codec)
RULES = ("mean", "selected_mean", "trimmed_mean", "centered_clip")


@functools.cache
def _uploads(n: int, seed: int = 0) -> list[Decoded]:
    """Codec-encoded deltas of varied size, as Stage 1 keeps them; every third one mostly overlaps its predecessor."""
    gen = torch.Generator().manual_seed(seed)
    deltas: list[dict[str, torch.Tensor]] = []
    for i in range(n):
        if i % 3 == 2:
            base = deltas[-1]
            delta = {k: v + 1e-5 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
        else:
            delta = {k: 1e-3 * (1 + i % 4) * torch.randn(s, generator=gen) for k, s in SHAPES.items()}
        deltas.append(delta)
    return [decode_upload(encode(d, CFG), SHAPES, CFG) for d in deltas]


def _peers(n: int, seed: int = 0) -> tuple[list[SparseUpdate], list[float]]:
    """The decoded deltas and their norms; peer 1 leaves a tensor out entirely."""
    uploads = _uploads(n, seed)
    updates = [dict(d.load_update()) for d in uploads]
    updates[1].pop(sorted(SHAPES)[0])
    return updates, [d.norm for d in uploads]


def _hp(rule: str, eval_norm: str) -> HParams:
    return HP.model_copy(update={"outer": HP.outer.model_copy(update={"rule": rule}),
                                 "scoring": HP.scoring.model_copy(update={"eval_norm": eval_norm})})


def _dense(updates: list[SparseUpdate], scales: list[float]) -> list[dict[str, torch.Tensor]]:
    """Every peer's whole delta densified, as the validator built them before."""
    dense = []
    for update, factor in zip(updates, scales, strict=True):
        d = {}
        for name, shape in SHAPES.items():
            t = torch.zeros(math.prod(shape), dtype=torch.float32)
            if name in update:
                idx, val = update[name]
                t.index_copy_(0, idx, val * factor)
            d[name] = t.view(shape)
        dense.append(d)
    return dense


@pytest.mark.parametrize("n_peers", [5, 20])
@pytest.mark.parametrize("eval_norm", ["cap", "normalise"])
@pytest.mark.parametrize("rule", RULES)
def test_sparse_aggregation_equals_the_dense_path_bit_for_bit(rule: str, eval_norm: str, n_peers: int) -> None:
    updates, norms = _peers(n_peers, seed=n_peers)
    median = sorted(norms)[len(norms) // 2]
    hp = _hp(rule, eval_norm)
    scales = [normalising_factor(n, median) if eval_norm == "normalise" else 1.0 for n in norms]
    want = aggregate(_dense(updates, scales), rule=rule, trim_fraction=hp.outer.trim_fraction,
                     clip_to_median=eval_norm == "cap")
    got = dict(robust_aggregate(updates, norms, SHAPES, hp, median))
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    if rule in ("mean", "selected_mean") and eval_norm == "normalise" and n_peers <= 17:
        # Up to 17 peers torch's own sum(dim=0) adds in peer order too: the formula used before.
        for name in want:
            stack = torch.stack([d[name] for d in _dense(updates, scales)])
            count = (stack != 0).sum(0).clamp(min=1) if rule == "selected_mean" else n_peers
            assert torch.equal(got[name], stack.sum(0) / count), name


def test_outer_step_is_canonical_and_scaled_by_the_outer_lr() -> None:
    updates, norms = _peers(4)
    step = outer_step(updates, norms, SHAPES, HP, None)
    combined = dict(robust_aggregate(updates, norms, SHAPES, HP, None))
    for name, (idx, val) in step.items():
        assert bool((val != 0).all()) and bool((idx[1:] > idx[:-1]).all())
        exact = combined[name].reshape(-1) * HP.outer.lr
        want_idx, want_val = round_update({name: (exact.nonzero().view(-1), exact[exact != 0])})[name]
        assert torch.equal(idx, want_idx) and torch.equal(val, want_val)  # the format's one rounding
    assert outer_step([], [], SHAPES, HP, None) == {}


@dataclass
class _Outcome:
    order: list[str]

    def ranked_for_aggregate(self, limit: int) -> list[str]:
        return self.order[:limit]


def test_published_proposal_reproduces_its_result_hash_and_leaves_theta_alone(tmp_path: Path) -> None:
    model = GlobalModel.initial(HP)
    before = model_hash(model.state)
    uploads = _uploads(6)  # compressed, decoded tensor by tensor while aggregating
    median = sorted(p.norm for p in uploads)[3]
    s1 = Stage1Result(accepted={f"hk{i}": Candidate(f"hk{i}", i, 0.0, "", 0, 0, p) for i, p in enumerate(uploads)},
                      median_norm=median)
    storage, key = LocalStorage(tmp_path), keypair("publisher")
    published = publish_proposal(storage, key, 0, model, s1, _Outcome([f"hk{i}" for i in range(6)]), HP)
    assert model_hash(model.state) == before == model.hash  # hashed in place, then restored exactly
    follower = model.copy()
    meta = follower.step(storage.get(proposal_key(0), max_bytes=1 << 30), max_bytes=1 << 30)
    assert follower.hash == meta.result_model_hash == published.result_model_hash != before
    # The same step as from the fully decoded deltas.
    reference = model.copy()
    apply_update(reference.state, outer_step([d.load_update() for d in uploads], [d.norm for d in uploads],
                                             SHAPES, HP, median))
    assert model_hash(reference.state) == published.result_model_hash
    assert publish_proposal(storage, key, 0, model, s1, _Outcome([]), HP).reused
