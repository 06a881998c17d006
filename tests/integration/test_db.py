"""Validator database on the real PostgreSQL: the full ``DatabaseContract`` plus PG specifics.

Each test gets its own schema (``gauntlet_test_<random>``, selected with
``options=-csearch_path=...`` in the URL), migrated from scratch and dropped afterwards, so
tests running in parallel against the shared ``test`` database never see each other's rows.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.unit.test_db_sqlite import DatabaseContract, full_receipt, rec, rows
from validator.db import repo
from validator.db.session import make_engine, migrate, session_factory

pytestmark = pytest.mark.integration


def schema_url(pg_url: str, schema: str) -> str:
    url = sa.make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """An empty schema of this test's own in the shared database."""
    schema = f"gauntlet_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema_url(pg_url, schema)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


class TestPostgres(DatabaseContract):
    @pytest.fixture
    def url(self, pg_schema_url: str) -> str:
        migrate(pg_schema_url)
        return pg_schema_url

    def test_engine_pings_and_uses_the_schema(self, url: str) -> None:
        engine = make_engine(url)
        assert engine.pool._pre_ping  # type: ignore[attr-defined]
        with engine.connect() as connection:
            schema = connection.exec_driver_sql("SELECT current_schema()").scalar()
            assert str(schema).startswith("gauntlet_test_")
            kinds = {
                name: kind
                for name, kind in connection.execute(
                    sa.text(
                        "SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = current_schema() AND table_name = 'evaluations'"
                    )
                )
            }
        engine.dispose()
        assert kinds["assigned_page_ids"] == "jsonb" and kinds["loss_after_random"] == "double precision"

    def test_concurrent_scorers_score_a_window_once(self, url: str) -> None:
        """Two validators racing on one window: the row lock lets exactly one of them score it."""
        engine = make_engine(url)
        sessions = session_factory(engine)
        with sessions() as session:
            repo.open_window(session, window=11)
        barrier = threading.Barrier(2)
        results: list[bool] = []

        def score(name: str) -> None:
            with sessions() as session:
                barrier.wait()
                results.append(
                    repo.mark_window_scored(
                        session,
                        window=11,
                        evaluations=rows(full_receipt("hk1", 1)),
                        peers={"hk1": rec(1, score=1.0)},
                        aggregate_hash=name,
                    )
                )

        threads = [threading.Thread(target=score, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(results) == [False, True]
        with sessions() as session:
            assert repo.count_window_evaluations(session, window=11) == 1
            window = repo.get_window(session, window=11)
            assert window is not None and window.status == "scored" and window.aggregate_hash in ("a", "b")
        engine.dispose()
