"""The aggregate's value code (``protocol.compact``, format v3): 7-bit magnitudes, one bf16 scale per 64.

Round trips and the error bound of the rounding rule, exactness of the decoded values, one
encoding per update (a second encoding of the same update is refused, and whatever parses
re-packs to the same bytes), and that what the validator applies and hashes is what a parser of
its bytes applies. The container's own checks and hostile parts are in ``test_sync.py``.
"""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import asdict

import numpy as np
import pytest
import torch
from bittensor.sp_core import Keypair

from protocol import sync
from protocol.compact import (
    BLOCK,
    QMAX,
    CompactTensor,
    CompactUpdate,
    quantise_values,
    round_update,
    touched_bytes,
)
from protocol.hparams import HParams
from protocol.model import model_hash
from protocol.sync import (
    AggregateMeta,
    SyncError,
    apply_update,
    pack_aggregate,
    parse_aggregate,
    revert_update,
)
from validator.publish import outer_step

VALIDATOR = Keypair.create_from_uri("//Validator")
META = AggregateMeta(window=1, base_model_hash="a" * 64, result_model_hash="b" * 64,
                     validator=VALIDATOR.ss58_address, spec_version=1, peers=["p"])


def _values(n: int, seed: int) -> np.ndarray:
    """Nonzero values over many magnitudes, both signs, some blocks with a lone outlier."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 2, n)
    v[rng.random(n) < 0.05] *= 1e3
    v[v == 0] = 1.0
    return v.astype(np.float32)


def _decoded(scales: torch.Tensor, codes: torch.Tensor, n: int) -> np.ndarray:
    enc = CompactTensor(n, n, torch.zeros(0, dtype=torch.uint8), scales, codes)
    return enc.values().numpy()


@pytest.mark.parametrize("n", [1, 2, 7, 8, 63, 64, 65, 200, 4097])
def test_rounding_rule_error_bound_and_exactness(n: int) -> None:
    v = _values(n, n)
    scales, codes = quantise_values(v)
    d = _decoded(scales, codes, n)
    s = np.repeat(scales.float().numpy(), BLOCK)[:n].astype(np.float64)
    assert bool(np.all(d != 0)) and bool(np.all(np.sign(d) == np.sign(v)))
    m = np.abs(d) / s
    assert bool(np.all(m == np.rint(m))) and m.min() >= 1 and m.max() <= QMAX  # +-m x scale, exactly
    err = np.abs(d.astype(np.float64) - v)
    # Half a step, or (values under half a step, clamped to m = 1) under one step.
    assert bool(np.all(err <= np.where(np.abs(v) >= s / 2, s / 2 * (1 + 2**-20), s)))
    blocks = np.abs(d).astype(np.float64)
    for b in range(0, n, BLOCK):
        assert blocks[b : b + BLOCK].max() == QMAX * s[b]  # every block holds m = 64
    # The scale is bf16(absmax / 64): within bf16's half ulp of it.
    absmax = np.array([np.abs(v[b : b + BLOCK]).max() for b in range(0, n, BLOCK)], dtype=np.float64)
    assert bool(np.all(np.abs(scales.float().numpy() * QMAX / absmax - 1) <= 2**-8))


def test_a_canonical_step_rounds_to_itself_and_encodes_exactly() -> None:
    idx = torch.arange(0, 3000, 3)
    step = round_update({"t": (idx, torch.from_numpy(_values(idx.numel(), 1)))})
    again = round_update(step)
    assert torch.equal(again["t"][0], step["t"][0]) and torch.equal(again["t"][1], step["t"][1])
    enc = CompactTensor.encode(*step["t"], 3000)
    assert torch.equal(enc.indices(), step["t"][0]) and torch.equal(enc.values(), step["t"][1])
    with pytest.raises(ValueError, match="round_update"):
        CompactTensor.encode(idx, torch.from_numpy(_values(idx.numel(), 1)), 3000)


def test_what_rounds_to_zero_and_what_is_refused() -> None:
    got = round_update({"t": (torch.arange(4), torch.tensor([2.0**-101, -(2.0**-99), 0.0, -0.0]))})
    assert got["t"][0].tolist() == [1] and got["t"][1].tolist() == [-(2.0**-99)]  # under 2**-100: dropped
    tiny = round_update({"t": (torch.arange(2), torch.tensor([1.0, -1e-6]))})["t"][1]
    assert tiny.tolist() == [1.0, -1 / 64]  # kept, at one step, with its sign: the touched set is the input's
    for bad in (float("nan"), float("inf"), 2.0**107):
        with pytest.raises(ValueError):
            round_update({"t": (torch.arange(2), torch.tensor([1.0, bad]))})
        with pytest.raises(ValueError):
            CompactTensor.quantise_dense(torch.tensor([0.0, bad]))
    assert CompactTensor.quantise_dense(torch.tensor([0.0, -0.0, 2.0**-120])) is None
    assert round_update({"t": (torch.tensor([3]), torch.tensor([0.0]))}) == {}


def test_dense_and_sparse_rounding_agree() -> None:
    gen = torch.Generator().manual_seed(3)
    dense = torch.randn(50_000, generator=gen) * (torch.rand(50_000, generator=gen) < 0.3)
    enc = CompactTensor.quantise_dense(dense)
    assert enc is not None
    idx = dense.nonzero().view(-1)
    want_idx, want_val = round_update({"t": (idx, dense[idx])})["t"]
    assert torch.equal(enc.indices(), want_idx) and torch.equal(enc.values(), want_val)
    sparse = CompactTensor.quantise(idx, dense[idx], dense.numel())
    assert sparse is not None and all(torch.equal(a, b) for a, b in zip(sparse.parts().values(),
                                                                        enc.parts().values(), strict=True))
    assert touched_bytes({"t": (want_idx, want_val)}, {"t": (50_000,)}) == enc.nbytes


def _packed_parts(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> bytes:
    fields = {k: json.dumps(v) for k, v in asdict(META).items()}
    body = sync._canonical_safetensors(tensors, fields)
    return sync._seal(sync.AGGREGATE_MAGIC, sync.AGGREGATE_VERSION, sync._AGG_DOMAIN, body, VALIDATOR)


def test_a_second_encoding_of_the_same_update_is_refused() -> None:
    shapes = {"b": (8,)}
    canonical = {"b.count": torch.tensor([2]), "b.pos": torch.tensor([0b101], dtype=torch.uint8),
                 "b.scale": torch.tensor([1 / 32], dtype=torch.bfloat16),
                 "b.code": torch.tensor([0xBF, 0x0F], dtype=torch.uint8)}  # fields 63 (+64), 31 (+32): 2.0, 1.0
    _, parsed = parse_aggregate(_packed_parts(canonical, shapes), shapes=shapes, max_bytes=1 << 20)
    assert parsed["b"][1].tolist() == [2.0, 1.0]
    # The same values as 32 x 1/16 and 16 x 1/16: a block without m = 64.
    other = {**canonical, "b.scale": torch.tensor([1 / 16], dtype=torch.bfloat16),
             "b.code": torch.tensor([0x1F | (15 << 7) & 0xFF, 15 >> 1], dtype=torch.uint8)}
    assert CompactTensor(8, 2, other["b.pos"], other["b.scale"], other["b.code"]).values().tolist() == [2.0, 1.0]
    with pytest.raises(SyncError, match="scale_not_canonical"):
        parse_aggregate(_packed_parts(other, shapes), shapes=shapes, max_bytes=1 << 20)
    # The same positions in the other position code (Elias-Fano, L = 2: lows 0 and 2, then high bits 0b0011).
    ef = {**canonical, "b.pos": torch.tensor([0b1000, 0b0011], dtype=torch.uint8)}
    with pytest.raises(SyncError, match="bad_positions"):
        parse_aggregate(_packed_parts(ef, shapes), shapes=shapes, max_bytes=1 << 20)
    assert pack_aggregate(parsed, META, VALIDATOR)[69:] == _packed_parts(canonical, shapes)[69:]


def test_whatever_parses_repacks_to_the_same_bytes() -> None:
    """Random corruption of a signed (so: hostile publisher) aggregate's data: refused, or the canonical bytes."""
    shapes = {"a": (300,), "b": (40,), "c": (7,)}
    gen = torch.Generator().manual_seed(0)
    update = round_update({"a": (torch.arange(0, 300, 2), torch.randn(150, generator=gen)),
                           "b": (torch.tensor([3, 17]), torch.tensor([1e-3, -2e-3])),
                           "c": (torch.arange(7), torch.randn(7, generator=gen))})
    data = pack_aggregate(update, META, VALIDATOR, shapes=shapes)
    (header_len,) = struct.unpack("<Q", data[69:77])
    start = 77 + header_len
    rng, accepted, reasons = random.Random(0), 0, set()
    for _ in range(400):
        body = bytearray(data[69:])
        for _ in range(rng.choice((1, 1, 2, 3))):
            body[rng.randrange(start - 69, len(body))] ^= 1 << rng.randrange(8)
        mutated = sync._seal(sync.AGGREGATE_MAGIC, sync.AGGREGATE_VERSION, sync._AGG_DOMAIN, bytes(body), VALIDATOR)
        try:
            meta, parsed = parse_aggregate(mutated, shapes=shapes, max_bytes=1 << 20)
        except SyncError as exc:
            reasons.add(exc.reason)
            continue
        accepted += 1
        assert pack_aggregate(parsed, meta, VALIDATOR)[69:] == mutated[69:]
        assert all(bool((parsed[n][1] != 0).all()) for n in parsed)
    assert accepted and {"scale_not_canonical", "padding_bits_set", "bad_scale", "bad_count"} <= reasons


