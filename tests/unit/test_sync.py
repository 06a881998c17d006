"""Signed aggregates and checkpoints: exact application, the compact canonical code, tamper and forgery rejection."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from bittensor.sp_core import Keypair
from safetensors.torch import save as st_save

from protocol import sync
from protocol.compact import BITMAP, ELIAS_FANO, position_code
from protocol.sync import (
    AggregateMeta,
    CheckpointMeta,
    SyncError,
    apply_update,
    dense_to_update,
    pack_aggregate,
    pack_checkpoint,
    parse_aggregate,
    parse_checkpoint,
    revert_update,
    round_update,
)

SHAPES = {"w": (4, 8), "b": (8,)}
VALIDATOR = Keypair.create_from_uri("//Validator")
OTHER = Keypair.create_from_uri("//Mallory")


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}


def _meta(**kw: object) -> AggregateMeta:
    base = dict(window=3, base_model_hash="a" * 64, result_model_hash="b" * 64,
                validator=VALIDATOR.ss58_address, spec_version=1, peers=["x", "y"])
    base.update(kw)
    return AggregateMeta(**base)  # type: ignore[arg-type]


def test_sparse_update_applies_exactly() -> None:
    state, dense = _state(0), _state(1)
    dense["w"][0, :4] = 0.0
    expected = {k: v - 0.5 * dense[k] for k, v in state.items()}
    update = dense_to_update(dense, lr=0.5)
    assert update["w"][0].numel() == 28
    apply_update(state, update)
    for k in state:
        assert torch.equal(state[k], expected[k])


def _canonical(seed: int = 2) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return round_update(dense_to_update(_state(seed)))


def test_aggregate_round_trip() -> None:
    update = _canonical()
    data = pack_aggregate(update, _meta(), VALIDATOR, shapes=SHAPES)
    meta, parsed = parse_aggregate(data, shapes=SHAPES, max_bytes=1 << 20, publisher=VALIDATOR.ss58_address)
    assert meta == _meta() and set(parsed) == set(update)
    for k in update:
        assert torch.equal(parsed[k][0], update[k][0]) and torch.equal(parsed[k][1], update[k][1])


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:100], "bad_header"),
        (lambda d: b"XXXX" + d[4:], "bad_magic"),
        (lambda d: d[:4] + b"\x09" + d[5:], "bad_version"),
        (lambda d: d[:4] + b"\x01" + d[5:], "bad_version"),  # the int64 + fp32 format is not read
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "bad_signature"),
        (lambda d: d[:5] + bytes(64) + d[69:], "bad_signature"),
    ],
)
def test_aggregate_tampering_rejected(mutate, reason: str) -> None:
    data = pack_aggregate(_canonical(), _meta(), VALIDATOR, shapes=SHAPES)
    with pytest.raises(SyncError) as err:
        parse_aggregate(mutate(data), shapes=SHAPES, max_bytes=1 << 20)
    assert err.value.reason == reason


def test_aggregate_wrong_publisher_and_size() -> None:
    data = pack_aggregate(_canonical(), _meta(validator=OTHER.ss58_address), OTHER, shapes=SHAPES)
    with pytest.raises(SyncError, match="wrong_publisher"):
        parse_aggregate(data, shapes=SHAPES, max_bytes=1 << 20, publisher=VALIDATOR.ss58_address)
    with pytest.raises(SyncError, match="too_large"):
        parse_aggregate(data, shapes=SHAPES, max_bytes=100)
    forged = pack_aggregate(_canonical(), _meta(), OTHER, shapes=SHAPES)  # claims VALIDATOR, signed by OTHER
    with pytest.raises(SyncError, match="bad_signature"):
        parse_aggregate(forged, shapes=SHAPES, max_bytes=1 << 20)


def test_pack_refuses_what_is_not_canonical() -> None:
    with pytest.raises(ValueError, match="bf16"):
        pack_aggregate({"w": (torch.tensor([0]), torch.tensor([1.0 + 2**-12]))}, _meta(), VALIDATOR, shapes=SHAPES)
    with pytest.raises(ValueError, match="increasing"):
        pack_aggregate({"w": (torch.tensor([3, 1]), torch.tensor([1.0, 2.0]))}, _meta(), VALIDATOR, shapes=SHAPES)
    with pytest.raises(ValueError, match="inside"):
        pack_aggregate({"w": (torch.tensor([0, 32]), torch.tensor([1.0, 2.0]))}, _meta(), VALIDATOR, shapes=SHAPES)
    with pytest.raises(ValueError, match="zero_value"):
        pack_aggregate({"w": (torch.tensor([0]), torch.tensor([0.0]))}, _meta(), VALIDATOR, shapes=SHAPES)
    with pytest.raises(ValueError, match="shape"):
        pack_aggregate({"w": (torch.tensor([0]), torch.tensor([1.0]))}, _meta(), VALIDATOR)
    assert parse_aggregate(pack_aggregate({}, _meta(), VALIDATOR), shapes=SHAPES, max_bytes=1 << 20)[1] == {}


def test_round_update_rounds_sorts_and_drops_zeros() -> None:
    got = round_update({"w": (torch.tensor([5, 1, 3]), torch.tensor([1.0 + 2**-12, 1e-45, -3.0]))})
    assert got["w"][0].tolist() == [3, 5] and got["w"][1].tolist() == [-3.0, 1.0]  # 1e-45 rounds to 0 in bf16
    with pytest.raises(ValueError, match="twice"):
        round_update({"w": (torch.tensor([2, 2]), torch.tensor([1.0, 1.0]))})
    assert round_update({"w": (torch.tensor([1]), torch.tensor([0.0]))}) == {}


def test_apply_and_revert_are_exact() -> None:
    state, update = _state(5), _canonical(6)
    before = {k: v.clone() for k, v in state.items()}
    data = pack_aggregate(update, _meta(), VALIDATOR, shapes=SHAPES)
    _, parsed = parse_aggregate(data, shapes=SHAPES, max_bytes=1 << 20)
    undo: dict[str, torch.Tensor] = {}
    apply_update(state, parsed, undo=undo)
    for k, (idx, val) in update.items():
        want = before[k].clone().view(-1)
        want[idx] -= val
        assert torch.equal(state[k].view(-1), want)
    revert_update(state, parsed, undo)
    assert all(torch.equal(state[k], before[k]) for k in state)


@pytest.mark.parametrize("numel", [1, 5, 8, 1000, 4097, 100_003])
def test_both_position_codes_round_trip_and_the_smaller_is_chosen(numel: int) -> None:
    gen = torch.Generator().manual_seed(numel)
    shapes = {"t": (numel,)}
    seen = set()
    for n in sorted({min(numel, c) for c in (1, 2, numel // 64, numel // 8, numel // 4, numel // 2, numel) if c}):
        idx = torch.randperm(numel, generator=gen)[:n].sort().values
        vals = torch.randn(n, generator=gen).to(torch.bfloat16).float()
        vals[vals == 0] = 1.0
        update = {"t": (idx, vals)}
        data = pack_aggregate(update, _meta(), VALIDATOR, shapes=shapes)
        _, parsed = parse_aggregate(data, shapes=shapes, max_bytes=1 << 24)
        assert torch.equal(parsed["t"][0], idx) and torch.equal(parsed["t"][1], vals)
        code, nbytes = position_code(n, numel)
        assert parsed.tensors["t"].positions.numel() == nbytes == min(position_code_sizes(n, numel))
        assert pack_aggregate(update, _meta(), VALIDATOR, shapes=shapes)[69:] == data[69:]  # deterministic
        seen.add(code)
    if numel >= 1000:
        assert seen == {BITMAP, ELIAS_FANO}


def position_code_sizes(n: int, numel: int) -> tuple[int, int]:
    """(bitmap, Elias-Fano) bytes, computed independently of the module under test."""
    low = (numel // n).bit_length() - 1
    return -(-numel // 8), -(-n * low // 8) + -(-(n + ((numel - 1) >> low) + 1) // 8)


def test_density_of_many_peers_costs_under_a_quarter_of_int64_fp32() -> None:
    gen = torch.Generator().manual_seed(0)
    numel = 1 << 20
    idx = (torch.rand(numel, generator=gen) < 0.27).nonzero().view(-1)  # 20 peers at 1.56%, little overlap
    update = round_update({"t": (idx, torch.randn(idx.numel(), generator=gen))})
    data = pack_aggregate(update, _meta(), VALIDATOR, shapes={"t": (numel,)})
    per_coordinate = len(data) / idx.numel()
    assert per_coordinate < 2.5 and per_coordinate < 12 / 4


def _signed(tensors: dict[str, torch.Tensor], *, canonical: bool = True, **meta: object) -> bytes:
    """A correctly signed aggregate around arbitrary tensors (canonical header where the dtypes allow)."""
    fields = {k: json.dumps(v) for k, v in asdict(_meta(**meta)).items()}
    canonical = canonical and all(t.dtype in (torch.uint8, torch.bfloat16) for t in tensors.values())
    body = sync._canonical_safetensors(tensors, fields) if canonical else st_save(tensors, metadata=fields)
    return sync._seal(sync.AGGREGATE_MAGIC, sync.AGGREGATE_VERSION, sync._AGG_DOMAIN, body, VALIDATOR)


BF = torch.bfloat16
U8 = torch.uint8


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        # "b" (8 elements) is a bitmap for any count; "w" (32) is Elias-Fano for 2 positions
        # (L = 4: one byte of low bits, then 4 high bits).
        ({"b.pos": torch.tensor([0b101], dtype=U8), "b.val": torch.tensor([1.0, 2.0], dtype=BF)}, None),
        ({"w.pos": torch.tensor([0x53, 0b0011], dtype=U8), "w.val": torch.tensor([1.0, 2.0], dtype=BF)}, None),
        ({"b.pos": torch.tensor([0b101], dtype=U8), "b.val": torch.tensor([1.0], dtype=BF)}, "count_mismatch"),
        ({"b.pos": torch.tensor([1, 0], dtype=U8), "b.val": torch.tensor([1.0], dtype=BF)}, "bad_positions"),
        ({"b.pos": torch.tensor([1], dtype=U8), "b.val": torch.tensor([1.0])}, "bad_dtype"),
        ({"b.pos": torch.tensor([1], dtype=torch.int8), "b.val": torch.tensor([1.0], dtype=BF)}, "bad_dtype"),
        ({"b.pos": torch.tensor([], dtype=U8), "b.val": torch.tensor([], dtype=BF)}, "bad_shape"),
        ({"b.pos": torch.tensor([[1]], dtype=U8), "b.val": torch.tensor([1.0], dtype=BF)}, "bad_shape"),
        ({"b.pos": torch.tensor([1], dtype=U8), "b.val": torch.tensor([float("inf")], dtype=BF)}, "not_finite"),
        ({"b.pos": torch.tensor([1], dtype=U8), "b.val": torch.tensor([float("nan")], dtype=BF)}, "not_finite"),
        ({"b.pos": torch.tensor([1], dtype=U8), "b.val": torch.tensor([-0.0], dtype=BF)}, "zero_value"),
        ({"b.pos": torch.tensor([1], dtype=U8)}, "bad_tensor"),
        ({"b.val": torch.tensor([1.0], dtype=BF)}, "bad_tensor"),
        ({"x.pos": torch.tensor([1], dtype=U8), "x.val": torch.tensor([1.0], dtype=BF)}, "unexpected_tensor"),
        ({"w.pos": torch.tensor([0x35, 0b0011], dtype=U8), "w.val": torch.tensor([1.0, 2.0], dtype=BF)},
         "index_not_increasing"),  # same high part, lows 5 then 3
        ({"w.pos": torch.tensor([0x53, 0b1001], dtype=U8), "w.val": torch.tensor([1.0, 2.0], dtype=BF)},
         "index_out_of_range"),  # second high part 3 - 1 = 2: position 2 * 16 + 5 = 37 >= 32
        ({"w.pos": torch.tensor([0x53, 0b0111], dtype=U8), "w.val": torch.tensor([1.0, 2.0], dtype=BF)},
         "count_mismatch"),
        ({"w.pos": torch.tensor([0x53, 0b10011], dtype=U8), "w.val": torch.tensor([1.0, 2.0], dtype=BF)},
         "padding_bits_set"),  # the high stream has 4 bits; bit 4 is padding
    ],
)
def test_aggregate_content_checks(tensors: dict[str, torch.Tensor], reason: str | None) -> None:
    if reason is None:
        parse_aggregate(_signed(tensors), shapes=SHAPES, max_bytes=1 << 20)
        return
    with pytest.raises(SyncError) as err:
        parse_aggregate(_signed(tensors), shapes=SHAPES, max_bytes=1 << 20)
    assert err.value.reason == reason


def test_only_the_canonical_container_is_accepted() -> None:
    tensors = {"b.pos": torch.tensor([0b101], dtype=U8), "b.val": torch.tensor([1.0, 2.0], dtype=BF),
               "w.pos": torch.tensor([0x53, 0b0011], dtype=U8), "w.val": torch.tensor([1.0, 2.0], dtype=BF)}
    parse_aggregate(_signed(tensors), shapes=SHAPES, max_bytes=1 << 20)
    with pytest.raises(SyncError, match="not_canonical"):  # safetensors' own writer: another key order
        parse_aggregate(_signed(tensors, canonical=False), shapes=SHAPES, max_bytes=1 << 20)
    base = {k: json.dumps(v) for k, v in asdict(_meta()).items()}
    for fields, reason in (({**base, "peers": '["x",  "y"]'}, "not_canonical"),
                           ({**base, "window": "3.0"}, "bad_metadata"), ({**base, "null": "0"}, "bad_metadata")):
        body = sync._canonical_safetensors(tensors, fields)
        data = sync._seal(sync.AGGREGATE_MAGIC, sync.AGGREGATE_VERSION, sync._AGG_DOMAIN, body, VALIDATOR)
        with pytest.raises(SyncError) as err:
            parse_aggregate(data, shapes=SHAPES, max_bytes=1 << 20)
        assert err.value.reason == reason


def test_bitmap_padding_bits_must_be_zero() -> None:
    shapes = {"c": (5,)}  # one byte, 3 padding bits
    ok = {"c.pos": torch.tensor([0b10001], dtype=U8), "c.val": torch.tensor([1.0, 2.0], dtype=BF)}
    _, parsed = parse_aggregate(_signed(ok), shapes=shapes, max_bytes=1 << 20)
    assert parsed["c"][0].tolist() == [0, 4]
    bad = {"c.pos": torch.tensor([0b100001], dtype=U8), "c.val": torch.tensor([1.0, 2.0], dtype=BF)}
    with pytest.raises(SyncError, match="padding_bits_set"):
        parse_aggregate(_signed(bad), shapes=shapes, max_bytes=1 << 20)


def test_checkpoint_round_trip_and_checks() -> None:
    state = _state(4)
    meta = CheckpointMeta(window=10, model_hash="c" * 64, validator=VALIDATOR.ss58_address, spec_version=1)
    data = pack_checkpoint(state, meta, VALIDATOR)
    got_meta, got = parse_checkpoint(data, shapes=SHAPES, max_bytes=1 << 20, publisher=VALIDATOR.ss58_address)
    assert got_meta == meta and all(torch.equal(got[k], state[k]) for k in state)
    with pytest.raises(SyncError, match="bad_tensor"):
        parse_checkpoint(data, shapes={"w": (4, 8)}, max_bytes=1 << 20)
    with pytest.raises(SyncError, match="bad_shape"):
        parse_checkpoint(data, shapes={"w": (8, 4), "b": (8,)}, max_bytes=1 << 20)


def test_apply_into_a_kept_arena_and_its_size_check() -> None:
    state, update = _state(7), _canonical(8)
    before = {k: v.clone() for k, v in state.items()}
    _, parsed = parse_aggregate(pack_aggregate(update, _meta(), VALIDATOR, shapes=SHAPES), shapes=SHAPES,
                                max_bytes=1 << 20)
    with pytest.raises(ValueError, match="arena"):
        apply_update(state, parsed, undo={}, arena=torch.empty(parsed.touched - 1))
    arena, undo = torch.empty(parsed.touched + 5), {}
    apply_update(state, parsed, undo=undo, arena=arena)
    assert sum(t.numel() for t in undo.values()) == parsed.touched
    revert_update(state, parsed, undo)
    assert all(torch.equal(state[k], before[k]) for k in state)
