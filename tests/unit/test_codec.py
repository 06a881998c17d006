"""Properties of the SparseLoCo codec (protocol.codec, its top-k protocol.topk) and miner.error_feedback.

Run: ``pytest tests/unit/test_codec.py -q``. Tensors are generated from hypothesis-drawn
seeds (fast, and covers ties, zeros and odd shapes); configs include non-power-of-two k and
sizes that exercise every level of the hierarchical top-k.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miner.error_feedback import ErrorFeedback
from protocol import codec, topk
from protocol.codec import (
    CODEC_REASONS,
    CodecConfig,
    bits_per_kept_value,
    decode,
    decode_sparse,
    decode_tensor,
    encode,
    encode_tensor,
    encoded_layout,
    find_encoding_error,
    information_bound_bits,
    sparse_to_dense,
    validate_encoded,
)
from protocol.hparams import CodecParams

CONFIGS = [
    CodecConfig(16, 1),
    CodecConfig(16, 3),
    CodecConfig(16, 16),
    CodecConfig(64, 5),
    CodecConfig(64, 8),
    CodecConfig(256, 4),
    CodecConfig(256, 12),
    CodecConfig(1024, 16),
    CodecConfig(4096, 64),
]
KINDS = ["normal", "ties", "zeros", "sparse", "scaled_rows"]

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_tensor(shape: tuple[int, ...], kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if kind == "ties":  # few distinct magnitudes: exercises deterministic tie-breaking
        x = torch.round(x * 2) / 2
    elif kind == "zeros":
        x = torch.zeros(shape)
    elif kind == "sparse":
        x = x * (torch.rand(shape, generator=g) < 0.01)
    elif kind == "scaled_rows" and x.dim() >= 1 and x.numel():  # structured, like real weight rows
        x = x * torch.logspace(-3, 1, x.shape[0]).view(-1, *([1] * (x.dim() - 1)))
    return x


shapes = st.one_of(
    st.tuples(st.integers(0, 3000)),
    st.tuples(st.integers(1, 70), st.integers(1, 70)),
    st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 33)),
    st.just(()),
)
cases = st.tuples(st.sampled_from(CONFIGS), shapes, st.sampled_from(KINDS), st.integers(0, 2**31 - 1))


def padded_magnitudes(x: torch.Tensor, cfg: CodecConfig) -> torch.Tensor:
    """|x| as [n_chunks, chunk] with padding at -1 (the reference the codec must agree with)."""
    flat = x.reshape(-1).abs().float()
    n = cfg.n_chunks(flat.numel())
    out = torch.full((n * cfg.chunk,), -1.0)
    out[: flat.numel()] = flat
    return out.view(n, cfg.chunk)


def tensors_of(enc: dict[str, codec.EncodedTensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, e in enc.items():
        out[f"{name}.idx"], out[f"{name}.codes"], out[f"{name}.lut"] = e.idx, e.codes, e.lut
    return out


# ----------------------------------------------------------------------------- configuration


def test_default_config_sizes() -> None:
    cfg = CodecConfig.from_params(CodecParams())
    assert (cfg.chunk, cfg.topk, cfg.low_bits, cfg.high_bits) == (4096, 64, 6, 128)
    assert (cfg.idx_bytes, cfg.code_bytes) == (64, 16)
    assert bits_per_kept_value(cfg) == 10.0
    assert information_bound_bits(cfg) == pytest.approx(9.364, abs=1e-3)


@pytest.mark.parametrize("chunk,topk", [(3, 1), (0, 1), (16, 0), (16, 17), (2**25, 1)])
def test_config_rejects_invalid(chunk: int, topk: int) -> None:
    with pytest.raises(ValueError):
        CodecConfig(chunk, topk)


@given(width=st.integers(0, 24), m=st.integers(0, 40), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=80, deadline=None)
def test_bit_packing_round_trip(width: int, m: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    values = (
        torch.randint(0, 1 << width, (3, m), generator=g) if width else torch.zeros(3, m, dtype=torch.int64)
    )
    packed = codec._pack_fields(values, width)
    assert packed.dtype == torch.uint8 and packed.shape == (3, math.ceil(m * width / 8))
    assert torch.equal(codec._unpack_fields(packed, width, m), values)


# ----------------------------------------------------------------------------- encode / decode


@pytest.mark.parametrize(
    "width,k", [(4096, 64), (65536, 1), (65536, 3), (96, 6), (1024, 16), (512, 100), (64, 64)]
)
def test_hierarchical_selection_matches_topk(width: int, k: int) -> None:
    """The pruned selection keeps exactly torch.topk's set when values are distinct."""
    g = torch.Generator().manual_seed(width + k)
    keys = torch.randperm(4 * width, generator=g)[: 3 * width].view(3, width).to(torch.int32)
    got = topk.topk_sorted(keys, k)
    assert torch.equal(got, torch.topk(keys, k, dim=1).indices.sort(dim=1).values)


