"""Three tiny-model miners + the outer step: held-out loss falls every window and beats a bound.

In-process (``testing.miner_sim``): real inner training on each miner's assigned pages, real
error feedback and SparseLoCo codec, mean of the decoded deltas applied with the validator's
exact sparse update. Seeded, so the numbers are reproducible.
"""

from __future__ import annotations

import itertools

import pytest

from protocol.hparams import load_hparams
from protocol.pages import default_store
from testing.miner_sim import SimConfig, simulate

pytestmark = pytest.mark.slow


def test_sparseloco_three_miners_heldout_loss_falls(tmp_path_factory: pytest.TempPathFactory) -> None:
    hp = load_hparams().override(**{
        "inner.lr": 3e-3, "inner.steps": 5, "inner.micro_batch": 4, "data.seq_len": 64,
    })
    store = default_store(tmp_path_factory.mktemp("pages"), hp.data)
    result = simulate(hp, store, SimConfig(mode="sparseloco", miners=3, windows=3, outer_lr=1.0, eval_rows=32,
                                           threads=1))
    losses = result.heldout
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 0.25, losses  # ln(4096) = 8.32 at init
    assert losses[-1] < 8.05, losses
    # 1.56% density at 10 bits per kept value: far below the 4 bytes per parameter of a dense delta.
    assert result.bytes_per_miner_window < 0.02 * 4 * 1.4e6
