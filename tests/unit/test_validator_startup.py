"""How the deployment starts: one migration before any validator, workers that export metrics.

Run: ``pytest tests/unit/test_validator_startup.py -q``. The Compose deployment runs
``gauntlet validator migrate`` once and starts the validator with
``GAUNTLET_MIGRATE_ON_START=false`` (two Alembic runs on a fresh PostgreSQL database race to
create the same tables); Prometheus scrapes every Stage-2 worker, so a worker must serve its
metrics and count its jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from protocol.hparams import HParams
from protocol.settings import Settings, load_settings
from testing import validator_sim as simulate
from validator import metrics
from validator.app import RunOptions, build_context
from validator.cli import validator_app
from validator.db.session import SchemaNotCurrent, current_revision, head_revision
from validator.queue import Job
from validator.worker import Worker, WorkerConfig

HP = HParams().override(**{"data.seq_len": 16, "data.page_seqs": 2, "data.pages_per_window": 1,
                           "data.eval_pages": 1})


def _context(tmp: Path, url: str) -> Any:
    net = simulate.local_net(tmp, HP, 1, pages=simulate.RandomPages(num_pages=8, page_seqs=2, seq_len=16))
    settings = load_settings(None, home=tmp / "home", database_url=url, storage=f"file://{tmp / 'vstore'}")
    return build_context(settings, HP, options=RunOptions(allow_local_storage=True), chain=net.chain,
                         keypair=net.validator, pages=net.pages)


def test_env_turns_migrating_on_start_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(None).migrate_on_start is True
    monkeypatch.setenv("GAUNTLET_MIGRATE_ON_START", "false")
    assert load_settings(None).migrate_on_start is False


def test_validator_told_not_to_migrate_refuses_an_empty_schema_until_migrate_ran(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    monkeypatch.setenv("GAUNTLET_MIGRATE_ON_START", "false")
    with pytest.raises(SchemaNotCurrent, match="gauntlet validator migrate"):
        _context(tmp_path / "first", url)
    assert current_revision(url) is None  # it did not run Alembic itself

    result = CliRunner().invoke(validator_app, ["migrate", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert f"database at revision {head_revision()}" in result.output

    ctx = _context(tmp_path / "second", url)  # now at head: starts without migrating
    assert ctx.hotkey


def test_validator_migrates_on_start_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GAUNTLET_MIGRATE_ON_START", raising=False)
    url = f"sqlite:///{tmp_path / 'v.db'}"
    _context(tmp_path, url)
    assert current_revision(url) == head_revision()


class _Queue:
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs, self.completed = jobs, []  # type: list[Job], list[dict[str, Any]]

    def reclaim_stale(self, *_: Any, **__: Any) -> list[Job]:
        return []

    def claim(self, *_: Any, **__: Any) -> list[Job]:
        jobs, self.jobs = self.jobs, []
        return jobs

    def complete(self, job: Job, result: dict[str, Any]) -> None:
        self.completed.append(result)


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_worker_counts_its_jobs_by_outcome(tmp_path: Path) -> None:
    jobs = [Job("1-0", 3, "5Good"), Job("1-1", 3, "5Bad")]
    queue = _Queue(jobs)
    worker = Worker(WorkerConfig(consumer="w1", validator_hotkey="5V"), hp=HP, queue=queue,  # type: ignore[arg-type]
                    publish_storage=None, pages=None, codec_cfg=None)  # type: ignore[arg-type]
    worker.handle = lambda job: {"ok": job.hotkey == "5Good"}  # type: ignore[method-assign]
    ok, failed = _sample("gauntlet_worker_jobs_total", outcome="ok"), _sample("gauntlet_worker_jobs_total",
                                                                                outcome="failed")
    timed = _sample("gauntlet_worker_job_seconds_count")
    assert worker.run_once() == 2
    assert queue.completed == [{"ok": True}, {"ok": False}]
    assert _sample("gauntlet_worker_jobs_total", outcome="ok") == ok + 1
    assert _sample("gauntlet_worker_jobs_total", outcome="failed") == failed + 1
    assert _sample("gauntlet_worker_job_seconds_count") == timed + 2


def test_worker_command_serves_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from validator import app, worker

    served: list[Settings] = []

    class _Worker:
        def run(self, **_: Any) -> int:
            return 0

    monkeypatch.setenv("GAUNTLET_METRICS_PORT", "9201")
    monkeypatch.setattr(app, "build_worker", lambda settings, **_: _Worker())
    monkeypatch.setattr(app, "serve_metrics", served.append)
    monkeypatch.setattr(worker, "default_consumer", lambda: "w1")
    result = CliRunner().invoke(validator_app, ["worker", "--validator-hotkey", "5V", "--max-jobs", "1"])
    assert result.exit_code == 0, result.output
    assert [s.metrics_port for s in served] == [9201]
