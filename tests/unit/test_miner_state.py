"""Miner state persistence: atomic commits, checksums, optimizer round trip, no pickle."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from miner.state import MinerState, Progress, StateError, flatten_tree, unflatten_tree
from miner.train import make_optimizer
from protocol.hparams import InnerParams


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))


def _step(model: torch.nn.Module, opt) -> None:
    opt.zero_grad()
    model(torch.randn(3, 4)).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_optimizer_state_round_trip(tmp_path, kind: str) -> None:
    model = _model()
    opt = make_optimizer(model, InnerParams(optimizer=kind, lr=1e-2))
    _step(model, opt)
    state = MinerState(tmp_path, "hk")
    ef = {"w": torch.arange(6, dtype=torch.float32).view(2, 3)}
    name, digest = state.write_tensors(3, ef, opt.state_dict())
    state.commit(Progress(hotkey="hk", tensors=name, tensors_sha256=digest, trained_window=3))

    progress, ef2, opt_state = MinerState(tmp_path, "hk").load()
    assert progress.trained_window == 3
    assert torch.equal(ef2["w"], ef["w"])
    model2 = copy.deepcopy(model)
    opt2 = make_optimizer(model2, InnerParams(optimizer=kind, lr=1e-2))
    opt2.load_state_dict(opt_state)
    # Same weights and restored moments: the next step is bit-identical.
    torch.manual_seed(1)
    _step(model, opt)
    torch.manual_seed(1)
    _step(model2, opt2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_tree_preserves_int_keys_and_tuples() -> None:
    tree = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.95), "params": [0]}]}
    tensors: dict[str, torch.Tensor] = {}
    back = unflatten_tree(json.loads(json.dumps(flatten_tree(tree, tensors))), tensors)
    assert list(back["state"]) == [0]
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)


def test_fresh_directory_gives_fresh_progress(tmp_path) -> None:
    progress, ef, opt = MinerState(tmp_path / "new", "hk").load()
    assert progress.last_uploaded_window is None and ef == {} and opt is None


def test_corrupted_tensor_file_is_detected(tmp_path) -> None:
    state = MinerState(tmp_path, "hk")
    name, digest = state.write_tensors(1, {"w": torch.ones(3)}, None)
    state.commit(Progress(hotkey="hk", tensors=name, tensors_sha256=digest))
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="checksum"):
        state.load()


def test_wrong_hotkey_is_refused(tmp_path) -> None:
    MinerState(tmp_path, "a").commit(Progress(hotkey="a"))
    with pytest.raises(StateError, match="belongs to hotkey a"):
        MinerState(tmp_path, "b").load()


def test_commit_removes_leftovers_of_interrupted_steps(tmp_path) -> None:
    state = MinerState(tmp_path, "hk")
    old, _ = state.write_tensors(1, {"w": torch.ones(1)}, None)
    new, digest = state.write_tensors(2, {"w": torch.zeros(1)}, None)
    (tmp_path / ".progress.json.123.tmp").write_text("half-written")
    state.commit(Progress(hotkey="hk", tensors=new, tensors_sha256=digest))
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"progress.json", new}
    assert old not in names


def test_pending_payload_round_trip(tmp_path) -> None:
    state = MinerState(tmp_path, "hk")
    pname, pdigest = state.write_payload(7, b"signed-bytes")
    progress = Progress(hotkey="hk", pending_window=7, pending_payload=pname, pending_sha256=pdigest)
    state.commit(progress)
    loaded, _, _ = state.load()
    assert state.pending_payload(loaded) == b"signed-bytes"
