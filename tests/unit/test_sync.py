"""Signed aggregates and checkpoints: exact application, the compact canonical code, tamper and forgery rejection.

The value code itself (quantisation, canonical form, hostile parts) is tested in ``test_compact.py``.
"""

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
        (lambda d: d[:4] + b"\x02" + d[5:], "bad_version"),  # nor the bf16 one
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
    with pytest.raises(ValueError, match="round_update"):
        pack_aggregate({"w": (torch.tensor([0]), torch.tensor([1.0 + 2**-12]))}, _meta(), VALIDATOR, shapes=SHAPES)
    with pytest.raises(ValueError, match="round_update"):  # bf16-exact, but 3 is not m x 5/64 for any m <= 64
        pack_aggregate({"w": (torch.tensor([0, 1]), torch.tensor([5.0, 3.0]))}, _meta(), VALIDATOR, shapes=SHAPES)
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
    # 1e-45 is under 2**-100: dropped. The block's scale is 3/64; 1.00024 / (3/64) = 21.3 -> 21.
    assert got["w"][0].tolist() == [3, 5] and got["w"][1].tolist() == [-3.0, 21 * 3 / 64]
    again = round_update(got)["w"]  # idempotent: a canonical step rounds to itself
    assert torch.equal(again[0], got["w"][0]) and torch.equal(again[1], got["w"][1])
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
        update = round_update({"t": (idx, torch.randn(n, generator=gen))})
        vals = update["t"][1]
        assert vals.numel() == n
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


def test_density_of_many_peers_costs_under_the_uploads() -> None:
    gen = torch.Generator().manual_seed(0)
    numel = 1 << 20
    idx = (torch.rand(numel, generator=gen) < 0.27).nonzero().view(-1)  # 20 peers at 1.56%, little overlap
    update = round_update({"t": (idx, torch.randn(idx.numel(), generator=gen))})
    data = pack_aggregate(update, _meta(), VALIDATOR, shapes={"t": (numel,)})
    per_coordinate = len(data) / idx.numel()
    # 1 bitmap bit per coordinate (3.7 per touched one) + 7 bits + a 16-bit scale per 64 values;
    # 20 uploads of 10 bits per kept value are 1.45 bytes per touched coordinate at this density.
    assert 1.35 < per_coordinate < 1.38 < 1.45


def _signed(tensors: dict[str, torch.Tensor], *, canonical: bool = True, **meta: object) -> bytes:
    """A correctly signed aggregate around arbitrary tensors (canonical header where the dtypes allow)."""
    fields = {k: json.dumps(v) for k, v in asdict(_meta(**meta)).items()}
    canonical = canonical and all(t.dtype in (torch.int64, torch.uint8, torch.bfloat16) for t in tensors.values())
    body = sync._canonical_safetensors(tensors, fields) if canonical else st_save(tensors, metadata=fields)
    return sync._seal(sync.AGGREGATE_MAGIC, sync.AGGREGATE_VERSION, sync._AGG_DOMAIN, body, VALIDATOR)


BF = torch.bfloat16
U8 = torch.uint8


