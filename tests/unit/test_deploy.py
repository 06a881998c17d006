"""Deployment files cannot run here (no Docker engine), so check them by construction:
valid YAML, every service's command is a real ``gauntlet`` subcommand, every mounted file exists,
and the image runs as a dedicated, documented user that owns its state directory.
(``tests/unit/test_deploy_compose.py`` runs Compose's own ``config`` on each file.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from gauntlet.cli import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILES = sorted({*DEPLOY.rglob("compose*.yaml"), *DEPLOY.rglob("docker-compose*.yml")})
DOCKERFILE = DEPLOY / "validator" / "Dockerfile"


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


def test_image_runs_as_a_dedicated_documented_user_that_owns_its_state() -> None:
    """Not ``nobody``: that user can read no 0600 wallet file and write no root-owned volume."""
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("nobody", "root", "0"), f"USER {user}"
    uid = re.search(r"^ARG GAUNTLET_UID=(\d+)", text, re.M)
    assert uid is not None and int(uid.group(1)) >= 1000, "the image's uid is not fixed"
    assert re.search(rf"useradd .*--uid \"?\$GAUNTLET_UID\"?.*{user}", text, re.S), "no useradd with that uid"
    # The directory the named volume is mounted on belongs to the user, so a new volume does too.
    assert re.search(rf"install -d -o {user} -g {user} .*/var/lib/gauntlet", text), "state dir not owned by the user"
    compose = yaml.safe_load((DEPLOY / "validator" / "compose.yaml").read_text())
    assert "gauntlet-home:/var/lib/gauntlet" in compose["x-gauntlet"]["volumes"]
    readme = (DEPLOY / "README.md").read_text()
    assert uid.group(1) in readme, "deploy/README.md does not say which uid must own the wallet files"


def test_dockerfile_copies_only_what_exists() -> None:
    root = DEPLOY.parent
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (root / source).exists(), f"Dockerfile copies missing {source}"
