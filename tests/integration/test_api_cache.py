"""Redis response cache of the score API, on the real Redis.

Run: ``pytest tests/integration/test_api_cache.py`` (needs Redis on 127.0.0.1:6379, a
failure under ``CI=true``). Checks: a repeated GET is served from the cache; the validator's
``invalidate`` (a generation bump) and a newly scored window each turn the cache over;
with Redis unreachable the API still answers, uncached, and health says ``degraded``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from tests.integration.api_fixtures import Filled, filled_database
from validator.api import create_app, invalidate
from validator.api.cache import GEN_KEY, KEY_PREFIX
from validator.db import repo
from validator.db.session import make_engine, session_factory

pytestmark = pytest.mark.integration


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)

    def clean() -> None:
        keys = list(client.scan_iter(f"{KEY_PREFIX}:*"))
        if keys:
            client.delete(*keys)
        client.delete(GEN_KEY)

    clean()
    yield client
    clean()
    client.close()


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, Filled]:
    url = f"sqlite:///{tmp_path / 'validator.db'}"
    return url, filled_database(url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_second_call_is_served_from_the_cache_until_invalidated(
    db: tuple[str, Filled], redis_url: str, rclient: redis.Redis
) -> None:
    url, _ = db
    sessions = session_factory(make_engine(url))
    with TestClient(create_app(url, redis_url)) as client:
        first = client.get("/api/v1/leaderboard", params={"limit": 3})
        second = client.get("/api/v1/leaderboard", params={"limit": 3})
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert first.json() == second.json() and second.headers["content-type"] == "application/json"
        assert client.get("/api/v1/leaderboard", params={"limit": 4}).headers["x-cache"] == "MISS"  # other query
        assert client.get("/").headers["x-cache"] == "MISS" and client.get("/").headers["x-cache"] == "HIT"
        assert "x-cache" not in client.get("/api/v1/health").headers  # live, never cached
        assert client.get("/api/v1/peers/nope").headers["x-cache"] == "MISS"  # a 422 is not stored
        assert client.get("/api/v1/peers/nope").headers["x-cache"] == "MISS"

        top = first.json()["items"][0]["hotkey"]
        with sessions() as s:  # the data changes without a new scored window ...
            repo.upsert_peer(s, hotkey=top, score=-1.0)
        stale = client.get("/api/v1/leaderboard", params={"limit": 3})
        assert stale.headers["x-cache"] == "HIT" and stale.json()["items"][0]["hotkey"] == top
        assert invalidate(rclient) == 1  # ... and the validator bumps the generation
        fresh = client.get("/api/v1/leaderboard", params={"limit": 3})
        assert fresh.headers["x-cache"] == "MISS" and fresh.json()["items"][0]["hotkey"] != top
        assert client.get("/api/v1/leaderboard", params={"limit": 3}).headers["x-cache"] == "HIT"
        metrics = client.get("/metrics").text
        assert 'gauntlet_api_cache_total{result="hit"}' in metrics
        assert 'route="/api/v1/leaderboard",status="200"} 6.0' in metrics


def test_a_newly_scored_window_turns_the_cache_over_without_a_bump(
    db: tuple[str, Filled], redis_url: str, rclient: redis.Redis
) -> None:
    url, filled = db
    sessions = session_factory(make_engine(url))
    with TestClient(create_app(url, redis_url, last_window_ttl_s=0.0)) as client:
        before = client.get("/api/v1/windows", params={"limit": 1})
        assert client.get("/api/v1/windows", params={"limit": 1}).headers["x-cache"] == "HIT"
        with sessions() as s:
            assert repo.mark_window_scored(s, window=filled.open_window)
        after = client.get("/api/v1/windows", params={"limit": 1})
        assert after.headers["x-cache"] == "MISS"
        assert before.json()["items"][0]["status"] == "open" and after.json()["items"][0]["status"] == "scored"
        assert after.json()["items"][0]["random_seed_hex"] == filled.seeds[filled.open_window]  # now published


def test_redis_down_serves_uncached_and_reports_degraded(db: tuple[str, Filled]) -> None:
    url, _ = db
    app = create_app(url, f"redis://127.0.0.1:{_free_port()}/0")
    with TestClient(app) as client:
        for _ in range(2):
            response = client.get("/api/v1/leaderboard")
            assert response.status_code == 200 and "x-cache" not in response.headers
        health = client.get("/api/v1/health").json()
        assert health["status"] == "degraded" and health["redis"] == "down" and health["database"] == "ok"


def test_health_reports_redis_ok(db: tuple[str, Filled], redis_url: str, rclient: redis.Redis) -> None:
    url, filled = db
    with TestClient(create_app(url, redis_url)) as client:
        health = client.get("/api/v1/health").json()
    assert health["status"] == "ok" and health["redis"] == "ok"
    assert health["last_scored_window"] == filled.scored_windows[-1]
