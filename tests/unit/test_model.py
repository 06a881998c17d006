"""The shared model: presets, bit-reproducible init, canonical hash, shapes without allocation."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch

from protocol.model import (
    PRESETS,
    build_model,
    empty_model,
    init_weights,
    model_from_state,
    model_hash,
    param_shapes,
    preset,
    tensor_hashes,
)

TINY = preset("tiny")
# Pins the init scheme across machines and library versions: a change here means every node of a
# subnet would disagree about the initial weights of model_seed 0.
TINY_SEED0_HASH = "173647fc415823870179c5e5aee90838049bdfaa63d4b62ea624eb1206be6303"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on busy cores OpenMP threads spin
    against each other (20 AdamW steps: ~4 s single-threaded, 30+ s with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_model(TINY, seed=0)


def test_presets_exist_and_unknown_name_lists_valid_ones() -> None:
    assert {"tiny", "small", "base", "1b"} <= PRESETS.keys()
    with pytest.raises(ValueError, match=r"unknown model preset 'huge'.*tiny.*1b"):
        preset("huge")


def test_tiny_param_count(tiny: torch.nn.Module) -> None:
    n = sum(p.numel() for p in tiny.parameters())
    assert 1_000_000 <= n <= 5_000_000
    assert n == sum(math.prod(s) for s in param_shapes(TINY).values())


def test_preset_sizes_via_shapes_without_allocation() -> None:
    def count(name: str) -> int:
        return sum(math.prod(s) for s in param_shapes(preset(name)).values())

    assert 15e6 <= count("small") <= 35e6
    assert 100e6 <= count("base") <= 200e6
    assert 1.0e9 <= count("1b") <= 1.3e9


def test_init_is_deterministic_and_seed_dependent(tiny: torch.nn.Module) -> None:
    again = build_model(TINY, seed=0)
    assert model_hash(again) == model_hash(tiny)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), tiny.parameters(), strict=True))
    assert model_hash(build_model(TINY, seed=1)) != model_hash(tiny)


def test_init_matches_pinned_hash(tiny: torch.nn.Module) -> None:
    assert model_hash(tiny) == TINY_SEED0_HASH


def test_init_into_non_fp32_model_matches(tiny: torch.nn.Module) -> None:
    half = empty_model(TINY).to(torch.bfloat16)
    init_weights(half, seed=0)
    assert model_hash(half) == model_hash({n: p.to(torch.bfloat16) for n, p in tiny.named_parameters()})


def test_init_statistics(tiny: torch.nn.Module) -> None:
    params = dict(tiny.named_parameters())
    assert params["tok_emb.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert params["layers.0.attn.wo.weight"].std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert torch.all(params["norm.weight"] == 1)


def test_model_hash_ignores_order_and_sees_one_element(tiny: torch.nn.Module) -> None:
    state = tiny.state_dict()
    reordered = OrderedDict(reversed(list(state.items())))
    assert model_hash(reordered) == model_hash(state) == model_hash(tiny)
    # Canonical fp32 values: a float64 copy of the same values hashes the same.
    assert model_hash({k: v.double() for k, v in state.items()}) == model_hash(tiny)

    changed = {k: v.clone() for k, v in state.items()}
    changed["layers.2.mlp.w3.weight"][5, 7] += 1e-3
    assert model_hash(changed) != model_hash(tiny)
    before, after = tensor_hashes(tiny), tensor_hashes(changed)
    assert [k for k in before if before[k] != after[k]] == ["layers.2.mlp.w3.weight"]

    renamed = dict(state)
    renamed["extra.weight"] = renamed.pop("norm.weight")
    assert model_hash(renamed) != model_hash(tiny)


def test_model_hash_format() -> None:
    digest = model_hash({"w": torch.zeros(3)})
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert model_hash({"w": torch.zeros(3)}) != model_hash({"w": torch.zeros(1, 3)})


def test_param_shapes_match_model_with_tied_embedding_once(tiny: torch.nn.Module) -> None:
    shapes = param_shapes(TINY)
    assert shapes == {n: tuple(p.shape) for n, p in tiny.named_parameters()}
    assert list(shapes) == sorted(shapes)
    assert set(shapes) == set(tiny.state_dict())
    assert shapes["tok_emb.weight"] == (TINY.vocab_size, TINY.dim)
    assert len(shapes) == 2 + 9 * TINY.n_layers
    assert not any("bias" in n or "output" in n or "lm_head" in n for n in shapes)


def test_model_from_state_round_trips_and_checks(tiny: torch.nn.Module) -> None:
    copy = model_from_state(TINY, tiny.state_dict())
    assert model_hash(copy) == model_hash(tiny)
    bad = dict(tiny.state_dict())
    bad["norm.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match="shape"):
        model_from_state(TINY, bad)
    with pytest.raises(ValueError, match="missing"):
        model_from_state(TINY, {})


def test_forward_shapes_causality_and_losses(tiny: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, TINY.vocab_size, (3, 17), generator=g)
    with torch.no_grad():
        logits = tiny(tokens)
        assert logits.shape == (3, 17, TINY.vocab_size)
        future = tokens.clone()
        future[:, 10:] = (future[:, 10:] + 1) % TINY.vocab_size
        assert torch.allclose(tiny(future)[:, :10], logits[:, :10], atol=1e-5)
        per_seq = tiny.per_sequence_loss(tokens)
        assert per_seq.shape == (3,)
        assert tiny.loss(tokens).item() == pytest.approx(per_seq.mean().item(), rel=1e-5)
        # Near-uniform predictions at init: loss close to ln(vocab).
        assert abs(tiny.loss(tokens).item() - math.log(TINY.vocab_size)) < 0.2
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny(torch.zeros(1, TINY.max_seq_len + 1, dtype=torch.long))


def test_loss_decreases_with_adamw() -> None:
    torch.manual_seed(0)
    model = build_model(TINY, seed=7)
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, 64, (4, 33), generator=g)  # small alphabet: quick to memorise
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = model.loss(batch).item()
    for _ in range(20):
        opt.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.5


def test_cross_entropy_in_row_chunks_matches_one_shot(monkeypatch: pytest.MonkeyPatch) -> None:
    import protocol.model as pm

    model = pm.build_model(pm.preset("tiny"), seed=3)
    tokens = torch.randint(0, 4096, (5, 33), generator=torch.Generator().manual_seed(0))
    whole = model.per_sequence_loss(tokens)
    monkeypatch.setattr(pm, "MAX_LOGIT_ELEMENTS", 2 * 32 * 4096)  # two rows of logits at a time
    chunked = model.per_sequence_loss(tokens)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(pm, "MAX_LOGIT_ELEMENTS", 1)  # never fewer than one row
    torch.testing.assert_close(model.per_sequence_loss(tokens), whole, rtol=1e-6, atol=1e-6)
