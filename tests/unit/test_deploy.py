"""Deployment files cannot run here (no Docker engine), so check them by construction:
valid YAML, every service's command is a real ``gauntlet`` subcommand, every mounted file exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from gauntlet.cli import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILES = sorted(DEPLOY.rglob("compose*.yaml"))


def _subcommand_exists(words: list[str]) -> bool:
    command = get_command(app)
    for word in words:
        if word.startswith("-"):
            break
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            return False
        command = sub
    return True


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_compose_file_is_consistent(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())
    assert spec["services"], "no services"
    for name, service in spec["services"].items():
        command = service.get("command") or []
        if "gauntlet" in command:
            words = command[command.index("gauntlet") + 1 :]
            assert _subcommand_exists(words), f"{name}: unknown command gauntlet {' '.join(words)}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (path.parent / source).resolve().exists(), f"{name}: missing {source}"


def test_systemd_units_call_real_commands() -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert units
    for unit in units:
        line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
        words = line.split("gauntlet ", 1)[1].split()
        assert _subcommand_exists(words), f"{unit.name}: unknown command {words}"


def test_grafana_dashboard_queries_real_metrics() -> None:
    """Every metric a dashboard panel queries is one the validator or API exports."""
    import json
    import re

    from validator import metrics as validator_metrics
    from validator.api.metrics import ApiMetrics

    exported = {m.name for m in validator_metrics.REGISTRY.collect()}
    exported |= {m.name for m in ApiMetrics().registry.collect()}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "gauntlet.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"gauntlet_[a-z_]+", target["expr"]):
                base = re.sub(r"_(total|bucket|sum|count|created)$", "", name)
                assert base in exported, f"panel {panel['title']!r} queries unknown metric {name}"
