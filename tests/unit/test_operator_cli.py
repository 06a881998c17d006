"""Operator-facing settings: ``validator run``/``worker`` connection flags and btcli's ``BT_*`` variables.

Run: ``pytest tests/unit/test_operator_cli.py``. The commands are invoked through typer's
``CliRunner`` with the heavy parts (context, loop, worker) replaced by recorders, so each
test checks only which settings a command would run with: flags over ``GAUNTLET_*`` over
``BT_*`` over the TOML file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from protocol.settings import BTCLI_ENV, Settings, load_settings
from validator.cli import validator_app

_GAUNTLET_ENV = ("GAUNTLET_CONFIG", "GAUNTLET_CHAIN", "GAUNTLET_NETUID", "GAUNTLET_STORAGE", "GAUNTLET_WALLET_NAME",
                 "GAUNTLET_WALLET_HOTKEY", "GAUNTLET_WALLET_PATH", "GAUNTLET_METRICS_PORT",
                 "GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's shell may well have btcli's variables set; every test starts from none."""
    for var in (*_GAUNTLET_ENV, *BTCLI_ENV.values()):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GAUNTLET_HOME", str(tmp_path / "home"))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace what ``validator run``/``worker`` build with recorders of the settings they were given."""
    from validator import app, service, worker

    seen: dict[str, Any] = {}

    class _Ctx:
        hotkey, netuid = "5Validator", 0

    class _Worker:
        def run(self, **_: Any) -> int:
            return 0

    def build_context(settings: Settings, **_: Any) -> _Ctx:
        seen["settings"] = settings
        return _Ctx()

    def build_worker(settings: Settings, **kwargs: Any) -> _Worker:
        seen["settings"], seen["worker"] = settings, kwargs
        return _Worker()

    monkeypatch.setattr(app, "build_context", build_context)
    monkeypatch.setattr(app, "serve_metrics", lambda settings: None)
    monkeypatch.setattr(service, "run", lambda ctx, cfg: 0)
    monkeypatch.setattr(app, "build_worker", build_worker)
    monkeypatch.setattr(worker, "default_consumer", lambda: "test-consumer")
    return seen


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(validator_app, list(args))
    assert result.exit_code == 0, result.output
    return result


# --- validator run / worker flags -------------------------------------------------------


def test_validator_run_has_the_miners_connection_flags(captured: dict[str, Any], tmp_path: Path) -> None:
    _invoke("run", "--chain", "ws://127.0.0.1:9944", "--netuid", "7", "--storage", "file:///srv/validator",
            "--wallet-path", str(tmp_path / "wallets"), "--windows", "1")
    s = captured["settings"]
    assert (s.chain_url, s.netuid, s.storage_url) == ("ws://127.0.0.1:9944", 7, "file:///srv/validator")
    assert s.wallet_path == tmp_path / "wallets"


