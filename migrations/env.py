"""Alembic environment for the validator database.

The URL comes from the caller (``config.attributes["url"]``, set by
``validator.db.session.migrate``), else ``GAUNTLET_DATABASE_URL``, else the node settings'
default (SQLite in ``GAUNTLET_HOME``). A caller may also hand over an open connection in
``config.attributes["connection"]``. SQLite runs in batch mode so ALTERs work there too.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from validator.db.models import Base
from validator.db.session import make_engine

config = context.config
target_metadata = Base.metadata

# Only configure logging from the ini on the command line; a validator keeps its own logging.
if (
    config.config_file_name is not None
    and not config.attributes.get("url")
    and not config.attributes.get("connection")
):
    from logging.config import fileConfig

    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("url") or os.environ.get("GAUNTLET_DATABASE_URL")
    if url:
        return str(url)
    from protocol.settings import load_settings

    return load_settings().db_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
