"""The signed delta wire format (protocol.wire): round trip, and one crafted payload per reason code.

Run: ``pytest tests/unit/test_wire.py -q``. The helpers here (``split``, ``assemble``, ``sign``)
build hostile payloads that are validly signed, so they reach the checks behind the
signature; tests/unit/test_wire_fuzz.py reuses them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import pytest
import safetensors.torch
import torch
from bittensor.sp_core import Keypair, ss58_decode, ss58_encode

from protocol.codec import CodecConfig, decode_tensor, encode
from protocol.wire import (
    FORMAT_VERSION,
    MAGIC,
    PREFIX_BYTES,
    REASONS,
    DeltaMeta,
    ParsedDelta,
    WireError,
    pack_delta,
    parse_delta,
    signing_message,
)

# L = 5: idx = 4 low bytes (30 bits used) + 2 bitmap bytes (14 bits used), codes = 2 bytes (12 bits used),
# so every stream has padding bits to abuse.
CFG = CodecConfig(chunk=256, topk=6)
SHAPES: dict[str, tuple[int, ...]] = {"w": (24, 40), "b": (40,), "e": (3, 5, 7)}
MAX_BYTES = 1 << 16
ALICE = Keypair.create_from_uri("//Alice")
BOB = Keypair.create_from_uri("//Bob")
BASE_HASH = "0123456789abcdef" * 4
META = DeltaMeta(window=7, hotkey=ALICE.ss58_address, base_model_hash=BASE_HASH, spec_version=1)


def make_blob(seed: int = 0, meta: DeltaMeta = META, keypair: Keypair = ALICE) -> bytes:
    g = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}
    return pack_delta(encode(state, CFG), meta, CFG, keypair)


def parse(blob: bytes, **kw: Any) -> ParsedDelta:
    return parse_delta(blob, expected_shapes=SHAPES, cfg=CFG, max_bytes=kw.pop("max_bytes", MAX_BYTES), **kw)


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """Header (as a dict) and data buffer of a well-formed blob."""
    body = blob[PREFIX_BYTES:]
    (n,) = struct.unpack("<Q", body[:8])
    return json.loads(body[8 : 8 + n]), body[8 + n :]


def assemble(header: dict[str, Any] | bytes, data: bytes, header_len: int | None = None) -> bytes:
    """safetensors bytes from a header (dict or raw JSON bytes) and a data buffer."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


def sign(body: bytes, keypair: Keypair = ALICE, version: int = FORMAT_VERSION) -> bytes:
    return MAGIC + bytes([version]) + keypair.sign(signing_message(body)) + body


def resign(blob: bytes, edit: Callable[[dict[str, Any], bytearray], Any], keypair: Keypair = ALICE) -> bytes:
    """Apply ``edit(header, data)`` in place (its return value is ignored) and sign again."""
    header, data = split(blob)
    buf = bytearray(data)
    edit(header, buf)
    return sign(assemble(header, bytes(buf)), keypair)


def tensor_bytes(header: dict[str, Any], data: bytearray, name: str) -> memoryview:
    begin, end = header[name]["data_offsets"]
    return memoryview(data)[begin:end]


def set_lut(value: float) -> Callable[[dict[str, Any], bytearray], None]:
    def edit(header: dict[str, Any], data: bytearray) -> None:
        tensor_bytes(header, data, "w.lut")[4:8] = struct.pack("<f", value)

    return edit


def set_idx_row(row: int, values: bytes) -> Callable[[dict[str, Any], bytearray], None]:
    def edit(header: dict[str, Any], data: bytearray) -> None:
        tensor_bytes(header, data, "w.idx")[row * CFG.idx_bytes : (row + 1) * CFG.idx_bytes] = values

    return edit


def offsets_row(offsets: list[int]) -> bytes:
    """EF bytes of one chunk's offsets, built independently of the codec (sorted or not)."""
    low_bits = CFG.low_bits
    low = sum((o & ((1 << low_bits) - 1)) << (i * low_bits) for i, o in enumerate(offsets))
    high = sum(1 << ((o >> low_bits) + i) for i, o in enumerate(offsets))
    return low.to_bytes(CFG.low_bytes, "little") + high.to_bytes(CFG.high_bytes, "little")


