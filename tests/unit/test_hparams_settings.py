"""Hyper-parameter and settings loading: strict, versioned, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.hparams import SPEC_VERSION, HParams, HParamsError, load_hparams
from protocol.settings import SettingsError, load_settings
from protocol.windows import WindowParams, beacon_block, is_on_time, window_bounds, window_of


def test_packaged_hparams_match_defaults() -> None:
    assert load_hparams() == HParams()
    assert load_hparams().spec_version == SPEC_VERSION


def test_defaults_unchanged() -> None:
    hp = HParams()
    assert (hp.codec.chunk, hp.codec.topk) == (4096, 64)
    assert hp.codec.ef_beta == 0.99  # RESULTS.md "Convergence": within 1% of DiLoCo from 40 windows
    assert (hp.scoring.openskill_beta, hp.scoring.openskill_tau) == (7.0, 0.1)
    assert hp.windows.blocks_per_window == 125
    # The outer step and the evaluation step measured in benchmarks/RESULTS.md.
    # Scale-invariant scoring with reach, the work gate and exp(ordinal / T): RESULTS.md "Effort".
    assert hp.scoring.eval_norm == "cap" and hp.scoring.eval_reach == (4.0, 16.0, 64.0)
    assert (hp.scoring.proof_floor, hp.scoring.proof_full, hp.scoring.score_temperature) == (0.6, 0.8, None)
    assert (hp.outer.rule, hp.outer.lr) == ("selected_mean", 0.25)
    assert hp.scoring.eval_step_scale * hp.outer.lr == 0.2


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    data = HParams().model_dump(mode="json")
    data["codec"]["topkk"] = 3
    path = tmp_path / "hp.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HParamsError, match=r"codec\.topkk"):
        load_hparams(path)


def test_invalid_values_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"codec": {"chunk": 100, "topk": 4}}))
    with pytest.raises(HParamsError, match="power of two"):
        load_hparams(path)
    path.write_text("{not json")
    with pytest.raises(HParamsError, match="not valid JSON"):
        load_hparams(path)
    with pytest.raises(HParamsError, match="not found"):
        load_hparams(tmp_path / "missing.json")


def test_newer_spec_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"spec_version": SPEC_VERSION + 1}))
    with pytest.raises(HParamsError, match="spec_version"):
        load_hparams(path)


def test_override_dotted() -> None:
    hp = HParams().override(**{"windows.blocks_per_window": 4, "inner.steps": 2})
    assert hp.windows.blocks_per_window == 4 and hp.inner.steps == 2
    with pytest.raises(HParamsError, match="unknown"):
        HParams().override(**{"windows.nope": 1})
    with pytest.raises(HParamsError, match="blocks_per_window"):
        HParams().override(**{"windows.blocks_per_window": 0})


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text('netuid = 7\nredis_url = "redis://example:6379/0"\napi_port = 9000\n')
    monkeypatch.setenv("GAUNTLET_API_PORT", "9100")
    s = load_settings(config, api_port=9200)
    assert s.netuid == 7 and s.redis_url == "redis://example:6379/0"
    assert s.api_port == 9200
    assert load_settings().api_port == 9100  # the file applies only where it was named


def test_settings_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GAUNTLET_HOME", str(tmp_path))
    s = load_settings()
    assert s.chain_url == f"local:{tmp_path / 'chain.db'}"
    assert s.db_url.startswith("sqlite:///") and s.storage_url.startswith("file://")
    assert s.redis_url is None


def test_settings_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GAUNTLET_API_PORT", "not-a-port")
    with pytest.raises(SettingsError, match="api_port"):
        load_settings()
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_windows() -> None:
    p = WindowParams(blocks_per_window=10, genesis_block=5, upload_grace_s=30)
    assert window_of(4, p) == 0 and window_of(5, p) == 0 and window_of(15, p) == 1
    w = window_bounds(2, p)
    assert (w.start_block, w.end_block) == (25, 35)
    assert window_of(w.start_block, p) == 2 and window_of(w.end_block - 1, p) == 2
    assert is_on_time(110.0, 100.0, 200.0, p)
    assert is_on_time(230.0, 100.0, 200.0, p)
    assert not is_on_time(230.5, 100.0, 200.0, p)
    assert not is_on_time(99.0, 100.0, 200.0, p)


def test_beacon_block_is_the_first_block_after_the_upload_deadline() -> None:
    p = WindowParams(blocks_per_window=10, genesis_block=5, upload_grace_s=30)
    # window 2 ends at block 35; a 30 s grace covers 3 blocks of 10 s or 12 s, 2 of 15 s; then one more
    assert beacon_block(2, p, 10.0) == 39 and beacon_block(2, p, 12.0) == 39 and beacon_block(2, p, 15.0) == 38
    assert beacon_block(2, WindowParams(blocks_per_window=10, genesis_block=5, upload_grace_s=1), 12.0) == 37
    with pytest.raises(ValueError, match="block_seconds"):
        beacon_block(2, p, 0.0)
