"""Stage-2 planning: every validator draws the same pages (beacon); only the evaluation order is its own (secret).

Run: ``pytest tests/unit/test_validator_stage2_plan.py -q``
"""

from __future__ import annotations

import torch

from protocol.hparams import HParams
from protocol.pages import assigned_pages
from validator.collect import Collected
from validator.evaluate import RemoteJob
from validator.stage1 import Candidate, Decoded, Stage1Result
from validator.stage2 import Beacon, plan_stage2

HP = HParams().override(**{"data.pages_per_window": 4, "data.eval_pages": 2})
PAGES = 1000
W = 7


def _window(hotkeys: list[str]) -> tuple[Stage1Result, dict[str, Collected]]:
    z = torch.zeros(1, 1)
    s1 = Stage1Result(accepted={hk: Candidate(hk, i, 1.0, f"h{i}", 10, 0, Decoded({}, z.long(), z, 1.0))
                                for i, hk in enumerate(hotkeys)}, median_norm=1.0)
    return s1, {hk: Collected(hk, i, f"file:///store/{hk}") for i, hk in enumerate(hotkeys)}


def test_validators_share_every_page_and_only_the_order_is_secret() -> None:
    hotkeys = [f"miner-{i}" for i in range(5)]
    s1, collected = _window(hotkeys)
    beacon = Beacon(123, bytes(range(32)))
    one = plan_stage2(W, s1, hp=HP, seed=b"\x01" * 32, beacon=beacon, num_pages=PAGES, collected=collected)
    two = plan_stage2(W, s1, hp=HP, seed=b"\x02" * 32, beacon=beacon, num_pages=PAGES, collected=collected)
    assert one.random_page_ids == two.random_page_ids and len(one.random_page_ids) == 2  # the contribution's data
    assert one.control_page_ids == two.control_page_ids and len(one.control_page_ids) == 2
    assert [j.hotkey for j in one.jobs] != [j.hotkey for j in two.jobs]  # each validator's own order
    assert {j.hotkey: j.assigned_page_ids for j in one.jobs} == {j.hotkey: j.assigned_page_ids for j in two.jobs}
    taken = {p for hk in hotkeys for p in assigned_pages(W, hk, HP.data.public_seed, PAGES, 4)}
    assert not taken & set(one.control_page_ids)  # nobody was assigned a control page
    assert not (taken | set(one.control_page_ids)) & set(one.random_page_ids)  # nor a random one
    for job in one.jobs:  # 2 of the 4 assigned pages, chosen by the beacon
        assert set(job.assigned_page_ids) <= set(assigned_pages(W, job.hotkey, HP.data.public_seed, PAGES, 4))
    other = plan_stage2(W, s1, hp=HP, seed=b"\x01" * 32, beacon=Beacon(124, bytes(32)), num_pages=PAGES,
                        collected=collected)
    assert other.control_page_ids != one.control_page_ids and other.random_page_ids != one.random_page_ids
    assert one.beacon == beacon
    remote = one.remote["miner-0"]
    assert remote.control_page_ids == one.control_page_ids
    assert RemoteJob.from_json(remote.to_json()) == remote
    legacy = {k: v for k, v in remote.to_json().items() if k != "control_page_ids"}
    assert RemoteJob.from_json(legacy).control_page_ids == ()  # a job from an older validator still parses
