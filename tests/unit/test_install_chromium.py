"""``make test`` installs the dashboard test's Chromium itself (``tests/e2e/install-chromium.sh``).

The script runs with a PATH of stand-ins only (``id``, ``sudo``, ``apt-get``, ``chromium``), so
every branch is exercised without root, without touching the machine's packages, and the same
way whether or not the machine has a real Chromium.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "e2e" / "install-chromium.sh"


def _tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    """Stand-ins: apt-get logs its arguments and 'installs' chromium; sudo -n is refused."""
    b = tmp_path / "bin"
    b.mkdir()
    log = tmp_path / "apt.log"
    _tool(b, "apt-get", f'echo "$@" >> {log}\n'
          f'case "$1" in install) printf "#!/bin/sh\\necho Chromium 1.0\\n" > {b}/chromium; chmod +x {b}/chromium;; esac')
    _tool(b, "sudo", "exit 1")
    chmod = shutil.which("chmod")
    assert chmod is not None
    (b / "chmod").symlink_to(chmod)  # the only external command the stand-in apt-get needs
    return b


def _run(bindir: Path, *, uid: int, ci: bool = False) -> subprocess.CompletedProcess[str]:
    _tool(bindir, "id", f"echo {uid}")
    env = {"PATH": str(bindir), "HOME": os.environ.get("HOME", "/tmp")}
    if ci:
        env["CI"] = "true"
    return subprocess.run([shutil.which("sh") or "/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


def _apt_calls(bindir: Path) -> list[str]:
    log = bindir.parent / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_present_chromium_is_left_alone(bindir: Path) -> None:
    _tool(bindir, "chromium", "exit 0")
    result = _run(bindir, uid=0)
    assert result.returncode == 0, result.stderr
    assert _apt_calls(bindir) == []


def test_root_installs_debian_packages(bindir: Path) -> None:
    result = _run(bindir, uid=0)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = _apt_calls(bindir)
    assert calls[0].startswith("update")
    assert re.fullmatch(r"install -y -qq chromium chromium-driver", calls[1]), calls
    assert (bindir / "chromium").exists()


def test_without_root_it_prints_the_exact_command(bindir: Path) -> None:
    result = _run(bindir, uid=1000)
    assert result.returncode == 0, result.stderr  # a developer's `make test` goes on; the one test skips
    assert "sudo apt-get update && sudo apt-get install -y chromium chromium-driver" in result.stderr
    assert _apt_calls(bindir) == []


def test_without_root_under_ci_it_fails(bindir: Path) -> None:
    result = _run(bindir, uid=1000, ci=True)
    assert result.returncode == 1
    assert "sudo apt-get install -y chromium chromium-driver" in result.stderr


def test_without_apt_get_it_says_so(bindir: Path) -> None:
    (bindir / "apt-get").unlink()
    result = _run(bindir, uid=0)
    assert result.returncode == 0
    assert "no apt-get" in result.stderr
    assert _run(bindir, uid=0, ci=True).returncode == 1


def test_passwordless_sudo_is_used(bindir: Path) -> None:
    _tool(bindir, "sudo", f'echo sudo "$@" >> {bindir.parent / "sudo.log"}\n[ "$1" = -n ] && shift\n"$@"')
    result = _run(bindir, uid=1000)
    assert result.returncode == 0, result.stderr
    sudo = (bindir.parent / "sudo.log").read_text().splitlines()
    assert any("apt-get install" in line for line in sudo), sudo


def test_make_test_and_ci_use_the_script() -> None:
    """The README's `make test` depends on the step, and .ci/run no longer installs Chromium itself."""
    makefile = (ROOT / "Makefile").read_text()
    test_rule = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "chromium" in test_rule.split(":", 1)[1].split()
    assert "tests/e2e/install-chromium.sh" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get" not in ci
    assert 'CI:-}" = "true"' in ci and "PostgreSQL" in ci and "Redis" in ci  # the service check stays
