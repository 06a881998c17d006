"""Stage 2 evaluation: exact restore, shared "before" losses, scale invariance, per-page evidence, first-order estimate.

Run: ``pytest tests/unit/test_validator_evaluate.py -q``
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from protocol.model import ModelConfig, build_model
from scoring.loss import reach_contribution
from scoring.scale import cap_factor, normalising_factor, step_factor
from validator.evaluate import EvalJob, EvalResult, WindowEvaluator, apply_in_place, eval_subset, restore

CFG = ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=16)


class FakePages:
    """Deterministic pages of random tokens; counts how many pages were read."""

    def __init__(self, page_seqs: int = 2, seq_len: int = 9) -> None:
        self.page_seqs, self.seq_len, self.reads = page_seqs, seq_len, 0

    def pages(self, ids: Sequence[int]) -> torch.Tensor:
        self.reads += len(ids)
        out = [torch.randint(0, CFG.vocab_size, (self.page_seqs, self.seq_len),
                             generator=torch.Generator().manual_seed(1000 + i)) for i in ids]
        return torch.cat(out)


def _delta(model: torch.nn.Module, seed: int, keep: int = 20) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.named_parameters():
        idx = torch.randperm(p.numel(), generator=g)[:keep].sort().values
        out[name] = (idx, torch.randn(idx.numel(), generator=g) * 0.5)
    return out


def test_normalising_factor_hand_computed() -> None:
    assert normalising_factor(norm=2.0, median_norm=4.0) == 2.0  # below the median: brought up to it
    assert normalising_factor(norm=8.0, median_norm=4.0) == 0.5  # above: brought down
    assert normalising_factor(norm=3.0, median_norm=None) == 1.0  # no reference
    assert normalising_factor(norm=0.0, median_norm=4.0) == 1.0  # nothing to scale
    with pytest.raises(ValueError):
        normalising_factor(norm=1.0, median_norm=0.0)


def test_cap_rule_hand_computed() -> None:
    assert cap_factor(norm=2.0, cap=12.0) == 1.0  # below the cap: unchanged
    assert cap_factor(norm=24.0, cap=12.0) == 0.5
    assert step_factor(24.0, 4.0, "cap", 3.0) == 0.5  # cap = 3 x median 4
    assert step_factor(24.0, 4.0, "normalise", 3.0) == pytest.approx(1 / 6)
    assert step_factor(2.0, None, "cap", 3.0) == 1.0
    with pytest.raises(ValueError):
        step_factor(1.0, 1.0, "bogus", 3.0)


def _norm(delta: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for _i, v in delta.values())))


@pytest.mark.parametrize("seed", range(6))
def test_scaled_delta_scores_like_the_original(seed: int) -> None:
    """Property: k x delta gets the same losses as delta for random k in [0.1, 100] (scoring.scale)."""
    k = float(10 ** torch.empty(1).uniform_(-1, 2, generator=torch.Generator().manual_seed(seed)))
    model = build_model(CFG, seed=3)
    ev = WindowEvaluator(model, FakePages(), random_page_ids=[7, 8])
    delta = _delta(model, 10 + seed)
    scaled = {n: (i, v * k) for n, (i, v) in delta.items()}
    median = 0.8 * _norm(delta)  # the window's median, from other peers
    reach = (4.0, 16.0, 64.0)
    results = [ev.evaluate(EvalJob(hk, d, 0.2 * normalising_factor(_norm(d), median), (1, 2), reach))
               for hk, d in (("a", delta), ("b", scaled))]
    for key in ("loss_after_random", "loss_after_assigned"):
        assert getattr(results[0], key) == pytest.approx(getattr(results[1], key), rel=1e-5, abs=1e-6), (k, key)
    score = [reach_contribution(r.loss_before_random, r.loss_after_random, [a for _c, a in r.reach_losses])
             for r in results]
    assert [c for c, _a in results[1].reach_losses] == list(reach)
    assert score[0] == pytest.approx(score[1], rel=1e-4, abs=1e-7), k  # the score that is ranked


def test_reach_measures_the_random_loss_further_along_the_direction() -> None:
    model = build_model(CFG, seed=3)
    ev = WindowEvaluator(model, FakePages(), random_page_ids=[7, 8])
    delta = _delta(model, 5)
    one = ev.evaluate(EvalJob("a", delta, 0.2, (1,)))
    far = ev.evaluate(EvalJob("a", delta, 0.8, (1,)))  # 4 x the step
    both = ev.evaluate(EvalJob("a", delta, 0.2, (1,), (4.0,)))
    assert both.loss_after_random == one.loss_after_random and both.loss_after_assigned == one.loss_after_assigned
    assert both.reach_losses == ((4.0, pytest.approx(far.loss_after_random, rel=1e-6)),)
    assert one.reach_losses == ()


def test_page_losses_are_per_assigned_page_and_survive_json() -> None:
    model = build_model(CFG, seed=3)
    ev = WindowEvaluator(model, FakePages(), random_page_ids=[7, 8])
    r = ev.evaluate(EvalJob("a", _delta(model, 4), 0.2, (1, 2, 5), (4.0, 16.0)))
    assert len(r.reach_losses) == 2
    assert len(r.page_losses) == 3
    assert sum(b for b, _a in r.page_losses) / 3 == pytest.approx(r.loss_before_assigned, rel=1e-9)
    assert sum(a for _b, a in r.page_losses) / 3 == pytest.approx(r.loss_after_assigned, rel=1e-6)
    import json

    assert EvalResult.from_dict(json.loads(json.dumps(r.as_dict()))) == r


def test_control_pages_are_measured_in_the_same_forward_and_survive_json() -> None:
    model = build_model(CFG, seed=3)
    ev = WindowEvaluator(model, FakePages(), random_page_ids=[7, 8], control_page_ids=[9, 10])
    delta = _delta(model, 4)
    r = ev.evaluate(EvalJob("a", delta, 0.2, (1, 2)))
    ref = build_model(CFG, seed=3)
    with torch.inference_mode():
        before = [float(ref.per_sequence_loss(FakePages().pages([p])).double().mean()) for p in (9, 10)]
        apply_in_place(ref, delta, 0.2)
        after = [float(ref.per_sequence_loss(FakePages().pages([p])).double().mean()) for p in (9, 10)]
        after_random = ref.per_sequence_loss(FakePages().pages([7, 8])).double().mean()
    assert [b for b, _ in r.control_losses] == pytest.approx(before, rel=1e-6)
    assert [a for _, a in r.control_losses] == pytest.approx(after, rel=1e-5)
    assert r.loss_after_random == pytest.approx(float(after_random), rel=1e-5)  # still the random pages
    import json

    assert EvalResult.from_dict(json.loads(json.dumps(r.as_dict()))) == r
    plain = WindowEvaluator(build_model(CFG, seed=3), FakePages(), random_page_ids=[7, 8]).evaluate(
        EvalJob("a", delta, 0.2, (1, 2)))
    assert plain.control_losses == ()
    assert plain.loss_after_random == pytest.approx(r.loss_after_random, rel=1e-6)


def test_apply_and_restore_is_bit_exact() -> None:
    model = build_model(CFG, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    delta = _delta(model, 2)
    saved = apply_in_place(model, delta, 0.37)
    name = next(iter(delta))
    idx, val = delta[name]
    flat = dict(model.named_parameters())[name].detach().view(-1)
    assert torch.equal(flat[idx], before[name].view(-1)[idx] - 0.37 * val)
    restore(saved)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n])  # exact, not approximately equal


def test_before_losses_shared_and_after_matches_direct_forward() -> None:
    model = build_model(CFG, seed=3)
    pages = FakePages()
    ev = WindowEvaluator(model, pages, random_page_ids=[7, 8])
    delta = _delta(model, 4)
    r1 = ev.evaluate(EvalJob("a", delta, 0.2, (1, 2)))
    reads_after_first = pages.reads
    r2 = ev.evaluate(EvalJob("b", _delta(model, 5), 0.2, (1, 2)))
    # Peer b reuses the cached "before" losses of pages 1 and 2: only the after-batch is read.
    assert pages.reads - reads_after_first == 2
    assert r1.loss_before_assigned == r2.loss_before_assigned
    assert r1.loss_before_random == r2.loss_before_random
    # The after-loss equals a forward pass on an independently perturbed copy.
    ref = build_model(CFG, seed=3)
    apply_in_place(ref, delta, 0.2)
    with torch.inference_mode():
        direct = ref.per_sequence_loss(pages.pages([7, 8])).double().mean()
    assert r1.loss_after_random == pytest.approx(float(direct), rel=1e-5)


def test_first_order_estimate_tracks_a_small_step() -> None:
    model = build_model(CFG, seed=6)
    ev = WindowEvaluator(model, FakePages(), random_page_ids=[3, 4, 5])
    delta = _delta(model, 7, keep=60)
    step = 1e-3
    res = ev.evaluate(EvalJob("a", delta, step, (1,)))
    exact = res.loss_after_random - res.loss_before_random
    assert res.estimate == pytest.approx(exact, rel=0.1, abs=1e-6)


def test_eval_subset_is_seeded_and_bounded() -> None:
    a = eval_subset([5, 1, 9, 3], 2, seed=b"s" * 32, hotkey="hk")
    assert a == eval_subset([9, 3, 5, 1], 2, seed=b"s" * 32, hotkey="hk")
    assert len(a) == 2 and set(a) <= {1, 3, 5, 9}
    assert eval_subset([4, 2], 3, seed=b"s" * 32, hotkey="hk") == (2, 4)
