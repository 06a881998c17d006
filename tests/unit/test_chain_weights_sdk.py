"""Weights through the Bittensor backend: the SDK's u16 conversion and read, and commit-reveal.

The backend hands float weights to the SDK's ``SetWeights`` intent, which converts them to
u16 itself and picks plaintext or timelocked commit-reveal from the subnet's
``CommitRevealWeightsEnabled``. These tests pin, against ``tests.unit.fake_substrate``, that
the SDK's conversion is ``scoring.weights.to_u16`` (so what the scoring tests prove about
``to_u16`` holds for what is sent), that the backend's read agrees with what was sent, and
that a subnet with commit-reveal on gets a timelocked commit and never a plaintext set. The
same calls are encoded against a real runtime's metadata in ``tests/unit/test_chain_metadata.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from bittensor.sp_core import Keypair

from chain.bittensor_chain import BittensorChain
from protocol.hparams import WeightParams
from scoring.weights import compute_weights, to_u16
from tests.unit.fake_substrate import FakeSubstrate

KEYS = [Keypair.create_from_uri(f"//weights-{i}") for i in range(3)]


class RecordingSubstrate(FakeSubstrate):
    """``FakeSubstrate`` that also records each storage read (name, params, block hash)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queries: list[tuple[str, list, str | None]] = []

    async def query(self, module: str, name: str, params: list | None = None, block_hash: str | None = None) -> Any:
        self.queries.append((name, list(params or []), block_hash))
        return await super().query(module, name, params, block_hash)


@pytest.fixture
def fake() -> RecordingSubstrate:
    return RecordingSubstrate([k.ss58_address for k in KEYS], [100.0, 0.0, 0.0])


@pytest.fixture
def chain(fake: FakeSubstrate) -> Iterator[BittensorChain]:
    c = BittensorChain("ws://127.0.0.1:9944", substrate=fake, sleep=lambda _: None)
    yield c
    c.close()


def _cases() -> list[dict[int, float]]:
    rng = random.Random(13)
    cases: list[dict[int, float]] = [
        {3: 0.125, 1: 0.5, 2: 0.375},  # the hand-computed case of tests/unit/test_scoring_weights.py
        {1: 0.5, 2: 0.5},  # ties
        {1: 1.0, 2: 1e-6, 3: 1 / 131070},  # values that round to 0 (dropped by the SDK, kept as 0 by to_u16)
    ]
    for _ in range(20):  # what the validator actually sends: compute_weights of random scores
        scores = {uid: rng.choice([0.0, rng.random(), rng.random() * 1e-3]) for uid in range(1, 40)}
        params = WeightParams(top_n=rng.randint(1, 32), power=rng.choice([1.0, 2.0]), burn_uid=None,
                              burn_fraction=0.0)
        if weights := compute_weights(scores, params):
            cases.append(weights)
    return cases


@pytest.mark.parametrize("weights", _cases())
def test_the_sdk_sends_scoring_to_u16(chain: BittensorChain, fake: FakeSubstrate, weights: dict[int, float]) -> None:
    uids = sorted(weights)
    chain.set_weights(KEYS[0], 1, uids, [weights[u] for u in uids], version_key=3)
    module, function, params = fake.submitted[-1]
    assert (module, function) == ("SubtensorModule", "set_mechanism_weights")
    expected = [(u, v) for u, v in zip(*to_u16(weights), strict=True) if v > 0]
    assert list(zip(params["dests"], params["weights"], strict=True)) == expected
    # The read is the SDK's: the row as fractions of its sum, and only what was given.
    total = sum(v for _, v in expected)
    assert chain.weights(1) == {0: {u: v / total for u, v in expected}}


def test_the_weights_read_drops_zero_entries_and_empty_rows(chain: BittensorChain, fake: FakeSubstrate) -> None:
    fake.weights = {0: [(1, 3), (2, 1), (3, 0)], 1: [(0, 0)], 2: []}
    assert chain.weights(1) == {0: {1: 0.75, 2: 0.25}}


def test_commit_reveal_on_sends_a_timelocked_commit(chain: BittensorChain, fake: RecordingSubstrate) -> None:
    fake.commit_reveal = True
    chain.set_weights(KEYS[0], 1, [1, 2], [0.25, 0.75], version_key=7)
    # Read for this subnet at the head, on this call (not cached from a construction-time read).
    head_hash = f"0x{fake.head:064x}"
    assert ("CommitRevealWeightsEnabled", [1], head_hash) in fake.queries
    [(module, function, params)] = fake.submitted
    assert (module, function) == ("SubtensorModule", "commit_timelocked_mechanism_weights")
    assert set(params) == {"netuid", "mecid", "commit", "reveal_round", "commit_reveal_version"}
    assert (params["netuid"], params["mecid"], params["commit_reveal_version"]) == (1, 0, 4)
    assert params["reveal_round"] > 0 and len(bytes(params["commit"])) > 64  # drand-timelocked ciphertext
    assert chain.weights(1) == {}  # nothing readable until the chain reveals the commit
    assert chain.metagraph(1).last_update[0] == fake.head  # but the commit counts as this update

    fake.commit_reveal = False  # the subnet owner turns it off: the next set is plaintext again
    fake.head += 1
    chain.set_weights(KEYS[0], 1, [1, 2], [0.25, 0.75], version_key=7)
    assert fake.submitted[-1][:2] == ("SubtensorModule", "set_mechanism_weights")
    assert set(chain.weights(1)[0]) == {1, 2}
