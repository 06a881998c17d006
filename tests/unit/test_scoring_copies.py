"""Copy and replay detection on sparse top-k deltas."""

from __future__ import annotations

import math

import pytest
import torch

from scoring.copies import (
    PeerSketch,
    count_sketch,
    detect_copies,
    index_overlap,
    pair_similarity,
    value_cosine,
)

CHUNK, K = 4096, 64
OVERLAP, COSINE = 0.6, 0.95  # ScoringParams defaults


def random_delta(
    gen: torch.Generator, n_chunks: int, k: int = K, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent top-k-like support: one random index per stride of ``chunk // k`` (unique, sorted).

    Two such deltas share a slot with probability k / chunk = 1/64, the random top-k overlap.
    """
    stride = chunk // k
    idx = torch.randint(0, stride, (n_chunks, k), generator=gen) + torch.arange(k) * stride
    idx = idx + torch.arange(n_chunks).unsqueeze(1) * chunk
    return idx, torch.randn(n_chunks, k, generator=gen)


def peer(
    hotkey: str, uploaded_at: float, data: tuple[torch.Tensor, torch.Tensor], window: int = 5
) -> PeerSketch:
    return PeerSketch(hotkey, window, uploaded_at, data[0], data[1])


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ------------------------------------------------------------------ exact similarities


def test_index_overlap_hand_computed() -> None:
    a = torch.tensor([[0, 1, 2, 3], [8, 9, 10, 11]])
    b = torch.tensor([[6, 0, 5, 1], [11, 10, 9, 8]])  # unsorted rows are fine
    # chunk 0: {0,1,2,3} ∩ {0,1,5,6} = {0,1} -> 2/4; chunk 1: 4/4. Mean (0.5 + 1) / 2 = 0.75.
    assert index_overlap(a, b) == pytest.approx(0.75)
    assert index_overlap(a, a) == 1.0


def test_index_overlap_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        index_overlap(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(3, 4, dtype=torch.int64))


def test_value_cosine_hand_computed() -> None:
    a = PeerSketch("a", 1, 0.0, torch.tensor([[0, 1]]), torch.tensor([[1.0, 2.0]]))
    b = PeerSketch("b", 1, 0.0, torch.tensor([[1, 3]]), torch.tensor([[2.0, 5.0]]))
    # Only index 1 is shared: dot = 2 * 2 = 4; |a| = sqrt(1 + 4) = sqrt 5, |b| = sqrt(4 + 25) = sqrt 29.
    # cosine = 4 / sqrt(145) = 0.332182...
    assert value_cosine(a, b) == pytest.approx(4 / math.sqrt(145))
    assert pair_similarity(a, b) == pytest.approx((0.5, 4 / math.sqrt(145)))


def test_value_cosine_of_zero_vector_is_zero() -> None:
    a = PeerSketch("a", 1, 0.0, torch.tensor([[0, 1]]), torch.zeros(1, 2))
    assert value_cosine(a, a) == 0.0


def test_pair_similarity_of_different_shapes_is_zero() -> None:
    a = PeerSketch("a", 1, 0.0, torch.tensor([[0, 1]]), torch.ones(1, 2))
    b = PeerSketch("b", 1, 0.0, torch.tensor([[0, 1], [8, 9]]), torch.ones(2, 2))
    assert pair_similarity(a, b) == (0.0, 0.0)


def test_peer_sketch_validates_shapes() -> None:
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        PeerSketch("a", 1, 0.0, torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 4))


def test_from_tensors_offsets_each_tensor_past_the_previous() -> None:
    tensors = {
        "w2": (torch.tensor([[1, 2]]), torch.tensor([[5.0, 6.0]])),
        "w1": (torch.tensor([[0, 3], [4, 7]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]])),
    }
    p = PeerSketch.from_tensors("a", 3, 1.5, tensors, chunk=4)
    # Name order: w1 (2 chunks -> padded size 2 * 4 = 8) then w2 offset by 8.
    assert p.indices.tolist() == [[0, 3], [4, 7], [9, 10]]
    assert p.values.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def test_count_sketch_estimates_track_exact_values(gen: torch.Generator) -> None:
    a, b = random_delta(gen, 200), random_delta(gen, 200)
    pa, pb = peer("a", 0.0, a), peer("b", 0.0, b)
    sa, va = count_sketch(pa, seed=7)
    sb, vb = count_sketch(pb, seed=7)
    # Standard error ~ 1/sqrt(4096) ~ 0.016; allow 5 of them.
    overlap, cosine = pair_similarity(pa, pb)
    assert float(sa @ sb) == pytest.approx(overlap, abs=0.08)
    assert float(va @ vb) == pytest.approx(cosine, abs=0.08)
    # Identical data gives identical sketches; self-collisions leave only ~sqrt(2/4096) of noise.
    assert float(sa @ sa) == pytest.approx(1.0, abs=0.08)
    assert float(va @ va) == pytest.approx(1.0, abs=0.08)


# ------------------------------------------------------------------ detect_copies


def test_identical_upload_flags_the_later_uploader(gen: torch.Generator) -> None:
    data = random_delta(gen, 50)
    found = detect_copies([peer("late", 20.0, data), peer("early", 10.0, data)], [], OVERLAP, COSINE)
    assert set(found) == {"late"}
    f = found["late"]
    assert (f.kind, f.of_hotkey, f.of_window) == ("copy", "early", 5)
    assert f.overlap == 1.0
    assert f.cosine == pytest.approx(1.0)


def test_upload_time_tie_is_broken_by_hotkey(gen: torch.Generator) -> None:
    data = random_delta(gen, 20)
    found = detect_copies([peer("bob", 10.0, data), peer("alice", 10.0, data)], [], OVERLAP, COSINE)
    assert set(found) == {"bob"}
    assert found["bob"].of_hotkey == "alice"


def test_noisy_copy_same_indices_is_flagged(gen: torch.Generator) -> None:
    idx, val = random_delta(gen, 100)
    noisy = val + 0.1 * torch.randn(val.shape, generator=gen)
    found = detect_copies(
        [peer("orig", 1.0, (idx, val)), peer("copier", 2.0, (idx, noisy))], [], OVERLAP, COSINE
    )
    assert set(found) == {"copier"}
    assert found["copier"].overlap == 1.0
    # cos of x and x + 0.1 n for unit-variance x, n is about 1 / sqrt(1.01) ~ 0.995.
    assert found["copier"].cosine == pytest.approx(1 / math.sqrt(1.01), abs=0.01)


def test_partially_reselected_copy_is_flagged_by_overlap(gen: torch.Generator) -> None:
    idx, val = random_delta(gen, 100)
    other_idx, _ = random_delta(gen, 100)
    # Copier keeps the first 48 of 64 slots (75 %) and fills the rest from unrelated data,
    # with all values re-drawn so the cosine is ~0: overlap ~ 0.75 + 0.25/64 >= 0.6.
    c_idx = torch.cat([idx[:, :48], other_idx[:, 48:]], dim=1)
    c_val = torch.randn(val.shape, generator=gen)
    found = detect_copies(
        [peer("orig", 1.0, (idx, val)), peer("copier", 2.0, (c_idx, c_val))], [], OVERLAP, COSINE
    )
    assert set(found) == {"copier"}
    assert 0.75 <= found["copier"].overlap < 0.8


def test_copy_of_the_energy_is_flagged_by_cosine() -> None:
    # Two chunks, k = 2. Both peers share chunk 0 (big values); chunk 1 differs (tiny values).
    a = PeerSketch("a", 5, 1.0, torch.tensor([[0, 1], [8, 9]]), torch.tensor([[10.0, 10.0], [0.1, 0.1]]))
    b = PeerSketch("b", 5, 2.0, torch.tensor([[0, 1], [12, 13]]), torch.tensor([[10.0, 10.0], [0.1, 0.1]]))
    # overlap = (2/2 + 0/2) / 2 = 0.5 < 0.6, but cosine = 200 / (100 + 100 + 0.01 + 0.01) = 0.9999.
    found = detect_copies([a, b], [], OVERLAP, COSINE)
    assert set(found) == {"b"}
    assert found["b"].overlap == 0.5
    assert found["b"].cosine == pytest.approx(200 / 200.02)


def test_independent_deltas_are_not_flagged(gen: torch.Generator) -> None:
    peers = [peer(f"hk{i}", float(i), random_delta(gen, 100)) for i in range(16)]
    history = [peer(f"old{i}", float(i), random_delta(gen, 100), window=4) for i in range(8)]
    assert detect_copies(peers, history, OVERLAP, COSINE) == {}
    # and their true overlap is near the random k/chunk = 1/64 ~ 0.016
    assert index_overlap(peers[0].indices, peers[1].indices) == pytest.approx(1 / 64, abs=0.01)


def test_replay_of_own_earlier_delta(gen: torch.Generator) -> None:
    data = random_delta(gen, 50)
    old = peer("miner", 100.0, data, window=3)
    found = detect_copies([peer("miner", 900.0, data, window=5)], [old], OVERLAP, COSINE)
    assert set(found) == {"miner"}
    f = found["miner"]
    assert (f.kind, f.of_hotkey, f.of_window) == ("replay", "miner", 3)


def test_replay_of_someone_elses_old_delta_is_preferred_over_same_window_copy(gen: torch.Generator) -> None:
    data = random_delta(gen, 50)
    old = peer("victim", 100.0, data, window=4)
    found = detect_copies([peer("x", 1.0, data), peer("y", 2.0, data)], [old], OVERLAP, COSINE)
    # Both re-upload window 4's delta: both are replays of it, not a copy of each other.
    assert {h: (f.kind, f.of_hotkey, f.of_window) for h, f in found.items()} == {
        "x": ("replay", "victim", 4),
        "y": ("replay", "victim", 4),
    }


def test_history_from_the_same_or_a_later_window_is_ignored(gen: torch.Generator) -> None:
    data = random_delta(gen, 20)
    same = peer("other", 0.0, data, window=5)
    later = peer("other2", 0.0, data, window=6)
    assert detect_copies([peer("me", 1.0, data, window=5)], [same, later], OVERLAP, COSINE) == {}


def test_many_copies_all_name_the_earliest_original(gen: torch.Generator) -> None:
    data = random_delta(gen, 30)
    peers = [peer(f"s{i}", float(10 - i), data) for i in range(5)]  # s4 uploaded first (t = 6)
    found = detect_copies(peers, [], OVERLAP, COSINE)
    assert set(found) == {"s0", "s1", "s2", "s3"}
    assert {f.of_hotkey for f in found.values()} == {"s4"}


def test_duplicate_hotkeys_are_rejected(gen: torch.Generator) -> None:
    data = random_delta(gen, 4)
    with pytest.raises(ValueError, match="duplicate"):
        detect_copies([peer("a", 1.0, data), peer("a", 2.0, data)], [], OVERLAP, COSINE)


def test_empty_window() -> None:
    assert detect_copies([], [], OVERLAP, COSINE) == {}


def test_seed_changes_the_hash_not_the_verdict(gen: torch.Generator) -> None:
    data = random_delta(gen, 40)
    peers = [peer("a", 1.0, data), peer("b", 2.0, data), peer("c", 3.0, random_delta(gen, 40))]
    verdicts = [set(detect_copies(peers, [], OVERLAP, COSINE, seed=s)) for s in (0, 1, 2**40)]
    assert verdicts == [{"b"}] * 3


def test_scales_to_128_peers_of_a_tiny_model(gen: torch.Generator) -> None:
    # 128 peers x 1,000 chunks x 64 kept values, plus 64 uploads of history; three planted copies.
    n_chunks, n_peers, n_old = 1000, 128, 64
    idx, val = random_delta(gen, n_chunks * (n_peers + n_old))  # one draw, split per peer
    idx = idx.view(n_peers + n_old, n_chunks, K) - (torch.arange(n_peers + n_old) * n_chunks * CHUNK).view(
        -1, 1, 1
    )
    val = val.view(n_peers + n_old, n_chunks, K)
    peers = [peer(f"hk{i:03d}", float(i), (idx[i], val[i])) for i in range(n_peers)]
    history = [
        peer(f"old{j:03d}", float(j), (idx[n_peers + j], val[n_peers + j]), window=4) for j in range(n_old)
    ]
    src = peers[10]
    noise = 0.05 * torch.randn(n_chunks, K, generator=gen)
    peers[50] = PeerSketch("hk050", 5, 50.0, src.indices, src.values + noise)
    peers[90] = PeerSketch("hk090", 5, 90.0, src.indices, 3.0 * src.values)
    peers[100] = PeerSketch("hk100", 5, 100.0, history[7].indices, history[7].values)
    found = detect_copies(peers, history, OVERLAP, COSINE)
    assert {h: (f.kind, f.of_hotkey) for h, f in found.items()} == {
        "hk050": ("copy", "hk010"),
        "hk090": ("copy", "hk010"),
        "hk100": ("replay", "old007"),
    }
