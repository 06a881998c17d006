"""Signed aggregates and checkpoints: exact application, tamper and forgery rejection."""

from __future__ import annotations

import pytest
import torch
from bittensor.sp_core import Keypair

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


def test_aggregate_round_trip() -> None:
    update = dense_to_update(_state(2))
    data = pack_aggregate(update, _meta(), VALIDATOR)
    meta, parsed = parse_aggregate(data, shapes=SHAPES, max_bytes=1 << 20, publisher=VALIDATOR.ss58_address)
    assert meta == _meta()
    for k in update:
        assert torch.equal(parsed[k][0], update[k][0]) and torch.equal(parsed[k][1], update[k][1])


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:100], "bad_header"),
        (lambda d: b"XXXX" + d[4:], "bad_magic"),
        (lambda d: d[:4] + b"\x09" + d[5:], "bad_version"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "bad_signature"),
        (lambda d: d[:5] + bytes(64) + d[69:], "bad_signature"),
    ],
)
def test_aggregate_tampering_rejected(mutate, reason: str) -> None:
    data = pack_aggregate(dense_to_update(_state(2)), _meta(), VALIDATOR)
    with pytest.raises(SyncError) as err:
        parse_aggregate(mutate(data), shapes=SHAPES, max_bytes=1 << 20)
    assert err.value.reason == reason


def test_aggregate_wrong_publisher_and_size() -> None:
    data = pack_aggregate(dense_to_update(_state(2)), _meta(validator=OTHER.ss58_address), OTHER)
    with pytest.raises(SyncError, match="wrong_publisher"):
        parse_aggregate(data, shapes=SHAPES, max_bytes=1 << 20, publisher=VALIDATOR.ss58_address)
    with pytest.raises(SyncError, match="too_large"):
        parse_aggregate(data, shapes=SHAPES, max_bytes=100)
    forged = pack_aggregate(dense_to_update(_state(2)), _meta(), OTHER)  # claims VALIDATOR, signed by OTHER
    with pytest.raises(SyncError, match="bad_signature"):
        parse_aggregate(forged, shapes=SHAPES, max_bytes=1 << 20)


def test_aggregate_content_checks() -> None:
    bad_index = {"w": (torch.tensor([0, 32]), torch.tensor([1.0, 2.0]))}
    with pytest.raises(SyncError, match="index_out_of_range"):
        parse_aggregate(pack_aggregate(bad_index, _meta(), VALIDATOR), shapes=SHAPES, max_bytes=1 << 20)
    nan = {"w": (torch.tensor([0]), torch.tensor([float("nan")]))}
    with pytest.raises(SyncError, match="not_finite"):
        parse_aggregate(pack_aggregate(nan, _meta(), VALIDATOR), shapes=SHAPES, max_bytes=1 << 20)
    extra = {"zzz": (torch.tensor([0]), torch.tensor([1.0]))}
    with pytest.raises(SyncError, match="unexpected_tensor"):
        parse_aggregate(pack_aggregate(extra, _meta(), VALIDATOR), shapes=SHAPES, max_bytes=1 << 20)


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