@given(cases)
@PROPS
def test_keeps_exactly_a_top_k_set(case: tuple) -> None:
    cfg, shape, kind, seed = case
    x = make_tensor(shape, kind, seed)
    sp = decode_sparse(encode_tensor(x, cfg), cfg)
    n = cfg.n_chunks(x.numel())
    assert sp.indices.shape == (n, cfg.topk) and sp.indices.dtype == torch.int64
    if n == 0:
        return
    mag = padded_magnitudes(x, cfg)
    offsets = sp.indices - torch.arange(n).unsqueeze(1) * cfg.chunk
    assert bool((offsets[:, 1:] > offsets[:, :-1]).all()), "offsets strictly increasing per chunk"
    assert bool((offsets >= 0).all()) and bool((offsets < cfg.chunk).all())
    kept = mag.gather(1, offsets)
    ref = torch.topk(mag, cfg.topk, dim=1).values
    # Same multiset of magnitudes as torch.topk, and nothing dropped beats anything kept.
    assert torch.equal(kept.sort(dim=1).values, ref.sort(dim=1).values)
    dropped = mag.scatter(1, offsets, -2.0)
    assert bool((dropped.amax(1) <= kept.amin(1)).all())
    # With distinct magnitudes the top-k set is unique and must match torch.topk exactly.
    distinct = torch.tensor([row.unique().numel() == row.numel() for row in mag])
    ref_idx = torch.topk(mag, cfg.topk, dim=1).indices.sort(dim=1).values
    assert torch.equal(offsets[distinct], ref_idx[distinct])


@given(cases)
@PROPS
def test_values_are_lut_entries_with_the_right_sign(case: tuple) -> None:
    cfg, shape, kind, seed = case
    x = make_tensor(shape, kind, seed)
    enc = encode_tensor(x, cfg)
    sp = decode_sparse(enc, cfg)
    dense = decode_tensor(enc, cfg)
    assert dense.shape == x.shape and dense.dtype == torch.float32
    flat_x, flat_d = x.reshape(-1), dense.reshape(-1)
    idx = sp.indices.reshape(-1)
    real = idx < x.numel()
    pos = idx[real]
    orig, got = flat_x[pos], flat_d[pos]
    assert torch.equal(got, sp.values.reshape(-1)[real])
    lut = enc.lut
    assert lut.shape == (4,) and lut.dtype == torch.float32 and bool(torch.isfinite(lut).all())
    neg = orig < 0
    pos_bins = (got == lut[0]) | (got == lut[1])
    neg_bins = (got == lut[2]) | (got == lut[3])
    assert bool(torch.where(neg, neg_bins & (got <= 0), pos_bins & (got >= 0)).all())
    # Each LUT entry is the mean of its bin; magnitude bit = above the median of kept |v|.
    if orig.numel():
        median = orig.abs().median()
        bins = neg.long() * 2 + (orig.abs() > median).long()
        for b in range(4):
            members = orig[bins == b]
            expect = members.double().mean().item() if members.numel() else 0.0
            assert lut[b].item() == pytest.approx(expect, rel=1e-5, abs=1e-6)
    # Everything not kept decodes to exactly zero.
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[pos] = True
    assert bool((flat_d[~mask] == 0).all())


