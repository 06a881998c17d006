"""Fuzz the delta parser with thousands of hostile payloads (protocol.wire.parse_delta).

Run: ``pytest tests/unit/test_wire_fuzz.py -q``. Every payload here is invalid by
construction: random bytes, truncations at every offset, bit flips, oversized input,
forged or stale signatures, mutated header JSON and codec corruptions re-signed with a
valid key (so they get past the signature). The parser must reject all of them, only with
WireError, always with a reason from REASONS. Seeded, so failures reproduce.
"""

from __future__ import annotations

import functools
import json
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from protocol.wire import PREFIX_BYTES, REASONS, WireError
from tests.unit.test_wire import (
    BOB,
    CFG,
    MAX_BYTES,
    SHAPES,
    assemble,
    make_blob,
    parse,
    resign,
    sign,
    split,
    tensor_bytes,
)

SEED = 20260601
GOOD = make_blob(seed=5)
HEADER, DATA = split(GOOD)
TENSORS = sorted(name for name in HEADER if name != "__metadata__")


def random_bytes(rng: random.Random) -> Iterator[bytes]:
    for _ in range(300):
        yield rng.randbytes(rng.choice([0, 1, 4, 5, 68, 69, 77, 200, 1000]))
    for _ in range(100):  # valid prefix, garbage after
        yield GOOD[: rng.choice([4, 5, PREFIX_BYTES, PREFIX_BYTES + 8])] + rng.randbytes(rng.randint(0, 600))


def truncations(rng: random.Random) -> Iterator[bytes]:
    yield from (GOOD[:n] for n in range(len(GOOD)))  # every prefix, through every region


def bit_flips(rng: random.Random) -> Iterator[bytes]:
    for _ in range(800):
        blob = bytearray(GOOD)
        for _ in range(rng.choice([1, 1, 2, 8])):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        yield bytes(blob)


def forged_signatures(rng: random.Random) -> Iterator[bytes]:
    body = GOOD[PREFIX_BYTES:]
    for i in range(60):
        yield sign(body, BOB)  # another key signs Alice's upload
        yield GOOD[:5] + rng.randbytes(64) + body
        # Metadata edited after signing: the old signature on a new body.
        window = str(i + 100)
        edited = resign(GOOD, lambda h, d, w=window: h["__metadata__"].update(window=w))
        yield GOOD[:PREFIX_BYTES] + edited[PREFIX_BYTES:]
        # Valid signature from Bob while the metadata claims Alice.
        yield resign(GOOD, lambda h, d: None, keypair=BOB)


HEADER_MUTATIONS: list[Callable[[dict[str, Any], random.Random, str], None]] = [
    lambda h, rng, t: h[t].update(shape=[2**62, *h[t]["shape"][1:]]),
    lambda h, rng, t: h[t].update(shape=[rng.randint(-5, 10**6)]),
    lambda h, rng, t: h[t].update(shape=[]),
    lambda h, rng, t: h[t].update(shape="4"),
    lambda h, rng, t: h[t].update(dtype=rng.choice(["F16", "I8", "F64", "BOOL", "U16", "", "u8", 8])),
    lambda h, rng, t: h[t].update(data_offsets=[-rng.randint(1, 100), h[t]["data_offsets"][1]]),
    lambda h, rng, t: h[t].update(data_offsets=[h[t]["data_offsets"][0], 2**63]),
    lambda h, rng, t: h[t].update(
        data_offsets=list(h[rng.choice([o for o in TENSORS if o != t])]["data_offsets"])
    ),
    lambda h, rng, t: h[t].update(data_offsets=list(reversed(h[t]["data_offsets"]))),
    lambda h, rng, t: h[t].update(data_offsets=[x + 1 for x in h[t]["data_offsets"]]),
    lambda h, rng, t: h[t].update(data_offsets=[str(x) for x in h[t]["data_offsets"]]),
    lambda h, rng, t: h[t].update(data_offsets=None),
    lambda h, rng, t: h[t].pop(rng.choice(["dtype", "shape", "data_offsets"])),
    lambda h, rng, t: h[t].update(extra=[1]),
    lambda h, rng, t: h.pop(t),
    lambda h, rng, t: h.__setitem__(t + "x", dict(h[t])),
    lambda h, rng, t: h.__setitem__("extra.idx", {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}),
    lambda h, rng, t: h.__setitem__(t, rng.choice([None, 1, "x", [], [1, 2]])),
    lambda h, rng, t: h.__setitem__("__metadata__", rng.choice([None, [], "x", {"window": 1}])),
    lambda h, rng, t: h["__metadata__"].update(
        {rng.choice(sorted(h["__metadata__"])): rng.choice(["", "-1", "01", "1e3", " 1", "x" * 70, "0x10"])}
    ),
    lambda h, rng, t: h["__metadata__"].pop(rng.choice(sorted(h["__metadata__"]))),
    lambda h, rng, t: h["__metadata__"].update(window=7),
    lambda h, rng, t: h["__metadata__"].update(
        hotkey=rng.choice(["", "5" * 48, BOB.ss58_address[:-2], "\u00e9" * 48])
    ),
]


