"""``gauntlet chain`` and ``gauntlet wallet`` commands."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from chain.cli import chain_app, wallet_app
from chain.local import LocalChain
from chain.wallets import load_hotkey

runner = CliRunner()


def test_wallet_create_and_list(tmp_path: Path) -> None:
    r = runner.invoke(wallet_app, ["create", "--name", "dev", "--hotkey", "miner", "--path", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "dev" / "coldkeypub.txt").is_file() and (tmp_path / "dev" / "hotkeys" / "miner").is_file()
    assert load_hotkey(tmp_path, "dev", "miner").ss58_address in r.output
    again = runner.invoke(wallet_app, ["create", "--name", "dev", "--hotkey", "miner", "--path", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output
    assert "dev: miner" in runner.invoke(wallet_app, ["list", "--path", str(tmp_path)]).output


def test_chain_local_once_and_status(tmp_path: Path) -> None:
    db = tmp_path / "chain.db"
    r = runner.invoke(chain_app, ["local", "--path", str(db), "--block-time", "0.5", "--tempo", "5", "--once"])
    assert r.exit_code == 0, r.output
    chain = LocalChain.open(db)
    assert chain.params.tempo == 5
    wallet_dir = tmp_path / "w"
    runner.invoke(wallet_app, ["create", "--name", "v", "--hotkey", "h", "--path", str(wallet_dir)])
    chain.register(load_hotkey(wallet_dir, "v", "h"), 1)
    status = runner.invoke(chain_app, ["status", "--chain", f"local:{db}", "--netuid", "1"])
    assert status.exit_code == 0, status.output
    assert "uids 1" in status.output and load_hotkey(wallet_dir, "v", "h").ss58_address in status.output
    assert "tempo 5  weights rate limit 100 blocks  weights version 0  commit-reveal off" in status.output
    missing = runner.invoke(chain_app, ["status", "--chain", f"local:{tmp_path / 'nope.db'}"])
    assert missing.exit_code == 1 and "gauntlet chain local" in missing.output
    bad = runner.invoke(chain_app, ["status", "--chain", f"local:{db}", "--netuid", "9"])
    assert bad.exit_code == 1 and "subnet 9 does not exist" in bad.output
