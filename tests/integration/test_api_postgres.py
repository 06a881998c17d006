"""Score API on the real PostgreSQL: endpoints and schemathesis property tests.

Run: ``pytest tests/integration/test_api_postgres.py`` (needs PostgreSQL on 127.0.0.1:5432,
a failure under ``CI=true``). The database lives in a schema of its own, migrated from
scratch and dropped afterwards (``pg_schema_url`` as in ``test_db.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient

from tests.integration.api_fixtures import Filled, filled_database
from tests.integration.test_db import pg_schema_url  # noqa: F401  (fixture)
from tests.unit.test_api_schemathesis import OPERATIONS, check_operation
from validator.api import create_app
from validator.db.session import make_engine

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_api(pg_schema_url: str) -> Iterator[tuple[TestClient, Filled, str]]:  # noqa: F811
    filled = filled_database(pg_schema_url)
    engine = make_engine(pg_schema_url)
    try:
        with TestClient(create_app(pg_schema_url, engine=engine)) as client:
            yield client, filled, pg_schema_url
    finally:
        engine.dispose()


def test_endpoints_on_postgres(pg_api: tuple[TestClient, Filled, str]) -> None:
    client, filled, _ = pg_api
    board = client.get("/api/v1/leaderboard").json()
    assert board["last_scored_window"] == filled.scored_windows[-1] and board["total"] == len(filled.hotkeys) - 1
    history = client.get(f"/api/v1/peers/{filled.hotkeys[0]}/history").json()["items"]
    assert history[0]["window"] == filled.open_window and history[0]["random_seed_hex"] is None
    assert history[1]["random_seed_hex"] == filled.seeds[history[1]["window"]]
    assert client.get("/api/v1/windows/2147483647").status_code == 404  # int4 max: valid, unknown
    assert client.get("/api/v1/windows/2147483648").status_code == 422  # beyond int4: rejected, not a 500
    assert client.get("/api/v1/rejections", params={"from_window": 0, "to_window": 2**31 - 1}).json()["total"] == 15
    assert client.get("/").text.count('class="peer-row') == len(filled.hotkeys) - 1


def test_schemathesis_on_postgres(pg_api: tuple[TestClient, Filled, str]) -> None:
    client, _, _ = pg_api
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    for method, path in OPERATIONS:
        check_operation(schema, method, path, max_examples=10)
