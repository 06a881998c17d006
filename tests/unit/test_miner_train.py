"""Inner-training building blocks: batches, pseudo-gradient, Muon, rank slicing."""

from __future__ import annotations

import pytest
import torch

from miner.train import iter_batches, make_optimizer, newton_schulz, pseudo_gradient, rank_slice
from protocol.hparams import InnerParams


def test_batches_are_deterministic_and_cover_every_row() -> None:
    rows = torch.arange(40).view(10, 4)
    a = list(iter_batches(rows, 3, 5, seed=11))
    b = list(iter_batches(rows, 3, 5, seed=11))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    firsts = torch.cat(a)[:10, 0].tolist()  # the first pass is a permutation of all rows
    assert sorted(firsts) == list(range(0, 40, 4))


def test_pseudo_gradient_is_global_minus_local() -> None:
    g, l_ = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, 3.0])}
    assert torch.equal(pseudo_gradient(g, l_)["w"], torch.tensor([0.5, -1.0]))


def test_newton_schulz_roughly_orthogonalises() -> None:
    g = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(newton_schulz(g))
    assert s.min() > 0.5 and s.max() < 1.3


def test_rank_slices_are_disjoint_and_complete() -> None:
    rows = torch.arange(8).view(8, 1)
    parts = [rank_slice(rows, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).view(-1).tolist()) == list(range(8))
    with pytest.raises(ValueError):
        rank_slice(rows[:1], 1, 2)


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_optimizers_reduce_a_loss(kind: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 1))
    opt = make_optimizer(model, InnerParams(optimizer=kind, lr=1e-2, weight_decay=0.0))
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        first = first if first is not None else float(loss)
        loss.backward()
        opt.step()
    assert float(loss) < 0.9 * first  # random targets: a floor well above 0
