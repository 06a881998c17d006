"""Shared fixtures.

Integration tests talk to the machine's real PostgreSQL and Redis. Where a service is
missing they are skipped on a developer machine but *fail* under CI (``CI=true``), so a
missing service can never hide behind a green run.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

# Two torch threads on a busy 2-core machine fight each other (10-20x slower small ops);
# tests measure behaviour, not speed, so one thread each keeps them fast and repeatable.
torch.set_num_threads(1)

PG_URL = os.environ.get("GAUNTLET_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GAUNTLET_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _require(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (required under CI)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's wallets, SDK caches and local state out of the real home directory."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GAUNTLET_HOME", str(home / ".gauntlet"))


@pytest.fixture
def pg_url() -> str:
    _require("PostgreSQL", "127.0.0.1", 5432)
    return PG_URL


@pytest.fixture
def redis_url() -> str:
    _require("Redis", "127.0.0.1", 6379)
    return REDIS_URL