def test_validator_run_flags_beat_env_and_file(captured: dict[str, Any], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text('chain = "test"\nnetuid = 3\nstorage = "file:///from/file"\n')
    monkeypatch.setenv("GAUNTLET_NETUID", "4")
    monkeypatch.setenv("GAUNTLET_STORAGE", "file:///from/env")
    monkeypatch.setenv("BT_NETWORK", "finney")
    _invoke("run", "--config", str(config), "--chain", "ws://node:9944", "--netuid", "5", "--storage",
            "file:///from/flag", "--windows", "1")
    s = captured["settings"]
    assert (s.chain, s.netuid, s.storage) == ("ws://node:9944", 5, "file:///from/flag")


def test_validator_run_without_flags_keeps_the_settings(captured: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('chain = "test"\nnetuid = 3\nstorage = "file:///from/file"\n')
    _invoke("run", "--config", str(config), "--windows", "1")
    s = captured["settings"]
    assert (s.chain, s.netuid, s.storage) == ("test", 3, "file:///from/file")


def test_validator_run_bad_netuid_is_one_line_and_status_2(captured: dict[str, Any]) -> None:
    result = CliRunner().invoke(validator_app, ["run", "--netuid", "-1", "--windows", "1"])
    assert result.exit_code == 2
    assert "gauntlet validator: invalid settings: netuid" in result.output
    assert "settings" not in captured  # nothing was built


def test_validator_worker_storage_flag(captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAUNTLET_STORAGE", "file:///from/env")
    _invoke("worker", "--validator-hotkey", "5Validator", "--storage", "s3://bucket/validator", "--max-jobs", "1")
    assert captured["settings"].storage_url == "s3://bucket/validator"
    assert captured["worker"]["validator_hotkey"] == "5Validator"


def test_validator_run_reads_btcli_env(captured: dict[str, Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_WALLET", "cold")
    monkeypatch.setenv("BT_WALLET_HOTKEY", "hot")
    monkeypatch.setenv("BT_WALLET_PATH", str(tmp_path / "btwallets"))
    monkeypatch.setenv("BT_NETWORK", "test")
    _invoke("run", "--windows", "1")
    s = captured["settings"]
    assert (s.wallet_name, s.wallet_hotkey, s.wallet_path, s.chain_url) == (
        "cold", "hot", tmp_path / "btwallets", "test")
    _invoke("run", "--wallet-name", "flagged", "--hotkey", "h2", "--windows", "1")
    assert (captured["settings"].wallet_name, captured["settings"].wallet_hotkey) == ("flagged", "h2")


# --- the settings loader ------------------------------------------------------------------


def test_btcli_env_names_are_the_sdks() -> None:
    """The names btcli itself reads (bittensor/cli/main.py); a rename in the SDK should fail here."""
    assert BTCLI_ENV == {"chain": "BT_NETWORK", "wallet_name": "BT_WALLET", "wallet_hotkey": "BT_WALLET_HOTKEY",
                         "wallet_path": "BT_WALLET_PATH"}
    spec = importlib.util.find_spec("bittensor.cli.main")
    assert spec is not None and spec.origin is not None
    main = Path(spec.origin).read_text()
    for var in BTCLI_ENV.values():
        assert f'envvar="{var}"' in main


def test_btcli_env_fills_unset_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BT_WALLET", "cold")
    monkeypatch.setenv("BT_WALLET_HOTKEY", "hot")
    monkeypatch.setenv("BT_WALLET_PATH", str(tmp_path / "w"))
    monkeypatch.setenv("BT_NETWORK", "ws://127.0.0.1:9944")
    s = load_settings()
    assert (s.wallet_name, s.wallet_hotkey, s.wallet_path, s.chain_url) == (
        "cold", "hot", tmp_path / "w", "ws://127.0.0.1:9944")


def test_gauntlet_env_beats_btcli_env_and_flags_beat_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_WALLET", "bt")
    monkeypatch.setenv("BT_NETWORK", "finney")
    monkeypatch.setenv("GAUNTLET_WALLET_NAME", "gauntlet")
    monkeypatch.setenv("GAUNTLET_CHAIN", "test")
    s = load_settings()
    assert (s.wallet_name, s.chain) == ("gauntlet", "test")
    s = load_settings(wallet_name="flag", chain="ws://node:9944")
    assert (s.wallet_name, s.chain) == ("flag", "ws://node:9944")


def test_btcli_env_beats_the_file_and_empty_is_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('wallet_name = "from-file"\nwallet_hotkey = "file-hot"\n')
    monkeypatch.setenv("BT_WALLET", "bt")
    monkeypatch.setenv("BT_WALLET_HOTKEY", "")
    s = load_settings(config)
    assert (s.wallet_name, s.wallet_hotkey) == ("bt", "file-hot")
    monkeypatch.setenv("GAUNTLET_CHAIN", "")  # an explicitly empty GAUNTLET_* is still set: the local chain
    monkeypatch.setenv("BT_NETWORK", "finney")
    assert load_settings().chain_url.startswith("local:")


def test_btcli_env_is_not_read_for_other_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the settings btcli shares; BT_CHAIN_ENDPOINT stays the SDK's (the address of ``local``)."""
    monkeypatch.setenv("BT_CHAIN_ENDPOINT", "ws://elsewhere:9944")
    monkeypatch.setenv("BT_NETUID", "9")
    s = load_settings()
    assert s.chain == "" and s.netuid == 1