def set_meta(**changes: str) -> Callable[[dict[str, Any], bytearray], None]:
    def edit(header: dict[str, Any], data: bytearray) -> None:
        for key, value in changes.items():
            if value is None:
                del header["__metadata__"][key]
            else:
                header["__metadata__"][key] = value

    return edit


def shift_offsets(name: str, delta_begin: int, delta_end: int) -> Callable[[dict[str, Any], bytearray], None]:
    def edit(header: dict[str, Any], data: bytearray) -> None:
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin + delta_begin, end + delta_end]

    return edit


# ----------------------------------------------------------------------------- round trip


def test_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}
    encoded = encode(state, CFG)
    blob = pack_delta(encoded, META, CFG, ALICE)
    parsed = parse(
        blob,
        expected={"window": 7, "hotkey": ALICE.ss58_address, "base_model_hash": BASE_HASH, "spec_version": 1},
    )
    assert parsed.meta == META
    assert parsed.size == len(blob)
    assert len(parsed.payload_hash) == 64 and parsed.signature == blob[5:69]
    for name in SHAPES:
        assert parsed.encoded[name].shape == SHAPES[name]
        assert torch.equal(decode_tensor(parsed.encoded[name], CFG), decode_tensor(encoded[name], CFG))
    # The signed body is deterministic (sr25519 signatures themselves are randomised).
    assert make_blob()[PREFIX_BYTES:] == make_blob()[PREFIX_BYTES:]
    assert parse(make_blob(seed=1)).payload_hash != parsed.payload_hash


def test_body_is_plain_safetensors() -> None:
    loaded = safetensors.torch.load(GOOD[PREFIX_BYTES:])
    header, _ = split(GOOD)
    assert set(loaded) == set(header) - {"__metadata__"}
    assert loaded["w.lut"].dtype == torch.float32 and loaded["w.idx"].shape == (4, CFG.idx_bytes)


def test_payload_hash_binds_window_and_hotkey() -> None:
    other_window = make_blob(meta=DeltaMeta(8, ALICE.ss58_address, BASE_HASH, 1))
    assert parse(other_window).payload_hash != parse(make_blob()).payload_hash
    # Bob re-signing Alice's tensors under his own hotkey is a different payload with a valid signature;
    # its tensors are identical, which is what copy detection looks at.
    bob = make_blob(meta=DeltaMeta(7, BOB.ss58_address, BASE_HASH, 1), keypair=BOB)
    assert parse(bob).meta.hotkey == BOB.ss58_address


def test_pack_refuses_bad_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    encoded = encode({name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}, CFG)
    with pytest.raises(ValueError, match="signing keypair"):
        pack_delta(encoded, META, CFG, BOB)
    with pytest.raises(ValueError, match="base_model_hash"):
        pack_delta(encoded, DeltaMeta(7, ALICE.ss58_address, "XYZ", 1), CFG, ALICE)
    with pytest.raises(ValueError, match="window"):
        pack_delta(encoded, DeltaMeta(-1, ALICE.ss58_address, BASE_HASH, 1), CFG, ALICE)
    encoded["w"].lut[0] = float("nan")
    with pytest.raises(ValueError, match="lut_not_finite"):
        pack_delta(encoded, META, CFG, ALICE)


def test_unknown_expectation_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown expectation"):
        parse(make_blob(), expected={"windw": 7})


def test_wire_error_requires_a_known_reason() -> None:
    with pytest.raises(ValueError):
        WireError("no_such_reason")
    assert WireError("bad_magic", "x").reason == "bad_magic"


# ----------------------------------------------------------------------------- one payload per reason

GOOD = make_blob()
_FORMAT0_ALICE = ss58_encode(ss58_decode(ALICE.ss58_address), 0)


def _header_edit(edit: Callable[[dict[str, Any]], Any]) -> bytes:
    return resign(GOOD, lambda h, d: edit(h))


def _raw_header(raw: bytes, header_len: int | None = None) -> bytes:
    return sign(assemble(raw, split(GOOD)[1], header_len))