SHAPES = {"big": (300_000,), "mid": (4096, 8), "sparse": (100_000,), "one": (3,)}  # bitmap blocks, EF


def _step_inputs(peers: int = 6) -> tuple[list[dict[str, tuple[torch.Tensor, torch.Tensor]]], list[float]]:
    gen = torch.Generator().manual_seed(5)
    updates = []
    for p in range(peers):
        u = {}
        for name, shape in SHAPES.items():
            numel = math.prod(shape)
            keep = 1 if name == "one" else (numel // 400 if name == "sparse" else numel // 64)
            idx = torch.randperm(numel, generator=gen)[:keep].sort().values
            u[name] = (idx, 1e-3 * (1 + p % 3) * torch.randn(keep, generator=gen))
        updates.append(u)
    norms = [math.sqrt(sum(float((v.double() ** 2).sum()) for _i, v in u.values())) for u in updates]
    return updates, norms


def test_what_the_validator_applies_and_hashes_is_what_a_parser_of_its_bytes_applies() -> None:
    hp = HParams()
    updates, norms = _step_inputs()
    step = outer_step(updates, norms, SHAPES, hp, sorted(norms)[3])
    assert {t.code for t in step.tensors.values()} == {"bitmap", "elias-fano"}
    gen = torch.Generator().manual_seed(9)
    theta = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    before = {n: t.clone() for n, t in theta.items()}
    undo: dict[str, torch.Tensor] = {}
    apply_update(theta, step, undo=undo)  # as publish_proposal: apply, hash, restore
    published_hash = model_hash(theta)
    applied = {n: t.clone() for n, t in theta.items()}
    revert_update(theta, step, undo)
    assert all(torch.equal(theta[n], before[n]) for n in SHAPES)
    meta = AggregateMeta(window=1, base_model_hash=model_hash(before), result_model_hash=published_hash,
                         validator=VALIDATOR.ss58_address, spec_version=1)
    _, parsed = parse_aggregate(pack_aggregate(step, meta, VALIDATOR, shapes=SHAPES), shapes=SHAPES,
                                max_bytes=1 << 24)
    for name in step:
        assert torch.equal(parsed[name][0], step[name][0]) and torch.equal(parsed[name][1], step[name][1])
        want = before[name].view(-1).clone()
        idx, val = parsed[name]
        want[idx] -= val  # the plain path (any device): the same single fp32 subtraction
        assert torch.equal(applied[name].view(-1), want)
    follower = {n: t.clone() for n, t in before.items()}
    apply_update(follower, parsed)  # the compact path, tensors on threads
    assert model_hash(follower) == published_hash
    plain = {n: t.clone() for n, t in before.items()}
    apply_update(plain, {n: parsed[n] for n in parsed})  # decoded first, then index_put
    assert model_hash(plain) == published_hash
    # The decoded values are exact products: the same in float64.
    for t in parsed.tensors.values():
        vals = t.values().double()
        scales = t.scales.double().repeat_interleave(BLOCK)[: t.n]
        assert torch.equal(vals, (vals / scales).round() * scales)


def test_step_error_is_small_against_the_values() -> None:
    """The rounding costs about 1% of the step's norm at these densities (bf16: about 0.2%)."""
    updates, norms = _step_inputs()
    hp = HParams()
    step = outer_step(updates, norms, SHAPES, hp, sorted(norms)[3])
    from validator.publish import robust_aggregate

    exact = {n: (t * hp.outer.lr).view(-1) for n, t in robust_aggregate(updates, norms, SHAPES, hp, sorted(norms)[3])}
    err = sum(float(((exact[n][step[n][0]] - step[n][1]).double() ** 2).sum()) for n in step)
    total = sum(float((t.double() ** 2).sum()) for t in exact.values())
    assert math.sqrt(err / total) < 0.02
    assert isinstance(step, CompactUpdate) and step.nbytes == touched_bytes(step, SHAPES)
