"""``gauntlet localnet`` on a fresh PostgreSQL database (``GAUNTLET_DATABASE_URL`` set, nothing migrated).

The live view starts polling the first validator's database before the validator process has
migrated it. SQLite reports the missing table as an ``OperationalError``, which the view
tolerated; PostgreSQL reports it as a ``ProgrammingError``, which stopped the whole localnet at
once. Each test gets a database of its own (``CREATE DATABASE``), dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gauntlet import localnet
from gauntlet.localnet_view import Validators, View
from validator.db.session import current_revision

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """A newly created, empty PostgreSQL database (no schema, no Alembic version)."""
    name = f"gauntlet_localnet_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_live_view_reads_an_unmigrated_postgres_database(fresh_pg_url: str) -> None:
    """Before the validator has migrated, the view shows nothing scored instead of raising."""
    view = View(fresh_pg_url, {})
    try:
        assert view.scored_windows() == []
    finally:
        view.close()
    node = localnet.ValidatorNode("validator", 1000.0, fresh_pg_url, "file:///unused", "validator")
    others = Validators([node], {"validator": "5unused"})
    try:
        assert others._read("validator") == {}
    finally:
        others.close()


def test_localnet_setup_migrates_a_fresh_postgres_database(
        fresh_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setup leaves every validator's database at the schema head before a process is started."""
    monkeypatch.setenv("GAUNTLET_DATABASE_URL", fresh_pg_url)
    monkeypatch.delenv("GAUNTLET_REDIS_URL", raising=False)
    # The page store (a one-off, minutes-long build of the KJV pages) is not what is tested here.
    monkeypatch.setattr(localnet, "_page_store", lambda home, hp: None)
    run_dir = tmp_path / "run"
    net = localnet.LocalNet(run_dir, block_time=0.5, blocks_per_window=60, grace_s=2.0, api_port=0, seed=0,
                            validators=2)
    assert net.db_url == fresh_pg_url
    net.setup(localnet.plan_peers(1, "none"))
    for node in net.validators:
        assert current_revision(node.db_url) is not None, f"{node.name}: {node.db_url} not migrated"
    view = View(fresh_pg_url, net.names)
    try:
        with view.engine.connect() as connection:  # the table the live view polls first
            assert connection.execute(sa.text("SELECT count(*) FROM windows")).scalar() == 0
        assert view.scored_windows() == []
    finally:
        view.close()