CRAFTED: list[tuple[str, Callable[[], bytes], dict[str, Any]]] = [
    ("too_large", lambda: GOOD, {"max_bytes": len(GOOD) - 1}),
    ("bad_magic", lambda: b"", {}),
    ("bad_magic", lambda: b"GDLX" + GOOD[4:], {}),
    ("truncated", lambda: GOOD[:4], {}),
    ("truncated", lambda: GOOD[:40], {}),
    ("truncated", lambda: GOOD[: PREFIX_BYTES + 5], {}),
    ("bad_version", lambda: GOOD[:4] + b"\x02" + GOOD[5:], {}),
    ("bad_header", lambda: GOOD[:PREFIX_BYTES] + struct.pack("<Q", 2**63) + GOOD[PREFIX_BYTES + 8 :], {}),
    ("bad_header", lambda: GOOD[:PREFIX_BYTES] + struct.pack("<Q", len(GOOD)) + GOOD[PREFIX_BYTES + 8 :], {}),
    ("bad_header", lambda: _raw_header(b"not json"), {}),
    ("bad_header", lambda: _raw_header(b"[1, 2]"), {}),
    ("bad_header", lambda: _raw_header(b"\xff\xfe{}"), {}),
    ("bad_header", lambda: _raw_header(b"[" * 5000 + b"]" * 5000), {}),
    ("bad_header", lambda: _raw_header(b'{"a": 1, "a": 2}'), {}),
    ("bad_header", lambda: _raw_header(b'{"a": NaN}'), {}),
    ("bad_header", lambda: _raw_header(b'{"a": 1.5}'), {}),
    ("bad_header", lambda: _header_edit(lambda h: h["w.idx"].update(extra=1)), {}),
    ("bad_header", lambda: _header_edit(lambda h: h.__setitem__("w.idx", [1, 2])), {}),
    ("unexpected_tensor", lambda: _header_edit(lambda h: h.__setitem__("x.idx", h["w.idx"])), {}),
    ("missing_tensor", lambda: _header_edit(lambda h: h.pop("b.codes")), {}),
    ("bad_dtype", lambda: _header_edit(lambda h: h["w.lut"].update(dtype="F64")), {}),
    ("bad_dtype", lambda: _header_edit(lambda h: h["w.idx"].update(dtype=["U8"])), {}),
    ("bad_shape", lambda: _header_edit(lambda h: h["w.idx"].update(shape=[2**62, 7])), {}),
    ("bad_shape", lambda: _header_edit(lambda h: h["w.lut"].update(shape=[-4])), {}),
    ("bad_shape", lambda: _header_edit(lambda h: h["w.lut"].update(shape=[True, 4])), {}),
    ("bad_offsets", lambda: resign(GOOD, shift_offsets("w.lut", -1, -1)), {}),
    ("bad_offsets", lambda: resign(GOOD, shift_offsets("w.lut", 0, 1)), {}),
    ("bad_offsets", lambda: _header_edit(lambda h: h["w.lut"].update(data_offsets=[-16, 0])), {}),
    ("bad_offsets", lambda: _header_edit(lambda h: h["w.lut"].update(data_offsets=[0])), {}),
    ("bad_offsets", lambda: _header_edit(lambda h: h["w.lut"].update(data_offsets=[2**62, 2**62 + 16])), {}),
    ("bad_offsets", lambda: resign(GOOD, lambda h, d: d.extend(b"\0" * 8)), {}),
    ("bad_metadata", lambda: _header_edit(lambda h: h.pop("__metadata__")), {}),
    ("bad_metadata", lambda: resign(GOOD, set_meta(window=None)), {}),
    ("bad_metadata", lambda: resign(GOOD, set_meta(extra="1")), {}),
    ("bad_metadata", lambda: resign(GOOD, set_meta(window="07")), {}),
    ("bad_metadata", lambda: resign(GOOD, set_meta(window="-7")), {}),
    ("bad_metadata", lambda: resign(GOOD, set_meta(window="9" * 40)), {}),
    ("bad_metadata", lambda: resign(GOOD, set_meta(format_version="2")), {}),
    ("bad_metadata", lambda: resign(GOOD, set_meta(base_model_hash=BASE_HASH.upper())), {}),
    ("bad_metadata", lambda: _header_edit(lambda h: h["__metadata__"].update(window=7)), {}),
    ("codec_mismatch", lambda: resign(GOOD, set_meta(chunk="512")), {}),
    ("codec_mismatch", lambda: resign(GOOD, set_meta(topk="4")), {}),
    ("bad_hotkey", lambda: resign(GOOD, set_meta(hotkey="not-a-hotkey")), {}),
    ("bad_hotkey", lambda: resign(GOOD, set_meta(hotkey=ALICE.ss58_address[:-1] + "x")), {}),
    ("bad_hotkey", lambda: resign(GOOD, set_meta(hotkey=_FORMAT0_ALICE)), {}),
    ("bad_signature", lambda: GOOD[:5] + bytes(64) + GOOD[PREFIX_BYTES:], {}),
    ("bad_signature", lambda: sign(GOOD[PREFIX_BYTES:], BOB), {}),
    ("bad_signature", lambda: GOOD[:PREFIX_BYTES] + resign(GOOD, set_meta(window="8"))[PREFIX_BYTES:], {}),
    ("bad_signature", lambda: GOOD[:-1] + bytes([GOOD[-1] ^ 1]), {}),
    ("window_mismatch", lambda: GOOD, {"expected": {"window": 8}}),
    ("hotkey_mismatch", lambda: GOOD, {"expected": {"hotkey": BOB.ss58_address}}),
    ("base_model_mismatch", lambda: GOOD, {"expected": {"base_model_hash": "f" * 64}}),
    ("spec_version_mismatch", lambda: GOOD, {"expected": {"spec_version": 2}}),
    ("lut_not_finite", lambda: resign(GOOD, set_lut(float("nan"))), {}),
    ("lut_not_finite", lambda: resign(GOOD, set_lut(float("inf"))), {}),
    ("lut_out_of_range", lambda: resign(GOOD, set_lut(-1e6)), {}),
    ("index_bitmap_invalid", lambda: resign(GOOD, set_idx_row(1, bytes(CFG.idx_bytes))), {}),
    (
        "index_bitmap_invalid",
        lambda: resign(GOOD, set_idx_row(0, offsets_row(list(range(6)))[:-1] + b"\xff")),
        {},
    ),
    ("index_not_increasing", lambda: resign(GOOD, set_idx_row(2, offsets_row([0, 1, 2, 3, 3, 4]))), {}),
    ("index_not_increasing", lambda: resign(GOOD, set_idx_row(2, offsets_row([0, 1, 5, 4, 6, 7]))), {}),
    ("index_out_of_range", lambda: resign(GOOD, set_idx_row(0, offsets_row([0, 1, 2, 3, 4, 256]))), {}),
    # b has 40 elements (one chunk, 40 real positions): offset 40 points past the tensor.
    ("index_out_of_range", lambda: resign(GOOD, lambda h, d: _set_b_offsets(h, d, [0, 1, 2, 3, 4, 40])), {}),
    ("padding_bits_set", lambda: resign(GOOD, lambda h, d: _or_byte(h, d, "w.idx", 3, 0x80)), {}),
    ("padding_bits_set", lambda: resign(GOOD, lambda h, d: _or_byte(h, d, "e.codes", 1, 0x10)), {}),
]


def _or_byte(header: dict[str, Any], data: bytearray, name: str, index: int, bits: int) -> None:
    view = tensor_bytes(header, data, name)
    view[index] |= bits


def _set_b_offsets(header: dict[str, Any], data: bytearray, offsets: list[int]) -> None:
    tensor_bytes(header, data, "b.idx")[:] = offsets_row(offsets)


def test_config_has_padding_bits() -> None:
    assert (CFG.low_bytes * 8, CFG.topk * CFG.low_bits) == (32, 30)
    assert (CFG.high_bytes * 8, CFG.high_bits, CFG.code_bytes * 8) == (16, 14, 16)


@pytest.mark.parametrize("reason,build,kw", CRAFTED, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(CRAFTED)])
def test_each_reason(reason: str, build: Callable[[], bytes], kw: dict[str, Any]) -> None:
    assert reason in REASONS
    with pytest.raises(WireError) as info:
        parse(build(), **kw)
    assert info.value.reason == reason, info.value.detail


def test_every_reason_is_covered() -> None:
    assert {reason for reason, _, _ in CRAFTED} == REASONS
