"""The adversary-mode registry (``testing.modes``), its runner, and the adversaries in ``testing.adversaries``.

Modes are found through entry points and reach the real miner command only as its miner
factory (``testing.run --mode``), so these tests pin that every declared mode resolves, that
a mode can be added without editing the miner, and that the runner's factory is the one the
command builds with. (That production code never imports the harness is in
``test_layering.py``.) The adversaries' core choices (chunk dealing, scaling, pages) are
checked as pure functions with the real codec and page assignment.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import typer

from miner.compress import Compressor
from miner.loop import Miner
from protocol import codec
from protocol.hparams import HParams
from protocol.pages import assigned_pages, training_count
from testing import modes
from testing.adversaries import MultiCopy, PartialPages, Scaled, deal_chunks, partial_pages

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["entry-points"][modes.ENTRY_POINT_GROUP]


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private copy of the in-process registrations, so a test's ``register`` does not leak."""
    monkeypatch.setattr(modes, "_registered", dict(modes._registered))


# ----------------------------------------------------------------------------- the registry


def test_every_declared_mode_resolves_through_entry_points() -> None:
    declared = _declared()
    assert {"copycat", "multi-copy", "partial-pages", "scaled-0.3", "scaled-10", "nan"} <= set(declared)
    assert set(modes.names()) >= set(declared)
    assert "honest" not in modes.names()  # the honest miner is the production command's, not a mode
    for name, value in declared.items():
        cls = modes.resolve(name)
        assert issubclass(cls, Miner), name
        assert f"{cls.__module__}:{cls.__qualname__}" == value


def test_target_needs_are_class_attributes() -> None:
    need = {n: getattr(modes.resolve(n), "needs_targets", 0) for n in modes.names()}
    assert need["multi-copy"] == 2
    assert need["copycat"] == need["copycat-noise"] == need["sybil"] == 1
    assert need["replay"] == need["poisoner"] == 0


def test_a_registered_mode_is_listed_and_built(registry: None) -> None:
    class Probe:
        needs_targets = 2
        targets: list[str] = []

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args, self.kwargs, self.configured = args, kwargs, None

        def configure(self, targets: list[str]) -> None:
            self.configured = list(targets)

    modes.register("test-probe", Probe)
    assert "test-probe" in modes.names()
    assert modes.resolve("test-probe") is Probe
    with pytest.raises(ValueError, match="needs 2 --target"):
        modes.build_miner("test-probe", 1, targets=["a"])
    built: Any = modes.build_miner("test-probe", 1, x=2, targets=["a", "", "b"])
    assert (built.args, built.kwargs, built.targets, built.configured) == ((1,), {"x": 2}, ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="needs 2 --target"):
        modes.factory("test-probe", ["a"])  # refused before the command connects to anything
    made: Any = modes.factory("test-probe", ["a", "b"])(1)
    assert (made.args, made.targets) == ((1,), ["a", "b"])


def test_unknown_mode_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown miner mode 'no-such-mode'") as info:
        modes.resolve("no-such-mode")
    for name in ("copycat", "multi-copy", "scaled-3"):
        assert name in str(info.value)


def test_target_option_takes_repeats_and_commas() -> None:
    assert modes.split_targets(None) == []
    assert modes.split_targets(["a", "b, c", " ,d"]) == ["a", "b", "c", "d"]


# ----------------------------------------------------------------------------- the runner


class _Built(Exception):
    """Raised by the stand-in ``_build``: the command got as far as building its miner."""


