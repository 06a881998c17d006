"""Engines, sessions and schema migrations for the validator's database.

``make_engine`` tunes the connection for the backend: SQLite gets WAL (the API reads while
the validator writes), a busy timeout (writers wait instead of failing) and enforced foreign
keys; PostgreSQL gets ``pool_pre_ping`` so a restarted server does not surface as an error
on the next request. ``migrate``/``downgrade`` run Alembic programmatically against the
migrations in ``migrations/`` (``migrations/alembic.ini``), so the validator brings its
schema up to date on start without a separate ``alembic`` invocation. Where several processes
share one database (the Compose deployment), one ``gauntlet validator migrate`` runs first and
the validator only checks the schema (``require_head``): two Alembic runs racing on a fresh
database would both try to create the same tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
ALEMBIC_INI = MIGRATIONS_DIR / "alembic.ini"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # no-op (stays 'memory') for :memory:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")  # commits (weight-set claims) survive power loss
    finally:
        cursor.close()


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the backend's pragmas/pool settings; kwargs override."""
    url = sa.make_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded rows usable after commit (the API serialises them afterwards)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str | URL) -> Any:
    """The Alembic ``Config`` for our migrations, pointed at ``url``."""
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not via set_main_option: ini interpolation would mangle '%'.
    config.attributes["url"] = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return config


def migrate(url: str | URL, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (``alembic upgrade head``)."""
    from alembic import command

    engine_url = sa.make_url(url)
    if engine_url.get_backend_name() == "sqlite" and engine_url.database not in (None, "", ":memory:"):
        Path(engine_url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


class SchemaNotCurrent(RuntimeError):
    """The database is not at the migrations' head (and this process was told not to migrate it)."""


def head_revision() -> str:
    """The newest revision in ``migrations/`` (what ``migrate`` upgrades to)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "migrations/ has no revisions"
    return head


def require_head(url: str | URL) -> None:
    """Raise ``SchemaNotCurrent`` unless the database at ``url`` is at the head revision.

    A validator that skips migrating must not write into an older (or empty) schema: it would
    fail later, mid-window, on a missing column instead of at start with the fix in the message.
    """
    current, head = current_revision(url), head_revision()
    if current != head:
        shown = sa.make_url(url).render_as_string(hide_password=True)
        raise SchemaNotCurrent(f"database {shown} is at revision {current or 'none (empty)'}, this code needs "
                               f"{head}: run `gauntlet validator migrate` first (or set GAUNTLET_MIGRATE_ON_START=true)")


def downgrade(url: str | URL, revision: str) -> None:
    """Downgrade the database at ``url`` to ``revision`` (``"base"`` drops every table)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current_revision(url: str | URL) -> str | None:
    """The Alembic revision the database at ``url`` is at, or None when unversioned."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
