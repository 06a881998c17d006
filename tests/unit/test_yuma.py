"""Yuma Consensus against hand-computed cases (see chain/yuma.py for the variant)."""

from __future__ import annotations

import numpy as np
import pytest

from chain.yuma import MINER_SHARE, OWNER_SHARE, VALIDATOR_SHARE, stake_weighted_consensus, yuma


def _matrix(n: int, rows: dict[int, dict[int, float]]) -> np.ndarray:
    w = np.zeros((n, n))
    for i, row in rows.items():
        for j, v in row.items():
            w[i, j] = v
    return w


def test_colluding_minority_validator_is_clipped_to_consensus() -> None:
    # uids 0, 1 honest validators (40% stake each), uid 2 a colluder (20%) who pushes
    # its friend, miner uid 4, to 1.0. Honest weights: miner 3 -> 0.8, miner 4 -> 0.2.
    w = _matrix(5, {0: {3: 0.8, 4: 0.2}, 1: {3: 0.8, 4: 0.2}, 2: {4: 1.0}})
    stake = np.array([40.0, 40.0, 20.0, 0.0, 0.0])
    r = yuma(w, stake, epoch_emission=1.0)

    # Consensus: miner 3 -> 0.8 (80% of stake set >= 0.8); miner 4 -> 0.2, because 1.0
    # is backed by only 20% of stake but 0.2 by 100%.
    np.testing.assert_allclose(r.consensus, [0, 0, 0, 0.8, 0.2])
    # The colluder's 1.0 is clipped to 0.2.
    np.testing.assert_allclose(r.clipped_weights[2], [0, 0, 0, 0, 0.2])
    # Ranks: miner 3 = .4*.8 + .4*.8 = .64; miner 4 = .4*.2 + .4*.2 + .2*.2 = .20 (not .36).
    np.testing.assert_allclose(r.ranks, [0, 0, 0, 0.64, 0.20])
    np.testing.assert_allclose(r.incentive, [0, 0, 0, 16 / 21, 5 / 21])
    # Bonds column-normalised: miner 3 -> (.5, .5, 0); miner 4 -> (.4, .4, .2).
    # Dividends: honest = .5*16/21 + .4*5/21 = 10/21; colluder = .2*5/21 = 1/21 (< its 20% stake).
    np.testing.assert_allclose(r.dividends, [10 / 21, 10 / 21, 1 / 21, 0, 0])
    np.testing.assert_allclose(
        r.emission,
        [VALIDATOR_SHARE * 10 / 21, VALIDATOR_SHARE * 10 / 21, VALIDATOR_SHARE / 21,
         MINER_SHARE * 16 / 21, MINER_SHARE * 5 / 21],
    )
    assert r.owner_emission == pytest.approx(OWNER_SHARE)
    assert r.emission.sum() + r.owner_emission == pytest.approx(1.0)


def test_consensus_includes_ties_at_exactly_kappa() -> None:
    # Two validators of equal stake: 1.0 is backed by exactly half the stake -> consensus 1.0.
    w = np.array([[1.0, 0.5], [0.5, 0.25]])
    assert stake_weighted_consensus(w, np.array([0.5, 0.5])).tolist() == [1.0, 0.5]
    # With 49% behind the higher value, consensus drops to the lower one.
    assert stake_weighted_consensus(w, np.array([0.49, 0.51])).tolist() == [0.5, 0.25]


def test_weights_are_row_normalised_and_self_weights_dropped() -> None:
    # Validator 0 gives itself 3 and miner 2 weight 1: after dropping the self weight its
    # row is (0, 0, 1). Validator 1 (no stake, no permit) is ignored entirely.
    w = _matrix(3, {0: {0: 3.0, 2: 1.0}, 1: {1: 5.0, 0: 5.0}})
    r = yuma(w, np.array([10.0, 0.0, 0.0]))
    np.testing.assert_allclose(r.incentive, [0, 0, 1])
    np.testing.assert_allclose(r.dividends, [1, 0, 0])


def test_no_weights_pays_validators_by_stake_and_no_miners() -> None:
    r = yuma(np.zeros((3, 3)), np.array([3.0, 1.0, 0.0]), epoch_emission=10.0)
    np.testing.assert_allclose(r.incentive, 0)
    np.testing.assert_allclose(r.emission, [VALIDATOR_SHARE * 7.5, VALIDATOR_SHARE * 2.5, 0])


def test_ema_bonds_reward_the_validator_who_backed_a_miner_first() -> None:
    # Epoch 1: validator 0 backs miner 2, validator 1 backs miner 3 (equal stake).
    stake = np.array([1.0, 1.0, 0.0, 0.0])
    r1 = yuma(_matrix(4, {0: {2: 1.0}, 1: {3: 1.0}}), stake)
    np.testing.assert_allclose(r1.bonds[:2, 2:], [[1, 0], [0, 1]])
    # Epoch 2: both back miner 2. dB column 2 = (.5, .5); B = .1*dB + .9*B1 = (.95, .05).
    r2 = yuma(_matrix(4, {0: {2: 1.0}, 1: {2: 1.0}}), stake, bonds_prev=r1.bonds)
    np.testing.assert_allclose(r2.bonds[:2, 2], [0.95, 0.05])
    np.testing.assert_allclose(r2.incentive, [0, 0, 1, 0])
    np.testing.assert_allclose(r2.dividends, [0.95, 0.05, 0, 0])


