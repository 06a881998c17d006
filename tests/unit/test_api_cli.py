"""``gauntlet scores`` and ``gauntlet api`` (validator/api/cli.py).

Run: ``pytest tests/unit/test_api_cli.py``. The leaderboard is fetched from the app
in-process (a ``TestClient`` is an ``httpx.Client``); an unreachable API is a clear error
with exit status 1.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.integration.api_fixtures import filled_database
from validator.api import create_app
from validator.api.cli import fetch_leaderboard, format_leaderboard, register


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_scores_prints_the_leaderboard_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'validator.db'}"
    filled = filled_database(url)
    with TestClient(create_app(url)) as client:
        board = fetch_leaderboard("http://testserver", 5, client=client)
    text = format_leaderboard(board)
    lines = text.splitlines()
    assert lines[0].startswith(f"last scored window: {filled.scored_windows[-1]}")
    assert "rating mu ± sigma" in lines[1] and len(lines) == 2 + 5
    assert lines[2].split()[0] == "1" and filled.hotkeys[0][:7] in text


def test_scores_with_the_api_down_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(_app(), ["scores", "--api", f"http://127.0.0.1:{port}", "--limit", "3"])
    assert result.exit_code == 1
    assert f"cannot reach the score API at http://127.0.0.1:{port}" in result.output


@pytest.mark.parametrize("limit", ["0", "1001", "x"])
def test_scores_rejects_a_bad_limit(limit: str) -> None:
    assert CliRunner().invoke(_app(), ["scores", "--limit", limit]).exit_code == 2


def test_empty_leaderboard_says_so() -> None:
    assert "(no peers scored yet)" in format_leaderboard({"items": [], "total": 0, "last_scored_window": None})
