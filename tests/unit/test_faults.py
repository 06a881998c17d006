"""The fault hook (``protocol.faults``) and the harness's kill-at-a-point hook (``testing.faults``).

The restart tests rely on these: a production process reaches ``faults.point(NAME)`` and,
only when ``testing.run --crash-at NAME`` installed the hook, dies like ``kill -9`` there.
"""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from protocol import faults
from testing.faults import POINTS, crash_at, installed

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("protocol", "miner", "validator", "scoring", "chain", "gauntlet")


def test_points_do_nothing_until_a_hook_is_installed() -> None:
    faults.point("after_publish")  # the production default: no-op
    seen: list[str] = []
    with installed(seen.append):
        faults.point("after_persist")
        faults.point("after_upload")
    faults.point("after_publish")
    assert seen == ["after_persist", "after_upload"]


def test_crash_at_kills_the_process_at_that_point_only() -> None:
    code = ("from protocol import faults; from testing.faults import crash_at\n"
            "faults.install(crash_at('after_upload'))\n"
            "faults.point('after_persist'); print('alive', flush=True)\n"
            "faults.point('after_upload'); print('survived', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.split() == ["alive"]


def test_crash_at_knows_only_real_points() -> None:
    with pytest.raises(ValueError, match="unknown fault point"):
        crash_at("after_lunch")


def _production_points() -> set[str]:
    found: set[str] = set()
    for pkg in PRODUCTION:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "point"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "faults"):
                    arg = node.args[0]
                    assert isinstance(arg, ast.Constant), f"{path}: fault point names are literals"
                    found.add(arg.value)
    return found


def test_the_harness_lists_exactly_the_points_in_production_code() -> None:
    assert _production_points() == set(POINTS)


def test_no_fault_environment_variable_in_production_code() -> None:
    """Faults come only through the injected hook, never an environment variable read by the loops."""
    for pkg in PRODUCTION:
        for path in (ROOT / pkg).rglob("*.py"):
            assert "CRASH_AT" not in path.read_text(), f"{path.relative_to(ROOT)} reads a crash variable"
