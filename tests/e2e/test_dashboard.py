"""The dashboard in headless Chromium, served by a real uvicorn process.

Run: ``pytest -m e2e tests/e2e/test_dashboard.py``. Needs Debian's ``chromium`` package
(``apt-get install -y chromium chromium-driver``); without it the test is skipped on a
developer machine and *fails* under ``CI=true``. The API runs as
``python -m validator.api api`` on a free loopback port over a filled SQLite database;
Chromium dumps the rendered DOM of the front page (the global model's loss over windows and
receipts per window, as ``<svg>`` charts with data points, the follow panel and the leaderboard
rows) and of a peer page (its score and weight history charts), and saves screenshots in the
test's tmp dir (``GAUNTLET_SAVE_SCREENSHOTS=1`` also refreshes ``docs/dashboard.png``, the
README's screenshot).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.api_fixtures import Filled, filled_database

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Filled]]:
    url = f"sqlite:///{tmp_path / 'validator.db'}"
    filled = filled_database(url, num_peers=12, num_windows=30, follow=True)
    port = _free_port()
    log = (tmp_path / "api.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "validator.api", "api", "--host", "127.0.0.1", "--port", str(port),
         "--database-url", url],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the API did not start: {(tmp_path / 'api.log').read_text()}")
            time.sleep(0.2)
        yield base, filled
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _browse(chromium: str, tmp_path: Path, url: str, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _charts(dom: str) -> dict[str, int]:
    """Data points per chart, by its full title and by the title cut before a comma, " on " or "(" ."""
    found = re.findall(r'<svg[^>]*aria-label="([^"]+)"[^>]*data-points="(\d+)"', dom)
    out = {title: int(n) for title, n in found}
    for title, n in found:
        out.setdefault(re.split(r"[,(]| on ", title)[0].strip(), int(n))
    return out


def _svg(dom: str, figure_id: str) -> str:
    """The markup of the chart in ``<figure id=figure_id>``."""
    return dom.split(f'id="{figure_id}"')[1].split("</svg>")[0]


def test_dashboard_renders_in_chromium(served: tuple[str, Filled], tmp_path: Path) -> None:
    chromium = _chromium()
    base, filled = served

    dom = _browse(chromium, tmp_path, base + "/", "--dump-dom")
    assert len(re.findall(r'<tr class="peer-row', dom)) == len(filled.hotkeys) - 1
    assert filled.hotkeys[0][:6] in dom and "Leaderboard" in dom
    front = _charts(dom)
    loss = _svg(dom, "model-loss")
    assert front["Global model loss"] == len(filled.scored_windows)  # one point per scored window
    assert "<polyline" in loss and len(re.findall(r"<circle", loss)) == len(filled.scored_windows)
    assert front["Receipts per window"] == len(filled.scored_windows) + 1 and "<rect" in _svg(dom, "outcomes")
    assert front["Rejections by reason"] > 0
    follow = dom.split('id="follow"')[1].split("</section>")[0]
    assert "following" in follow and "failovers" in follow and "null windows" in follow

    peer_dom = _browse(chromium, tmp_path, f"{base}/peer/{filled.hotkeys[0]}", "--dump-dom")
    by_title = _charts(peer_dom)
    assert by_title["Final score"] == by_title["Weight"] == len(filled.scored_windows)
    assert "<polyline" in peer_dom and 'class="band"' in peer_dom

    for name, path in (("dashboard.png", "/"), ("peer.png", f"/peer/{filled.hotkeys[0]}"),
                       ("windows.png", "/windows")):
        shot = tmp_path / name
        _browse(chromium, tmp_path, base + path, f"--screenshot={shot}")
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
        if name == "dashboard.png" and os.environ.get("GAUNTLET_SAVE_SCREENSHOTS"):
            shutil.copy(shot, ROOT / "docs" / name)  # the README's screenshot