def test_explicit_permit_excludes_staked_non_validator() -> None:
    w = _matrix(3, {0: {2: 1.0}, 1: {2: 0.0, 0: 1.0}})
    r = yuma(w, np.array([1.0, 5.0, 0.0]), permit=np.array([True, False, False]))
    np.testing.assert_allclose(r.incentive, [0, 0, 1])


def test_rejects_bad_shapes_and_negative_values() -> None:
    with pytest.raises(ValueError):
        yuma(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError):
        yuma(-np.ones((2, 2)), np.ones(2))


# ---------------------------------------------------------------------------- agreement


def test_spearman_handles_ties_and_constants() -> None:
    from chain.agreement import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Five zero weights and three paid miners, the top two swapped: still close agreement.
    assert spearman([0, 0, 0, 0, 0, 0.1, 0.3, 0.6], [0, 0, 0, 0, 0, 0.1, 0.6, 0.3]) == pytest.approx(31 / 32)
    assert spearman([0, 0], [0, 0]) == 1.0 and spearman([0, 0], [0, 1]) == 0.0


def test_validator_trust_is_the_weight_under_consensus() -> None:
    from chain.agreement import validator_trust, weight_vector

    uids = [3, 4, 5]
    rows = {0: weight_vector({3: 0.5, 4: 0.5}, uids), 1: weight_vector({3: 0.5, 4: 0.5}, uids),
            2: weight_vector({5: 1.0}, uids)}
    trust = validator_trust(rows, {0: 400.0, 1: 300.0, 2: 300.0})
    assert trust[0] == pytest.approx(1.0) and trust[1] == pytest.approx(1.0)
    assert trust[2] == pytest.approx(0.0)  # a minority's favourite is clipped to the majority's 0


def test_weight_overlap_is_shared_mass_and_not_moved_by_a_near_zero_miner() -> None:
    from chain.agreement import pairwise_agreement, spearman, weight_overlap

    a, b = [0, 0, 0, 0.1, 0.3, 0.6], [0, 0, 0, 0, 0.3, 0.7]
    assert weight_overlap(a, b) == pytest.approx(0.9)  # 0 + 0.3 + 0.6
    assert spearman(a, b) < 0.9  # the rank view calls this a clear disagreement
    assert weight_overlap([1, 0], [0, 1]) == 0.0 and weight_overlap([2, 2], [1, 1]) == pytest.approx(1.0)
    assert weight_overlap([0, 0], [0, 0]) == 1.0 and weight_overlap([0, 0], [0, 1]) == 0.0
    pairs = pairwise_agreement({"v1": {5: {3: 1.0, 4: 1.0}}, "v2": {5: {3: 1.0}, 6: {4: 1.0}}}, [3, 4])
    assert [(p.epoch, p.a, p.b, p.overlap) for p in pairs] == [(5, "v1", "v2", 0.5)]


def test_standings_rank_validators_by_stake_and_measure_against_the_reference() -> None:
    from chain.agreement import standings

    uids, hotkeys, stakes = [0, 1, 2, 3, 4, 5], ["v1", "v2", "v3", "m1", "m2", "m3"], [1000, 700, 500, 0, 0, 0]
    onchain = {0: {3: 0.6, 4: 0.4}, 1: {3: 0.5, 4: 0.5}, 2: {5: 1.0}}
    rows = standings(uids, hotkeys, stakes, onchain, {"v1", "v2", "v3", "gone"}, reference="v1")
    assert [r.hotkey for r in rows] == ["v1", "v2", "v3"]  # highest stake first; an unregistered one dropped
    v1, v2, v3 = rows
    assert v1.overlap == pytest.approx(1.0) and v1.rho == pytest.approx(1.0)
    assert v2.overlap == pytest.approx(0.9)  # min(0.6, 0.5) + min(0.4, 0.5)
    assert v3.overlap == 0.0 and v3.validator_trust == pytest.approx(0.0)  # a minority's favourite is clipped
    assert v1.validator_trust == pytest.approx(1.0, abs=0.11)
    quiet = standings(uids, hotkeys, stakes, {0: {3: 1.0}}, {"v1", "v2"}, reference="v2")
    assert [(r.has_weights, r.overlap) for r in quiet] == [(True, None), (False, None)]


def test_localnet_view_agreement_reads_trust_and_lowest_rho(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from gauntlet.localnet_view import Validators

    mg = SimpleNamespace(uids=[0, 1, 2, 3, 4], hotkeys=["a", "b", "c", "m1", "m2"], stakes=[1000, 700, 500, 0, 0])
    weights = {0: {3: 0.7, 4: 0.3}, 1: {3: 0.6, 4: 0.4}, 2: {3: 0.2, 4: 0.8}}
    chain = SimpleNamespace(metagraph=lambda netuid: mg, weights=lambda netuid: weights)
    nodes = [SimpleNamespace(name=n, db_url=f"sqlite:///{tmp_path / n}.db") for n in ("validator", "v2", "v3")]
    view = Validators(nodes, {"validator": "a", "v2": "b", "v3": "c"})
    try:
        trust, rho = view.agreement(chain, 1)
    finally:
        view.close()
    assert trust["validator"] > 0.85 > 0.7 > trust["v3"]  # v3 favours what the stake majority does not
    assert rho == {"validator": -1.0, "v2": -1.0, "v3": -1.0}  # each one's lowest: against the other side
