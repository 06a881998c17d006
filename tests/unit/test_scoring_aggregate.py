"""Robust aggregation: median-norm clipping, selected mean, trimmed mean, centered clipping."""

from __future__ import annotations

import pytest
import torch

from scoring.aggregate import (
    aggregate,
    aggregate_sparse,
    centered_clip,
    clip_to_median_norm,
    selected_mean,
    trimmed_mean,
)


def vec(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_mean() -> None:
    deltas = [{"w": vec(1, 2)}, {"w": vec(3, 6)}]
    assert aggregate(deltas, "mean")["w"].tolist() == [2.0, 4.0]


def test_selected_mean_hand_computed() -> None:
    # Sparse deltas: 0 means "not selected". Per coordinate, average over the peers that sent it.
    # c0: 3 and 6 selected -> 9 / 2 = 4.5; c1: only 3 -> 3 (plain mean would give 1);
    # c2: -2, 4 and 1 -> 3 / 3 = 1; c3: nobody -> 0.
    deltas = [{"w": vec(3, 0, -2, 0)}, {"w": vec(6, 3, 4, 0)}, {"w": vec(0, 0, 1, 0)}]
    assert aggregate(deltas, "selected_mean")["w"].tolist() == [4.5, 3.0, 1.0, 0.0]
    assert aggregate(deltas, "mean")["w"].tolist() == [3.0, 1.0, 1.0, 0.0]
    # Dense deltas (every coordinate selected by everyone): the same as the plain mean.
    dense = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    assert selected_mean(dense).tolist() == [2.0, 1.0]


def test_selected_mean_after_median_clipping() -> None:
    # norms 1, 2, 8 -> median 2 -> the third peer [0, 8] is scaled to [0, 2] before averaging.
    # c0: 1 and 2 selected -> 1.5; c1: only the clipped 2 -> 2.
    deltas = [{"w": vec(1, 0)}, {"w": vec(2, 0)}, {"w": vec(0, 8)}]
    assert aggregate(deltas, "selected_mean", clip_to_median=True)["w"].tolist() == [1.5, 2.0]


def test_selected_mean_keeps_dtype_and_leaves_inputs_alone() -> None:
    deltas = [
        {"w": torch.tensor([2.0, 0.0], dtype=torch.bfloat16)},
        {"w": torch.tensor([0.0, 0.0], dtype=torch.bfloat16)},
    ]
    out = aggregate(deltas, "selected_mean")
    assert out["w"].dtype == torch.bfloat16 and out["w"].tolist() == [2.0, 0.0]
    assert deltas[0]["w"].tolist() == [2.0, 0.0]


def test_trimmed_mean_ignores_a_single_huge_outlier() -> None:
    # n = 5, trim 0.2 -> drop floor(1.0) = 1 per side per coordinate.
    # coordinate 0: 1, 2, 3, 4, 1e9 -> mean(2, 3, 4) = 3; coordinate 1: -1e9, 0, 1, 2, 3 -> mean(0, 1, 2) = 1.
    deltas = [{"w": vec(1, 0)}, {"w": vec(2, 1)}, {"w": vec(3, 2)}, {"w": vec(4, 3)}, {"w": vec(1e9, -1e9)}]
    assert aggregate(deltas, "trimmed_mean", 0.2)["w"].tolist() == [3.0, 1.0]


def test_trimmed_mean_cut_sizes() -> None:
    four = torch.tensor([[1.0], [2.0], [3.0], [10.0]])
    assert trimmed_mean(four, 0.2).item() == 4.0  # floor(0.8) = 0: plain mean 16 / 4
    three = torch.tensor([[1.0], [2.0], [30.0]])
    assert trimmed_mean(three, 0.4).item() == 2.0  # floor(1.2) = 1: median
    ten = torch.arange(10.0).unsqueeze(1)
    assert trimmed_mean(ten, 0.2).item() == 4.5  # drop 2 per side: mean(2..7) = 27 / 6
    with pytest.raises(ValueError):
        trimmed_mean(ten, 0.5)


def test_clip_to_median_norm() -> None:
    deltas = [
        {"a": vec(1, 0), "b": vec(10)},
        {"a": vec(0, 2), "b": vec(1)},
        {"a": vec(4, 0), "b": vec(2)},
    ]
    out = clip_to_median_norm(deltas)
    # tensor a: norms 1, 2, 4 -> median 2 -> [4, 0] becomes [2, 0]; others unchanged.
    assert [d["a"].tolist() for d in out] == [[1, 0], [0, 2], [2, 0]]
    # tensor b (independently): norms 10, 1, 2 -> median 2 -> [10] becomes [2].
    assert [d["b"].tolist() for d in out] == [[2], [1], [2]]
    # inputs are not modified
    assert deltas[2]["a"].tolist() == [4, 0] and deltas[0]["b"].tolist() == [10]


def test_clip_to_median_norm_even_count_and_zero() -> None:
    # norms 0, 1, 3, 5 -> median (1 + 3) / 2 = 2 -> 3 becomes 2, 5 becomes 2, zero stays zero.
    deltas = [{"w": vec(0)}, {"w": vec(1)}, {"w": vec(-3)}, {"w": vec(5)}]
    assert [d["w"].item() for d in clip_to_median_norm(deltas)] == [0, 1, -2, 2]


def test_centered_clip_hand_computed() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    # v0 = lower median = 1; tau = 1.
    # iteration 1: diffs -1, 0, 1, 9 -> clipped -1, 0, 1, 1 -> mean 0.25 -> v = 1.25.
    assert centered_clip(x, tau=1.0, iterations=1).item() == pytest.approx(1.25)
    # iteration 2: diffs -1.25, -0.25, 0.75, 8.75 -> clipped -1, -0.25, 0.75, 1 -> mean 0.125 -> v = 1.375.
    assert centered_clip(x, tau=1.0, iterations=2).item() == pytest.approx(1.375)


def test_centered_clip_has_bounded_influence() -> None:
    honest = [vec(0, 0), vec(2, 0), vec(0, 2), vec(2, 2), vec(1, 1)]
    results = []
    for size in (1e3, 1e9):
        deltas = [{"w": h} for h in honest] + [{"w": vec(size, size)}]
        results.append(aggregate(deltas, "centered_clip")["w"])
    # Once clipped, the outlier contributes tau / n in its direction whatever its size.
    torch.testing.assert_close(results[0], results[1])
    assert torch.linalg.vector_norm(results[1] - vec(1, 1)) < 1.0
    # The plain mean would have moved to ~1e9 / 6.
    assert aggregate([{"w": h} for h in honest] + [{"w": vec(1e9, 1e9)}], "mean")["w"][0] > 1e8


def test_centered_clip_identical_inputs() -> None:
    x = torch.tensor([[1.0, 2.0]] * 3)
    assert centered_clip(x).tolist() == [1.0, 2.0]  # tau = 0: the median itself


def test_aggregate_with_on_the_fly_clipping_matches_clipping_first() -> None:
    gen = torch.Generator().manual_seed(0)
    deltas = [
        {"w": torch.randn(3, 4, generator=gen) * (i + 1), "b": torch.randn(4, generator=gen)}
        for i in range(5)
    ]
    for rule in ("mean", "selected_mean", "trimmed_mean", "centered_clip"):
        got = aggregate(deltas, rule, 0.2, clip_to_median=True)
        want = aggregate(clip_to_median_norm(deltas), rule, 0.2)
        for name in ("w", "b"):
            torch.testing.assert_close(got[name], want[name])
            assert got[name].shape == deltas[0][name].shape


def test_dtype_is_preserved() -> None:
    deltas = [{"w": torch.ones(4, dtype=torch.bfloat16) * i} for i in range(3)]
    out = aggregate(deltas, "trimmed_mean", 0.2)
    assert out["w"].dtype == torch.bfloat16
    assert out["w"].tolist() == [1.0] * 4


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="no deltas"):
        aggregate([], "mean")
    with pytest.raises(ValueError, match="unknown"):
        aggregate([{"w": vec(1)}], "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tensors"):
        aggregate([{"w": vec(1)}, {"v": vec(1)}], "mean")
    with pytest.raises(ValueError, match="shape"):
        aggregate([{"w": vec(1)}, {"w": vec(1, 2)}], "mean")