@given(cases)
@PROPS
def test_encode_is_deterministic_and_matches_layout(case: tuple) -> None:
    cfg, shape, kind, seed = case
    x = make_tensor(shape, kind, seed)
    a, b = encode_tensor(x, cfg), encode_tensor(x.clone(), cfg)
    for field in ("idx", "codes", "lut"):
        ta, tb = getattr(a, field), getattr(b, field)
        assert ta.numpy().tobytes() == tb.numpy().tobytes()
    layout = encoded_layout({"p": tuple(shape)}, cfg)
    tensors = tensors_of({"p": a})
    assert {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()} == layout
    assert validate_encoded(tensors, {"p": tuple(shape)}, cfg) is None


@given(cases, st.floats(0.0, 1.0))
@PROPS
def test_error_feedback_conserves_mass(case: tuple, beta: float) -> None:
    cfg, shape, kind, seed = case
    first, second = make_tensor(shape, kind, seed), make_tensor(shape, "normal", seed + 1)
    ef = ErrorFeedback()
    ef.accumulate({"p": first}, beta)
    ef.compress(cfg)
    before = ef.state_dict()["p"]
    ef.accumulate({"p": second}, beta)
    accumulated = before * beta + second
    sent = decode_tensor(ef.compress(cfg)["p"], cfg)
    residual = ef.state_dict()["p"]
    assert torch.allclose(sent + residual, accumulated, rtol=1e-6, atol=1e-6)
    # Nothing is sent where nothing was kept: the residual keeps those coordinates untouched.
    assert bool((residual[sent == 0] == accumulated[sent == 0]).all())


@pytest.mark.parametrize("threads", [2, 3])
def test_encoding_does_not_depend_on_the_thread_count(threads: int) -> None:
    # Big enough that one tensor is split across threads (> 2 cache blocks of rows), plus
    # small tensors that are spread over threads by encode/compress.
    cfg = CodecConfig(4096, 64)
    gen = torch.Generator().manual_seed(7)
    state = {"big": torch.randn(3 * 1024 * 1024 + 17, generator=gen), "w": torch.randn(300, 70, generator=gen),
             "b": torch.randn(5, generator=gen)}
    configured = torch.get_num_threads()

    def run(n: int) -> tuple[dict, dict]:
        torch.set_num_threads(n)
        try:
            ef = ErrorFeedback()
            ef.accumulate(state, 0.9)
            return encode(state, cfg), {**ef.compress(cfg), **{f"res.{k}": v for k, v in ef.state_dict().items()}}
        finally:
            torch.set_num_threads(configured)

    (enc1, ef1), (encn, efn) = run(1), run(threads)
    assert torch.get_num_threads() == configured  # restored
    for name in state:
        for field in ("idx", "codes", "lut"):
            assert torch.equal(getattr(enc1[name], field), getattr(encn[name], field))
            assert torch.equal(getattr(ef1[name], field), getattr(efn[name], field))
        assert torch.equal(ef1[f"res.{name}"], efn[f"res.{name}"])


def test_error_feedback_state_round_trip() -> None:
    cfg = CodecConfig(64, 8)
    ef = ErrorFeedback()
    ef.accumulate({"a": torch.randn(10, 20), "b": torch.randn(7)}, 0.95)
    ef.compress(cfg)
    restored = ErrorFeedback()
    restored.load_state_dict(ef.state_dict())
    delta = {"a": torch.randn(10, 20), "b": torch.randn(7)}
    ef.accumulate(delta, 0.95)
    restored.accumulate(delta, 0.95)
    sent, sent_restored = ef.compress(cfg), restored.compress(cfg)
    for name, enc in sent.items():
        assert torch.equal(enc.idx, sent_restored[name].idx) and torch.equal(enc.lut, sent_restored[name].lut)
    for name, buf in ef.state_dict().items():
        assert torch.equal(buf, restored.state_dict()[name])


