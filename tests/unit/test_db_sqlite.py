"""Validator database on SQLite: migrations, score receipts, idempotence and atomic windows.

``DatabaseContract`` holds the behaviour every supported backend must show; it is run here
on a file SQLite database and in ``tests/integration/test_db.py`` on the real PostgreSQL
(each class provides the ``url`` fixture: a migrated, empty database of its own).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from scoring.final import PeerState
from scoring.ratings import Rating
from validator.db import repo, weight_repo
from validator.db.models import Base, Evaluation, Peer, Window
from validator.db.session import current_revision, downgrade, make_engine, migrate, session_factory

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"windows", "peers", "evaluations", "weight_sets", "run_config", "follow_state"}


def rows(*receipts: dict[str, Any]) -> list[Evaluation]:
    """Transient receipt rows, as ``validator.receipts.build_receipts`` makes them."""
    return [Evaluation(**r) for r in receipts]


def rec(uid: int | None = None, *, rating: Rating | None = None, weight: float = 0.0, **state: Any) -> repo.PeerRecord:
    """A scored window's record of one peer: a newcomer's state with ``state`` fields changed."""
    return repo.PeerRecord(uid, PeerState(rating or Rating(), **state), weight)


def full_receipt(hotkey: str, uid: int, *, loss_after_random: float = 2.5) -> dict[str, Any]:
    return {
        "hotkey": hotkey,
        "uid": uid,
        "status": "accepted",
        "payload_hash": "ab" * 32,
        "upload_bytes": 123_456_789_012,
        "filters_passed": ["registered", "signature", "on_time", "parse", "sync", "norm", "copy"],
        "assigned_page_ids": [3, 1, 4, 1, 5],
        "random_page_ids": [9, 2, 6],
        "random_seed_hex": "0f" * 16,
        "base_model_hash": "cd" * 32,
        "loss_before_assigned": 3.0,
        "loss_after_assigned": 2.25,
        "loss_before_random": 3.0,
        "loss_after_random": loss_after_random,
        "contribution": 3.0 - loss_after_random,
        "indicator": 1.0,
        "bma_after": 0.5,
        "estimate": 0.4375,
        "rating_mu_before": 25.0,
        "rating_sigma_before": 8.333,
        "rating_mu_after": 26.5,
        "rating_sigma_after": 8.0,
        "final_score": 0.75,
        "weight": 0.125,
        "eval_seconds": 0.3,
        "details": {"norm": 1.5, "overlap": {"hk2": 0.01}},
    }


class DatabaseContract:
    """Behaviour of the schema and ``validator.db.repo``; subclasses provide ``url``."""

    @pytest.fixture
    def session(self, url: str) -> Iterator[Session]:
        engine = make_engine(url)
        with session_factory(engine)() as session:
            yield session
        engine.dispose()

    # ------------------------------------------------------------------ migrations

    def test_migrated_schema_matches_models(self, url: str) -> None:
        engine = make_engine(url)
        with engine.connect() as connection:
            assert set(sa.inspect(connection).get_table_names()) >= TABLES
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        engine.dispose()
        assert diff == []
        assert current_revision(url) == "0006"

    def test_downgrade_to_base_and_upgrade_again(self, url: str) -> None:
        downgrade(url, "base")
        engine = make_engine(url)
        with engine.connect() as connection:
            assert set(sa.inspect(connection).get_table_names()) & TABLES == set()
        assert current_revision(url) is None
        migrate(url)
        with engine.connect() as connection:
            assert set(sa.inspect(connection).get_table_names()) >= TABLES
        engine.dispose()
        assert current_revision(url) == "0006"

    # ------------------------------------------------------------------ receipts

    def test_receipt_round_trip(self, session: Session, url: str) -> None:
        repo.open_window(session, window=7, base_model_hash="cd" * 32, random_seed_hex="0f" * 16)
        receipt = full_receipt("hk1", 1)
        repo.record_evaluation(session, window=7, **receipt)
        repo.record_evaluation(
            session, window=7, hotkey="hk2", uid=2, status="rejected", reject_reason="copy",
            reject_detail="copy of hk1", copy_of_hotkey="hk1",
        )  # fmt: skip
        repo.record_evaluation(session, window=7, hotkey="hk3", status="missing")

        # Read back through a fresh engine: nothing comes from the identity map.
        engine = make_engine(url)
        with session_factory(engine)() as fresh:
            row = repo.evaluation(fresh, window=7, hotkey="hk1")
            assert row is not None
            for name, value in receipt.items():
                assert getattr(row, name) == value, name
            assert row.created_at is not None and row.updated_at is not None
            listed = repo.window_evaluations(fresh, window=7)
            assert [e.hotkey for e in listed] == ["hk1", "hk2", "hk3"]
            assert [e.hotkey for e in repo.window_evaluations(fresh, window=7, status="rejected")] == ["hk2"]
            assert repo.count_window_evaluations(fresh, window=7) == 3
            assert repo.count_window_evaluations(fresh, window=7, status="accepted") == 1
            assert [e.window for e in repo.peer_history(fresh, hotkey="hk1")] == [7]
            assert repo.rejections_by_reason(fresh) == {"copy": 1, "missing": 1}
        engine.dispose()

    def test_record_evaluation_is_idempotent(self, session: Session) -> None:
        repo.open_window(session, window=1)
        first = repo.record_evaluation(session, window=1, **full_receipt("hk1", 1, loss_after_random=2.5))
        again = repo.record_evaluation(
            session, window=1, hotkey="hk1", status="accepted", loss_after_random=2.0, contribution=1.0
        )
        assert again.id == first.id
        assert repo.count_window_evaluations(session, window=1) == 1
        row = repo.evaluation(session, window=1, hotkey="hk1")
        assert row is not None
        assert (row.loss_after_random, row.contribution) == (2.0, 1.0)
        assert row.assigned_page_ids == [3, 1, 4, 1, 5]  # fields not given are kept
        assert repo.mark_window_scored(session, window=1)
        window = repo.get_window(session, window=1)
        assert window is not None and (window.num_submitted, window.num_evaluated) == (1, 1)

    def test_receipt_rejects_unknown_fields_and_statuses(self, session: Session) -> None:
        repo.open_window(session, window=1)
        with pytest.raises(TypeError, match="bogus"):
            repo.record_evaluation(session, window=1, hotkey="hk", status="accepted", bogus=1)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="status"):
            repo.record_evaluation(session, window=1, hotkey="hk", status="great")  # type: ignore[arg-type]
        assert repo.count_window_evaluations(session, window=1) == 0

    def test_receipt_needs_its_window(self, session: Session) -> None:
        with pytest.raises(sa.exc.IntegrityError):
            repo.record_evaluation(session, window=99, hotkey="hk", status="missing")
        assert repo.evaluation(session, window=99, hotkey="hk") is None

    # ------------------------------------------------------------------ windows

    def test_mark_window_scored_commits_everything_once(self, session: Session) -> None:
        repo.open_window(session, window=5, random_seed_hex="aa" * 16)
        assert repo.set_window_status(session, window=5, status="scoring")
        ok = repo.mark_window_scored(
            session,
            window=5,
            evaluations=rows(full_receipt("hk1", 1), {"hotkey": "hk2", "uid": 2, "status": "missing"}),
            peers={"hk1": rec(1, rating=Rating(26.5), score=0.75, weight=1.0), "hk2": rec(2, inactive_windows=1)},
            aggregate_hash="ee" * 32,
            stage_timings={"filters": 0.5, "losses": 12.0},
        )
        assert ok
        window = repo.get_window(session, window=5)
        assert window is not None
        assert window.status == "scored" and window.scored_at is not None and window.is_final
        assert (window.num_submitted, window.num_evaluated) == (1, 1)
        assert window.stage_timings == {"filters": 0.5, "losses": 12.0}
        assert window.published_seed == "aa" * 16
        hk1 = repo.peer(session, hotkey="hk1")
        assert hk1 is not None and (hk1.first_seen_window, hk1.last_seen_window, hk1.score) == (5, 5, 0.75)
        assert (hk1.rating_mu, hk1.weight) == (26.5, 1.0) and repo.peer_state(hk1).rating == Rating(26.5)

        # A redo (restart after the commit) changes nothing and says so.
        assert not repo.mark_window_scored(session, window=5, peers={"hk1": rec(1, score=9.0)})
        assert not repo.set_window_status(session, window=5, status="open")
        session.expire_all()
        assert repo.peer(session, hotkey="hk1").score == 0.75  # type: ignore[union-attr]
        assert repo.last_scored_window(session) == 5

    def test_failure_mid_window_persists_nothing(self, session: Session, url: str) -> None:
        repo.open_window(session, window=3)
        repo.upsert_peer(session, hotkey="hk1", uid=1, score=0.1)
        receipts = rows(full_receipt("hk1", 1), full_receipt("hk2", 2), {"hotkey": "hk3", "status": "bogus"})
        with pytest.raises(ValueError, match="status"):
            repo.mark_window_scored(session, window=3, evaluations=receipts, peers={"hk1": rec(1, score=5.0)})
        # Fails in the database (NOT NULL), after receipts and other peers were flushed.
        bad_peers = {"hk1": rec(1, score=5.0), "hk2": rec(2, inactive_windows=1),
                     "hk3": rec(3, rating=Rating(None))}  # type: ignore[arg-type]
        with pytest.raises(sa.exc.IntegrityError):
            repo.mark_window_scored(session, window=3, evaluations=rows(full_receipt("hk1", 1)), peers=bad_peers)
        self.assert_window_untouched(url, window=3)

    def test_kill_9_mid_window_persists_nothing_and_restart_resumes(self, session: Session, url: str) -> None:
        repo.open_window(session, window=4)
        repo.upsert_peer(session, hotkey="hk1", uid=1, score=0.1)
        script = textwrap.dedent(
            """
            import os, signal, sys
            from validator.db import repo
            from validator.db.session import make_engine, session_factory
            from tests.unit.test_db_sqlite import full_receipt, rec, rows

            class Dying(dict):
                def items(self):
                    yield from super().items()
                    sys.stdout.write("flushed\\n"); sys.stdout.flush()
                    os.kill(os.getpid(), signal.SIGKILL)  # dies mid-transaction, writes flushed

            with session_factory(make_engine(sys.argv[1]))() as session:
                receipts = rows(full_receipt("hk1", 1), full_receipt("hk2", 2))
                peers = Dying(hk1=rec(1, score=5.0), hk2=rec(2, score=4.0))
                repo.mark_window_scored(session, window=4, evaluations=receipts, peers=peers)
            """
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-c", script, url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert "flushed" in proc.stdout
        self.assert_window_untouched(url, window=4)

        # The restarted validator finds the window still to score and scores it exactly once.
        assert repo.windows_to_score(session, current_window=5) == [4]
        receipts = rows(full_receipt("hk1", 1), full_receipt("hk2", 2))
        assert repo.mark_window_scored(session, window=4, evaluations=receipts, peers={"hk1": rec(1, score=5.0)})
        assert not repo.mark_window_scored(session, window=4, evaluations=rows(full_receipt("hk1", 1)))
        assert repo.count_window_evaluations(session, window=4) == 2
        assert repo.windows_to_score(session, current_window=5) == []

    @staticmethod
    def assert_window_untouched(url: str, *, window: int) -> None:
        engine = make_engine(url)
        with session_factory(engine)() as fresh:
            row = repo.get_window(fresh, window=window)
            assert row is not None and row.status == "open" and row.scored_at is None
            assert repo.count_window_evaluations(fresh, window=window) == 0
            assert [(p.hotkey, p.uid, p.score) for p in fresh.scalars(sa.select(Peer))] == [("hk1", 1, 0.1)]
        engine.dispose()

    def test_windows_to_score(self, session: Session) -> None:
        assert repo.windows_to_score(session, current_window=10) == []
        assert repo.last_scored_window(session) is None
        for w in (2, 3, 4):
            repo.open_window(session, window=w)
        repo.mark_window_scored(session, window=3)
        repo.open_window(session, window=10)
        # 2 and 4 are open; 5..9 were never opened (validator down) after the last scored window 3.
        assert repo.windows_to_score(session, current_window=10) == [2, 4, 5, 6, 7, 8, 9]
        assert repo.windows_to_score(session, current_window=10, lookback=3) == [7, 8, 9]
        assert repo.last_scored_window(session) == 3

    def test_open_window_never_changes_a_drawn_seed(self, session: Session) -> None:
        first = repo.open_window(session, window=1)
        assert first.random_seed_hex is None and first.status == "open" and first.published_seed is None
        repo.open_window(session, window=1, random_seed_hex="11" * 16, base_model_hash="h")
        again = repo.open_window(session, window=1, random_seed_hex="22" * 16)
        assert again.random_seed_hex == "11" * 16 and again.base_model_hash == "h"
        assert again.published_seed is None  # secret until scored
        assert repo.count_windows(session) == 1

    # ------------------------------------------------------------------ weights

    def test_weight_set_is_unique_per_window(self, session: Session) -> None:
        repo.open_window(session, window=8)
        repo.mark_window_scored(session, window=8)
        assert weight_repo.record_weight_set(session, window=8, uids=[1, 2], weights=[0.25, 0.75], version_key=3)
        assert not weight_repo.record_weight_set(session, window=8, uids=[1], weights=[1.0], version_key=3)
        latest = weight_repo.latest_weight_set(session)
        assert latest is not None and (latest.uids, latest.weights, latest.tx_status) == (
            [1, 2],
            [0.25, 0.75],
            "pending",
        )
        assert weight_repo.latest_weight_set(session, successful_only=True) is None
        assert weight_repo.update_weight_set(session, window=8, tx_status="success", block=1234)
        assert repo.get_window(session, window=8).status == "weights_set"  # type: ignore[union-attr]
        assert not weight_repo.update_weight_set(session, window=9, tx_status="failed")
        assert weight_repo.record_weight_set(
            session, window=16, uids=[2], weights=[1.0], version_key=3, tx_status="failed"
        )
        assert weight_repo.latest_weight_set(session).window == 16  # type: ignore[union-attr]
        assert weight_repo.latest_weight_set(session, successful_only=True).block == 1234  # type: ignore[union-attr]
        assert [w.window for w in weight_repo.weight_sets(session)] == [16, 8]
        with pytest.raises(ValueError):
            weight_repo.record_weight_set(session, window=17, uids=[1, 2], weights=[1.0], version_key=3)

    # ------------------------------------------------------------------ peers and reads

    def test_peers_uid_moves_and_leaderboard(self, session: Session) -> None:
        repo.upsert_peer(session, hotkey="a", uid=0, score=0.5, seen_window=3)
        repo.upsert_peer(session, hotkey="b", uid=1, score=0.9, seen_window=1)
        repo.upsert_peer(session, hotkey="c", uid=2, score=0.5)
        repo.upsert_peer(session, hotkey="a", seen_window=2)
        a = repo.peer(session, hotkey="a")
        assert a is not None and (a.first_seen_window, a.last_seen_window) == (2, 3)
        assert a.rating_mu == pytest.approx(25.0) and a.rating_sigma == pytest.approx(25 / 3)
        # uid 1 is re-registered by a new hotkey: the old one loses it.
        repo.upsert_peer(session, hotkey="d", uid=1, score=0.7)
        assert repo.peer(session, hotkey="b").uid is None  # type: ignore[union-attr]
        assert repo.peer(session, uid=1).hotkey == "d"  # type: ignore[union-attr]
        assert [p.hotkey for p in repo.leaderboard(session)] == ["d", "a", "c"]
        assert [p.hotkey for p in repo.leaderboard(session, registered_only=False)] == ["b", "d", "a", "c"]
        assert [p.hotkey for p in repo.leaderboard(session, limit=2, offset=1)] == ["a", "c"]
        assert repo.count_peers(session) == 3 and repo.count_peers(session, registered_only=False) == 4
        repo.upsert_peer(session, hotkey="a", banned_until_window=9)
        assert repo.peer(session, hotkey="a").banned_until_window == 9  # type: ignore[union-attr]
        repo.upsert_peer(session, hotkey="a", banned_until_window=None)
        assert repo.peer(session, hotkey="a").banned_until_window is None  # type: ignore[union-attr]
        with pytest.raises(ValueError):
            repo.peer(session)
        with pytest.raises(ValueError):
            repo.leaderboard(session, limit=0)
        with pytest.raises(ValueError):
            repo.leaderboard(session, offset=-1)

    def test_windows_history_and_rejections(self, session: Session) -> None:
        for w in range(1, 6):
            repo.open_window(session, window=w)
            repo.record_evaluation(
                session, window=w, hotkey="hk", uid=0, status="accepted", final_score=w / 10
            )
            repo.record_evaluation(session, window=w, hotkey="bad", status="rejected", reject_reason="late")
        repo.mark_window_scored(session, window=1)
        assert [w.window for w in repo.windows(session, limit=2)] == [5, 4]
        assert [w.window for w in repo.windows(session, status="scored")] == [1]
        assert repo.count_windows(session, status="open") == 4
        assert [e.window for e in repo.peer_history(session, hotkey="hk", limit=2, offset=1)] == [4, 3]
        assert repo.rejections_by_reason(session, from_window=2, to_window=3) == {"late": 2}

    def test_run_config_is_kept(self, session: Session) -> None:
        repo.record_run_config(session, config={"netuid": 1, "chain": "local"}, version="0.1.0")
        repo.record_run_config(session, config={"netuid": 2}, hotkey="5F")
        latest = repo.latest_run_config(session)
        assert latest is not None and latest.config == {"netuid": 2} and latest.hotkey == "5F"


class TestSqlite(DatabaseContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        url = f"sqlite:///{tmp_path / 'nested' / 'validator.db'}"
        migrate(url)
        return url

    def test_engine_pragmas(self, url: str) -> None:
        engine = make_engine(url)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        engine.dispose()

    def test_models_create_all_equals_migrations(self, tmp_path: Path) -> None:
        """``create_all`` (handy in tests) builds the same schema as the migrations."""
        engine = make_engine(f"sqlite:///{tmp_path / 'create_all.db'}")
        Base.metadata.create_all(engine)
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        with session_factory(engine)() as session:
            session.add(Window(window=1))
            session.add(Evaluation(window=1, hotkey="hk", status="missing"))
            session.commit()
            assert session.scalars(sa.select(Evaluation)).one().filters_passed == []
        engine.dispose()