def _run_capturing_factory(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Any:
    """``testing.run.main(argv)`` up to the miner command's build step; returns the factory it was given."""
    from miner import cli as miner_cli
    from testing import run

    seen: list[Any] = []

    def build(req: Any, factory: Any = None) -> Any:
        seen.append(factory)
        raise _Built

    monkeypatch.setattr(miner_cli, "_build", build)
    with pytest.raises(_Built):
        run.main(argv)
    return seen[0]


def test_runner_hands_the_adversary_factory_to_the_real_miner_command(monkeypatch: pytest.MonkeyPatch) -> None:
    factory = _run_capturing_factory(monkeypatch, ["--mode", "copycat", "--target", "5Victim", "--",
                                                   "miner", "run", "--hotkey", "h"])
    assert factory.func is modes.build_miner and factory.args == ("copycat",)
    assert factory.keywords == {"targets": ["5Victim"]}
    assert _run_capturing_factory(monkeypatch, ["--", "miner", "run"]) is None  # no --mode: the honest miner


@pytest.mark.parametrize("argv, message", [
    (["--mode", "copycat", "--", "miner", "run"], "needs 1 --target"),
    (["--mode", "no-such-mode", "--", "miner", "run"], "unknown miner mode"),
    (["--mode", "poisoner", "--", "validator", "run"], "miner run"),
    (["--target", "x", "--", "miner", "run"], "--target needs --mode"),
    (["--crash-at", "nowhere", "--", "miner", "run"], "invalid choice"),
    (["miner", "run"], "separate the hooks"),
])
def test_runner_refuses_bad_hooks_before_starting(argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from testing import run

    with pytest.raises(SystemExit) as info:
        run.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_localnet_plans_every_mode_with_its_victims() -> None:
    from gauntlet.localnet import plan_peers

    peers = {p.name: p for p in plan_peers(3, "all")}
    assert [(p.name, p.steps) for p in peers.values() if p.kind == "honest"] == [
        ("honest-2", 2), ("honest-4", 4), ("honest-8", 8)]
    assert peers["multi-copy"].targets == ("honest-8", "honest-4")
    assert peers["copycat"].targets == peers["replay"].targets == ("honest-8",)
    assert peers["scaled-3"].steps == peers["partial-pages"].steps == 2 and peers["wrong-pages"].steps == 1
    assert peers["sybil-b"].targets == ("sybil-a",)
    assert peers["scaled-3"].targets == ()
    assert {p.mode for p in peers.values() if p.kind == "adversary"} == set(modes.names())
    with pytest.raises(typer.BadParameter, match="--honest 2"):
        plan_peers(1, "multi-copy")
    with pytest.raises(typer.BadParameter, match=r"valid: .*partial-pages"):
        plan_peers(1, "copycat,bogus")
    # --honest-steps 1,2,4,8,16,32: the effort ladder of issue 11
    ladder = plan_peers(3, "multi-copy", [32, 1, 2, 4, 8, 16])
    assert [(p.name, p.steps) for p in ladder if p.kind == "honest"] == [
        ("honest-1", 1), ("honest-2", 2), ("honest-4", 4), ("honest-8", 8), ("honest-16", 16), ("honest-32", 32)]
    assert next(p for p in ladder if p.mode == "multi-copy").targets == ("honest-32", "honest-16")
    with pytest.raises(typer.BadParameter, match="distinct"):
        plan_peers(0, "none", [2, 2])


def test_localnet_starts_adversaries_through_the_harness(tmp_path: Path) -> None:
    """Honest miners run the console script; adversaries the same command under ``testing.run --mode``."""
    import sys

    from gauntlet.localnet import LocalNet, plan_peers

    net = LocalNet(tmp_path, block_time=0.5, blocks_per_window=60, grace_s=2.0, api_port=0, seed=0)
    peers = {p.name: p for p in plan_peers(2, "multi-copy,nan")}
    net.hotkeys = {name: f"5{name}" for name in peers}
    assert net.peer_launcher(peers["honest-4"]) == [sys.executable, "-m", "gauntlet"]
    assert net.peer_launcher(peers["multi-copy"]) == [
        sys.executable, "-m", "testing.run", "--mode", "multi-copy", "--target", "5honest-4", "--target", "5honest-2",
        "--"]
    assert net.peer_launcher(peers["nan"])[-3:] == ["--mode", "nan", "--"]


# ----------------------------------------------------------------------------- multi-copy


CFG = codec.CodecConfig(chunk=64, topk=4)
SHAPES = {"w": (10, 30), "b": (20,), "v": (64,)}  # 5 chunks (last padded), 1 short chunk, 1 full chunk


def _sparse_delta(seed: int) -> dict[str, torch.Tensor]:
    """What a decoded upload is: top-k per chunk, 2-bit values."""
    g = torch.Generator().manual_seed(seed)
    return codec.decode(codec.encode({n: torch.randn(s, generator=g) for n, s in SHAPES.items()}, CFG), CFG)


def _chunks(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(-1)
    n = -(-flat.numel() // CFG.chunk)
    return torch.nn.functional.pad(flat, (0, n * CFG.chunk - flat.numel())).view(n, CFG.chunk)


@pytest.mark.parametrize("n_sources", [2, 3])
def test_chunks_are_dealt_round_robin_from_one_source_each(n_sources: int) -> None:
    sources = [_sparse_delta(seed) for seed in range(n_sources)]
    mixed = deal_chunks(sources, CFG.chunk)
    assert {n: tuple(t.shape) for n, t in mixed.items()} == SHAPES
    turn = 0
    for name in SHAPES:
        mine = _chunks(mixed[name])
        theirs = [_chunks(s[name]) for s in sources]
        for c in range(mine.shape[0]):
            support = mine[c] != 0
            owners = [i for i, t in enumerate(theirs) if torch.equal(t[c] != 0, support)]
            assert owners == [turn % n_sources], (name, c)
            assert torch.equal(mine[c], theirs[turn % n_sources][c])
            assert int(support.sum()) <= CFG.topk
            turn += 1
    again = codec.decode(codec.encode(mixed, CFG), CFG)  # the re-encoding keeps the dealt support
    for name in SHAPES:
        assert torch.equal(again[name] != 0, mixed[name] != 0)


def test_multi_copy_uses_the_targets_that_uploaded() -> None:
    hp = HParams().override(**{"codec.chunk": CFG.chunk, "codec.topk": CFG.topk})
    uploads = {"a": codec.encode(_sparse_delta(1), CFG), "c": codec.encode(_sparse_delta(3), CFG)}
    miner: Any = MultiCopy.__new__(MultiCopy)
    miner.targets, miner.compressor, miner.deadline = ["a", "b", "c"], Compressor(hp), lambda w: 0.0
    miner.fetch_all = lambda hotkeys, window, until: {h: uploads[h] for h in hotkeys if h in uploads}
    assert miner.train_delta(5, {}, torch.zeros(0)) == {}
    expected = deal_chunks([codec.decode(uploads["a"], CFG), codec.decode(uploads["c"], CFG)], CFG.chunk)
    got = codec.decode(miner.encode_delta(5, {}), CFG)
    for name in SHAPES:
        assert torch.equal(got[name] != 0, expected[name] != 0)
    miner.fetch_all = lambda hotkeys, window, until: {}
    assert miner.train_delta(6, {}, torch.zeros(0)) is None  # nobody uploaded: nothing to send


def test_fetch_all_takes_whoever_uploads_before_the_deadline() -> None:
    import time

    from bittensor.sp_core import Keypair

    from protocol.storage import ObjectNotFound, delta_key
    from protocol.wire import DeltaMeta, pack_delta

    hp = HParams().override(**{"codec.chunk": CFG.chunk, "codec.topk": CFG.topk})
    alice, bob = Keypair.create_from_uri("//Alice"), Keypair.create_from_uri("//Bob")
    meta = DeltaMeta(window=4, hotkey=alice.ss58_address, base_model_hash="ab" * 32, spec_version=hp.spec_version)
    blobs = {delta_key(4, alice.ss58_address): pack_delta(codec.encode(_sparse_delta(1), CFG), meta, CFG, alice)}

    def get(key: str, *, max_bytes: int) -> bytes:
        if key not in blobs:
            raise ObjectNotFound("fake", key)
        return blobs[key]

    miner: Any = MultiCopy.__new__(MultiCopy)
    miner.hp, miner.compressor = hp, Compressor(hp)
    miner.opt = SimpleNamespace(netuid=1, storage_url="file://mine")
    miner.chain = SimpleNamespace(commitments=lambda netuid: {})
    miner.storage = SimpleNamespace(get=get)
    miner.model_shapes = lambda: SHAPES
    t0 = time.time()
    taken = miner.fetch_all([alice.ss58_address, bob.ss58_address], 4, until=t0 + 1.0)
    assert list(taken) == [alice.ss58_address] and time.time() - t0 < 2.0
    assert miner.fetch_all([bob.ss58_address], -1, until=t0) == {}


# ----------------------------------------------------------------------------- scaled


def test_scaled_sends_k_times_the_honest_delta() -> None:
    hp = HParams()
    g = torch.Generator().manual_seed(7)
    delta = {"w": torch.randn(64, 200, generator=g) * 1e-3, "b": torch.randn(300, generator=g) * 1e-3}
    honest: Any = Miner.__new__(Miner)
    honest.compressor = Compressor(hp)
    base = codec.decode(honest.encode_delta(0, delta), honest.compressor.cfg)
    for name in ("scaled-0.3", "scaled-1.5", "scaled-3", "scaled-10"):
        cls = modes.resolve(name)
        assert issubclass(cls, Scaled) and cls.factor == float(name.removeprefix("scaled-"))
        miner: Any = cls.__new__(cls)
        miner.compressor = Compressor(hp)  # a fresh error-feedback buffer, like the honest one's
        sent = codec.decode(miner.encode_delta(0, delta), miner.compressor.cfg)
        for n in delta:
            assert torch.allclose(sent[n], cls.factor * base[n], rtol=1e-5, atol=0), (name, n)


# ----------------------------------------------------------------------------- partial pages


@pytest.mark.parametrize("count", [2, 4, 5])
def test_partial_pages_trains_on_half_of_its_own_pages(count: int) -> None:
    hotkey, seed, num_pages = "5PartialPagesHotkey", "gauntlet-v1", 400
    own = set(assigned_pages(9, hotkey, seed, num_pages, count))
    ids = partial_pages(9, hotkey, seed, num_pages, count)
    assert len(ids) == len(set(ids)) == count
    assert sum(i in own for i in ids) == count // 2
    assert all(0 <= i < training_count(num_pages) for i in ids)
    assert ids == partial_pages(9, hotkey, seed, num_pages, count)  # deterministic
    miner: Any = PartialPages.__new__(PartialPages)
    miner.hp = HParams().override(**{"data.pages_per_window": count, "data.public_seed": seed})
    miner.hotkey = hotkey
    miner.pages = SimpleNamespace(num_pages=num_pages, pages=lambda pages: torch.tensor(pages))
    assert miner.window_tokens(9).tolist() == ids