@pytest.mark.parametrize(
    "shape", [(1,), (5,), (63,), (64,), (65,), (4095,), (4097,), (3, 4096), (2, 3, 700), ()]
)
def test_odd_shapes_round_trip(shape: tuple[int, ...]) -> None:
    cfg = CodecConfig()
    x = make_tensor(shape, "normal", 1)
    out = decode(encode({"p": x}, cfg), cfg)["p"]
    assert out.shape == x.shape
    kept = (out != 0).sum().item()
    real_last = x.numel() - (cfg.n_chunks(x.numel()) - 1) * cfg.chunk
    expect = (cfg.n_chunks(x.numel()) - 1) * cfg.topk + min(cfg.topk, real_last)
    assert kept == expect  # randn has no zeros, so every kept real position is nonzero
    if x.numel() <= cfg.topk:
        assert bool((torch.sign(out) == torch.sign(x)).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_input_dtypes(dtype: torch.dtype) -> None:
    cfg = CodecConfig(256, 8)
    x = torch.randn(3, 300).to(dtype)
    sp = decode_sparse(encode_tensor(x, cfg), cfg)
    mag = padded_magnitudes(x.float(), cfg)
    kept = mag.gather(1, sp.indices - torch.arange(sp.indices.shape[0]).unsqueeze(1) * cfg.chunk)
    assert torch.equal(kept.sort(1).values, torch.topk(mag, 8, dim=1).values.sort(1).values)


def test_non_contiguous_input() -> None:
    cfg = CodecConfig(64, 4)
    x = torch.randn(30, 40)
    assert torch.equal(
        decode_tensor(encode_tensor(x.t(), cfg), cfg),
        decode_tensor(encode_tensor(x.t().contiguous(), cfg), cfg),
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_refused(bad: float) -> None:
    x = torch.randn(5000)
    x[1234] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode_tensor(x, CodecConfig())


def test_decode_dtype_device_and_out() -> None:
    cfg = CodecConfig(64, 8)
    x = torch.randn(9, 13)
    enc = encode_tensor(x, cfg)
    ref = decode_tensor(enc, cfg)
    assert torch.equal(decode_tensor(enc, cfg, dtype=torch.bfloat16), ref.to(torch.bfloat16))
    assert torch.equal(decode_tensor(enc, cfg, device="cpu"), ref)
    out = torch.full((9, 13), 7.0)
    assert decode_tensor(enc, cfg, out=out) is out and torch.equal(out, ref)
    assert torch.equal(sparse_to_dense(decode_sparse(enc, cfg)), ref)
    with pytest.raises(ValueError):
        decode_tensor(enc, cfg, out=torch.zeros(13, 9).t())


def test_compression_ratio_of_a_big_matrix() -> None:
    cfg = CodecConfig()
    enc = encode_tensor(torch.randn(256, 4096), cfg)
    nbytes = enc.idx.numel() + enc.codes.numel() + 4 * enc.lut.numel()
    assert 2 * 256 * 4096 / nbytes > 100  # > 100x fewer bytes than bf16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_on_distinct_values() -> None:
    cfg = CodecConfig()
    x = torch.randn(3, 5000)
    cpu = encode_tensor(x, cfg)
    gpu = encode_tensor(x.cuda(), cfg)
    assert torch.equal(cpu.idx, gpu.idx.cpu()) and torch.equal(cpu.codes, gpu.codes.cpu())
    assert torch.allclose(cpu.lut, gpu.lut.cpu())
    assert torch.equal(decode_tensor(gpu, cfg).cpu(), decode_tensor(cpu, cfg, device="cuda").cpu())


# ----------------------------------------------------------------------------- validation


def valid_payload(cfg: CodecConfig, shape: tuple[int, ...] = (5, 1000)) -> tuple[dict, dict]:
    x = make_tensor(shape, "normal", 3)
    return tensors_of({"p": encode_tensor(x, cfg)}), {"p": shape}


def corrupt(tensors: dict, name: str, fn) -> dict:
    out = {k: v.clone() for k, v in tensors.items()}
    fn(out[name])
    return out


def test_validation_reason_codes() -> None:
    cfg = CodecConfig(256, 8)  # L = 5, 40 low bits (5 bytes), 16-bit bitmap (2 bytes)
    good, shapes = valid_payload(cfg)
    assert find_encoding_error(good, shapes, cfg) is None

    def reason(tensors: dict, shp: dict = shapes) -> str | None:
        r = validate_encoded(tensors, shp, cfg)
        assert r is None or r in CODEC_REASONS
        return r

    assert reason({**good, "q.idx": good["p.idx"]}) == "unexpected_tensor"
    assert reason({k: v for k, v in good.items() if k != "p.codes"}) == "missing_tensor"
    assert reason({**good, "p.lut": good["p.lut"].double()}) == "bad_dtype"
    assert reason({**good, "p.idx": good["p.idx"][:-1]}) == "bad_shape"
    assert reason(corrupt(good, "p.lut", lambda t: t.__setitem__(1, float("nan")))) == "lut_not_finite"
    assert reason(corrupt(good, "p.lut", lambda t: t.__setitem__(2, float("-inf")))) == "lut_not_finite"
    assert reason(corrupt(good, "p.lut", lambda t: t.__setitem__(0, 2e4))) == "lut_out_of_range"
    # High bitmap (bytes 5-6): clear a set bit -> k-1 ones.
    assert reason(corrupt(good, "p.idx", lambda t: t[0, 5:].zero_())) == "index_bitmap_invalid"
    # Forged offsets (valid bitmap, so they pass the popcount check) hitting the later checks.
    rows = good["p.idx"].shape[0]

    def forged(offsets: list[int]) -> dict:
        packed = codec._encode_offsets(torch.tensor([offsets] * rows), cfg)
        return {**good, "p.idx": packed}

    assert reason(forged([0, 1, 2, 3, 4, 5, 6, 7])) is None
    assert reason(forged([0, 1, 2, 3, 3, 5, 6, 7])) == "index_not_increasing"
    assert reason(forged([0, 1, 2, 3, 9, 8, 10, 11])) == "index_not_increasing"
    assert reason(forged([0, 1, 2, 3, 4, 5, 6, 256])) == "index_out_of_range"  # high part = chunk >> L
    assert reason(forged([250, 251, 252, 253, 254, 255, 256, 287])) == "index_out_of_range"


def test_validation_padding_rules() -> None:
    cfg = CodecConfig(64, 5)  # L = 3: 15 low bits (2 bytes, 1 spare bit), bitmap 5 + 8 = 13 bits (3 spare)
    good, shapes = valid_payload(cfg, (130,))
    assert validate_encoded(good, shapes, cfg) is None
    spare_low = corrupt(good, "p.idx", lambda t: t[:, 1].bitwise_or_(0x80))
    assert validate_encoded(spare_low, shapes, cfg) == "padding_bits_set"
    spare_code = corrupt(good, "p.codes", lambda t: t[:, -1].bitwise_or_(0x80))  # codes: 10 bits, 6 spare
    assert validate_encoded(spare_code, shapes, cfg) == "padding_bits_set"
    spare_high = corrupt(good, "p.idx", lambda t: t[:, -1].bitwise_or_(0x80))
    assert validate_encoded(spare_high, shapes, cfg) == "index_bitmap_invalid"


def test_validation_positions_beyond_the_tensor() -> None:
    cfg = CodecConfig(64, 5)
    # 130 elements: last chunk has 2 real positions, so it must keep both plus 3 padding positions.
    good, shapes = valid_payload(cfg, (130,))
    enc = codec.EncodedTensor((130,), good["p.idx"], good["p.codes"], good["p.lut"])
    last = decode_sparse(enc, cfg).indices[-1] - 2 * 64
    assert last.tolist() == [0, 1, 2, 3, 4]
    # Other last-chunk offsets: dropping real position 0, or non-canonical padding positions.
    for offsets in ([1, 2, 3, 4, 5], [0, 1, 2, 3, 60]):
        forged = codec._encode_offsets(torch.tensor([offsets]), cfg)
        bad = corrupt(good, "p.idx", lambda t, f=forged: t[-1].copy_(f[0]))
        assert validate_encoded(bad, shapes, cfg) == "index_out_of_range"
    # Any chunk: an offset past the end of a shorter last chunk.
    good70, shapes70 = valid_payload(cfg, (70,))  # last chunk: 6 real positions
    forged = codec._encode_offsets(torch.tensor([[0, 1, 2, 3, 6]]), cfg)
    bad = corrupt(good70, "p.idx", lambda t: t[-1].copy_(forged[0]))
    assert validate_encoded(bad, shapes70, cfg) == "index_out_of_range"
    # A full chunk may never point past the tensor: a 64-element tensor has no padding at all.
    good64, shapes64 = valid_payload(cfg, (64,))
    assert validate_encoded(good64, shapes64, cfg) is None