def header_mutations(rng: random.Random) -> Iterator[bytes]:
    for _ in range(700):
        mutation = rng.choice(HEADER_MUTATIONS)
        target = rng.choice(TENSORS)
        yield resign(GOOD, lambda h, d, m=mutation, t=target: m(h, rng, t))
    for raw in (
        b"",
        b"{",
        b"null",
        b"[]",
        b"{}",
        b'{"a":1e999}',
        b"{" * 3000,
        b'{"x":"\\ud800"}',
        b"\x00" * 16,
    ):
        yield sign(assemble(raw, DATA))
    for length in (0, 1, 7, 2**20 + 1, 2**32, 2**64 - 1):
        yield sign(assemble(json.dumps(HEADER).encode(), DATA, header_len=length))


def _corrupt_idx(h: dict[str, Any], d: bytearray, rng: random.Random) -> None:
    """Break an index stream so the payload is invalid whatever the random choices."""
    name = rng.choice([t for t in TENSORS if t.endswith(".idx")])
    view = tensor_bytes(h, d, name)
    row = rng.randrange(len(view) // CFG.idx_bytes) * CFG.idx_bytes
    high = slice(row + CFG.low_bytes, row + CFG.idx_bytes)
    bitmap = int.from_bytes(view[high], "little")
    kind = rng.randrange(4)
    if kind == 0:  # wrong number of ones in the high bitmap
        ones = [i for i in range(CFG.high_bits) if bitmap >> i & 1]
        bitmap &= ~(1 << rng.choice(ones))
    elif kind == 1:  # all high parts 0 with equal low bits: duplicate offsets
        bitmap = (1 << CFG.topk) - 1
        view[row : row + CFG.low_bytes] = bytes(CFG.low_bytes)
    elif kind == 2:  # last high part = chunk >> L: offset >= chunk
        bitmap = ((1 << CFG.topk) - 1) << (CFG.high_bits - CFG.topk)
    else:  # a padding bit of the low stream
        view[row + CFG.low_bytes - 1] |= 0x80
    view[high] = bitmap.to_bytes(CFG.high_bytes, "little")


def codec_corruptions(rng: random.Random) -> Iterator[bytes]:
    bad_floats = [float("nan"), float("inf"), float("-inf"), 1e5, -3e38]
    for _ in range(300):
        value = rng.choice(bad_floats)
        name = rng.choice([t for t in TENSORS if t.endswith(".lut")])
        entry = rng.randrange(4)
        yield resign(
            GOOD,
            lambda h, d, n=name, e=entry, v=value: tensor_bytes(h, d, n).__setitem__(
                slice(4 * e, 4 * e + 4), struct.pack("<f", v)
            ),
        )
    for _ in range(400):
        yield resign(GOOD, lambda h, d: _corrupt_idx(h, d, rng))


def oversized(rng: random.Random) -> Iterator[bytes]:
    for _ in range(20):
        yield GOOD + rng.randbytes(MAX_BYTES)


FAMILIES = [
    random_bytes,
    truncations,
    bit_flips,
    forged_signatures,
    header_mutations,
    codec_corruptions,
    oversized,
]


def _reject(blob: bytes) -> str:
    try:
        parse(blob)
    except WireError as err:
        return err.reason
    raise AssertionError("hostile payload accepted")


@functools.cache
def rejections(family: Callable[[random.Random], Iterator[bytes]]) -> Counter[str]:
    """Reason counts over a family's payloads (computed once per session)."""
    rng = random.Random(f"{SEED}-{family.__name__}")
    return Counter(_reject(blob) for blob in family(rng))


def test_good_payload_is_accepted() -> None:
    assert set(parse(GOOD).encoded) == set(SHAPES)


@pytest.mark.parametrize("family", FAMILIES, ids=[f.__name__ for f in FAMILIES])
def test_fuzz_family_is_rejected(family: Callable[[random.Random], Iterator[bytes]]) -> None:
    reasons = rejections(family)
    assert set(reasons) <= REASONS
    assert sum(reasons.values()) >= 20


def test_fuzz_volume_and_spread() -> None:
    """The families together make thousands of cases and reach nearly every reason code."""
    reasons: Counter[str] = sum((rejections(family) for family in FAMILIES), Counter())
    assert sum(reasons.values()) >= 3000
    expectation_only = {"window_mismatch", "hotkey_mismatch", "base_model_mismatch", "spec_version_mismatch"}
    assert set(reasons) == REASONS - expectation_only, REASONS - expectation_only - set(reasons)