def test_sparse_aggregation_matches_dense_and_needs_no_dense_peer() -> None:
    # Peer 0 sends positions out of order; peer 2 leaves "b" out; scales multiply first.
    peers = [{"w": (torch.tensor([3, 0]), torch.tensor([-2.0, 3.0])), "b": (torch.tensor([0]), torch.tensor([1.0]))},
             {"w": (torch.tensor([0, 1, 2]), torch.tensor([6.0, 3.0, 4.0])), "b": (torch.tensor([0]), torch.tensor([2.0]))},
             {"w": (torch.tensor([2]), torch.tensor([1.0]))}]
    dense = [{"w": torch.tensor([3.0, 0, 0, -2.0]), "b": torch.tensor([1.0])},
             {"w": torch.tensor([6.0, 3.0, 4.0, 0]), "b": torch.tensor([2.0])},
             {"w": torch.tensor([0, 0, 1.0, 0]), "b": torch.tensor([0.0])}]
    shapes = {"w": (4,), "b": (1,)}
    for rule in ("mean", "selected_mean", "trimmed_mean", "centered_clip"):
        for clip in (False, True):
            got = dict(aggregate_sparse(peers, shapes, rule, 0.2, clip_to_median=clip, scales=[1.0, 0.5, 2.0]))
            scaled = [{k: v * f for k, v in d.items()} for d, f in zip(dense, [1.0, 0.5, 2.0], strict=True)]
            want = aggregate(scaled, rule, 0.2, clip_to_median=clip)
            assert all(torch.equal(got[k], want[k]) for k in shapes), (rule, clip)
    assert dict(aggregate_sparse(peers, shapes, "selected_mean"))["w"].tolist() == [4.5, 3.0, 2.5, -2.0]
    with pytest.raises(ValueError, match="twice"):
        list(aggregate_sparse([{"w": (torch.tensor([1, 1]), torch.tensor([1.0, 1.0]))}], shapes, "mean"))