def _codes(*fields: int) -> torch.Tensor:
    """7-bit fields packed little-endian, computed independently of the module under test."""
    word = sum(f << (7 * i) for i, f in enumerate(fields))
    return torch.tensor(list(word.to_bytes(-(-7 * len(fields) // 8), "little")), dtype=U8)


def _parts(name: str, pos: list[int], fields: list[int], scales: list[float], count: int | None = None
           ) -> dict[str, torch.Tensor]:
    """One tensor's four stored parts; field 63 is +64 x scale, 127 is -64 x scale, 31 is +32 x scale."""
    return {f"{name}.count": torch.tensor([len(fields) if count is None else count]),
            f"{name}.pos": torch.tensor(pos, dtype=U8), f"{name}.scale": torch.tensor(scales, dtype=BF),
            f"{name}.code": _codes(*fields)}


# "b" (8 elements) is a bitmap for any count; "w" (32) is Elias-Fano for 2 positions (L = 4: one
# byte of low bits, then 4 high bits). Both hold the values 2.0 and 1.0 (64 and 32 x 1/32).
B = _parts("b", [0b101], [63, 31], [1 / 32])
W = _parts("w", [0x53, 0b0011], [63, 31], [1 / 32])
_PADDED = _codes(63, 31)
_PADDED[1] |= 0x40  # 14 bits used of 16: bit 14 is padding


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        (B, None),
        (W, None),
        ({**B, "b.scale": torch.tensor([2.0**99], dtype=BF)}, None),  # the largest scales are fine
        ({**B, "b.scale": torch.tensor([2.0**-126], dtype=BF)}, None),  # and the smallest normal one
        (_parts("b", [0b101], [63], [1 / 32]), "count_mismatch"),
        ({**B, "b.pos": torch.tensor([1, 0], dtype=U8)}, "bad_positions"),
        ({**B, "b.scale": torch.tensor([1 / 32])}, "bad_dtype"),
        ({**B, "b.pos": torch.tensor([5], dtype=torch.int8)}, "bad_dtype"),
        ({**B, "b.count": torch.tensor([2], dtype=torch.int32)}, "bad_dtype"),
        ({**B, "b.count": torch.tensor([2, 2])}, "bad_shape"),
        ({**B, "b.count": torch.tensor([], dtype=torch.int64)}, "bad_shape"),
        ({**B, "b.pos": torch.tensor([[5]], dtype=U8)}, "bad_shape"),
        ({**B, "b.count": torch.tensor([0])}, "bad_count"),
        ({**B, "b.count": torch.tensor([-1])}, "bad_count"),
        ({**B, "b.count": torch.tensor([9])}, "bad_count"),  # more than the tensor's 8 elements
        ({**B, "b.count": torch.tensor([2**62])}, "bad_count"),  # nothing is sized from it first
        ({**B, "b.scale": torch.tensor([1 / 32, 1 / 32], dtype=BF)}, "bad_values"),
        ({**B, "b.code": torch.tensor([63], dtype=U8)}, "bad_values"),  # truncated
        ({**B, "b.code": torch.tensor([63, 15, 0], dtype=U8)}, "bad_values"),  # a byte too many
        ({**B, "b.scale": torch.tensor([float("inf")], dtype=BF)}, "not_finite"),
        ({**B, "b.scale": torch.tensor([float("-inf")], dtype=BF)}, "not_finite"),
        ({**B, "b.scale": torch.tensor([float("nan")], dtype=BF)}, "not_finite"),
        ({**B, "b.scale": torch.tensor([0.0], dtype=BF)}, "bad_scale"),
        ({**B, "b.scale": torch.tensor([-0.0], dtype=BF)}, "bad_scale"),
        ({**B, "b.scale": torch.tensor([-1 / 32], dtype=BF)}, "bad_scale"),
        ({**B, "b.scale": torch.tensor([1e-39], dtype=BF)}, "bad_scale"),  # subnormal
        ({**B, "b.scale": torch.tensor([2.0**100], dtype=BF)}, "bad_scale"),
        ({**B, "b.code": _PADDED}, "padding_bits_set"),
        (_parts("b", [0b101], [62, 31], [1 / 32]), "scale_not_canonical"),  # no m = 64 in the block
        ({k: v for k, v in B.items() if k != "b.code"}, "bad_tensor"),
        ({"b.count": B["b.count"]}, "bad_tensor"),
        ({**B, "b.val": torch.tensor([1.0], dtype=BF)}, "unexpected_tensor"),  # a version-2 part
        (_parts("x", [1], [63], [1.0]), "unexpected_tensor"),
        ({**W, "w.pos": torch.tensor([0x35, 0b0011], dtype=U8)}, "index_not_increasing"),  # same high part, lows 5, 3
        ({**W, "w.pos": torch.tensor([0x53, 0b1001], dtype=U8)}, "index_out_of_range"),  # 2 * 16 + 5 = 37 >= 32
        ({**W, "w.pos": torch.tensor([0x53, 0b0111], dtype=U8)}, "count_mismatch"),
        ({**W, "w.pos": torch.tensor([0x53, 0b10011], dtype=U8)}, "padding_bits_set"),  # high stream: 4 bits
    ],
)
def test_aggregate_content_checks(tensors: dict[str, torch.Tensor], reason: str | None) -> None:
    if reason is None:
        parse_aggregate(_signed(tensors), shapes=SHAPES, max_bytes=1 << 20)
        return
    with pytest.raises(SyncError) as err:
        parse_aggregate(_signed(tensors), shapes=SHAPES, max_bytes=1 << 20)
    assert err.value.reason == reason


def test_content_checks_decode_as_written() -> None:
    _, parsed = parse_aggregate(_signed({**B, **W}), shapes=SHAPES, max_bytes=1 << 20)
    assert parsed["b"][0].tolist() == [0, 2] and parsed["w"][0].tolist() == [3, 5]
    assert parsed["b"][1].tolist() == parsed["w"][1].tolist() == [2.0, 1.0]


def test_only_the_canonical_container_is_accepted() -> None:
    tensors = {**B, **W}
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
    _, parsed = parse_aggregate(_signed(_parts("c", [0b10001], [63, 31], [1 / 32])), shapes=shapes,
                                max_bytes=1 << 20)
    assert parsed["c"][0].tolist() == [0, 4]
    with pytest.raises(SyncError, match="padding_bits_set"):
        parse_aggregate(_signed(_parts("c", [0b100001], [63, 31], [1 / 32])), shapes=shapes, max_bytes=1 << 20)


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
