"""Score API over a filled SQLite database: every endpoint, its filters, errors and secrecy rules.

Run: ``pytest tests/unit/test_api_routes.py``. The database is written through the
validator's repository functions (``tests/integration/api_fixtures.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.api_fixtures import Filled, filled_database, hotkey
from validator.api import create_app


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Filled]:
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'validator.db'}"
    return url, filled_database(url)


@pytest.fixture(scope="module")
def client(db: tuple[str, Filled]) -> Iterator[TestClient]:
    with TestClient(create_app(db[0])) as c:
        yield c


@pytest.fixture(scope="module")
def filled(db: tuple[str, Filled]) -> Filled:
    return db[1]


def test_leaderboard_is_registered_peers_by_score(client: TestClient, filled: Filled) -> None:
    body = client.get("/api/v1/leaderboard", params={"limit": 100}).json()
    items = body["items"]
    assert body["last_scored_window"] == filled.scored_windows[-1]
    assert [p["rank"] for p in items] == list(range(1, len(items) + 1))
    scores = [p["score"] for p in items]
    assert scores == sorted(scores, reverse=True)
    hotkeys = {p["hotkey"] for p in items}
    assert filled.deregistered not in hotkeys and filled.newcomer in hotkeys
    assert body["total"] == len(items) == len(filled.hotkeys) - 1
    for p in items:
        assert p["ordinal"] == pytest.approx(p["rating_mu"] - 3 * p["rating_sigma"])
    page = client.get("/api/v1/leaderboard", params={"limit": 2, "offset": 2}).json()
    assert [p["hotkey"] for p in page["items"]] == [p["hotkey"] for p in items[2:4]]
    assert page["items"][0]["rank"] == 3


def test_peer_status_reflects_bans_misses_and_deregistration(client: TestClient, filled: Filled) -> None:
    def status(hk: str) -> str:
        return str(client.get(f"/api/v1/peers/{hk}").json()["status"])

    assert status(filled.banned) == "banned"
    assert status(filled.missing) == "inactive"
    assert status(filled.deregistered) == "deregistered"
    assert status(filled.hotkeys[0]) == "active"


def test_peers_filters_and_lookups(client: TestClient, filled: Filled) -> None:
    body = client.get("/api/v1/peers").json()
    assert body["total"] == len(filled.hotkeys)
    assert body["items"][-1]["hotkey"] == filled.deregistered  # no uid: listed last
    by_uid = client.get("/api/v1/peers", params={"uid": 1}).json()["items"]
    assert [p["hotkey"] for p in by_uid] == [filled.newcomer]  # uid 1 moved to the newcomer
    by_hk = client.get("/api/v1/peers", params={"hotkey": filled.hotkeys[0]}).json()
    assert by_hk["total"] == 1 and by_hk["items"][0]["uid"] == 0
    assert client.get("/api/v1/peers/by-uid/1").json()["hotkey"] == filled.newcomer
    assert client.get(f"/api/v1/peers/{filled.hotkeys[2]}").json()["uid"] == 2
    assert client.get("/api/v1/peers", params={"uid": 999}).json() == {"total": 0, "limit": 50, "offset": 0, "items": []}


def test_history_is_newest_first_and_hides_the_open_window_seed(client: TestClient, filled: Filled) -> None:
    hk = filled.hotkeys[0]
    body = client.get(f"/api/v1/peers/{hk}/history").json()
    windows = [r["window"] for r in body["items"]]
    assert windows == sorted(windows, reverse=True)
    assert windows[0] == filled.open_window and body["total"] == len(filled.scored_windows) + 1
    current, *scored = body["items"]
    assert current["window_final"] is False
    assert current["random_seed_hex"] is None and current["random_page_ids"] is None
    assert current["assigned_page_ids"] == [4, 5]
    for r in scored:
        assert r["window_final"] is True and r["random_seed_hex"] == filled.seeds[r["window"]]
        if r["status"] == "accepted":
            assert r["loss_improvement_assigned"] == pytest.approx(r["loss_before_assigned"] - r["loss_after_assigned"])
            assert r["random_page_ids"] and r["base_model_hash"]
    serialized = client.get(f"/api/v1/peers/{hk}/history").text + client.get("/api/v1/windows").text
    serialized += client.get(f"/api/v1/windows/{filled.open_window}").text
    serialized += client.get(f"/api/v1/windows/{filled.open_window}/evaluations").text
    assert filled.seeds[filled.open_window] not in serialized


def test_windows_summary_and_evaluations(client: TestClient, filled: Filled) -> None:
    body = client.get("/api/v1/windows").json()
    assert [w["window"] for w in body["items"]] == [filled.open_window, *reversed(filled.scored_windows)]
    assert body["items"][0]["status"] == "open" and body["items"][0]["random_seed_hex"] is None
    statuses = {w["window"]: w["status"] for w in body["items"]}
    assert statuses[filled.scored_windows[0]] == "weights_set" and statuses[filled.scored_windows[-1]] == "scored"
    only_open = client.get("/api/v1/windows", params={"status": "open"}).json()
    assert only_open["total"] == 1
    w = filled.scored_windows[1]
    summary = client.get(f"/api/v1/windows/{w}").json()
    assert summary["counts"] == {"accepted": 5, "rejected": 2, "missing": 1}
    assert {r["reason"] for r in summary["rejections"]} == {"copy", "missing", "late"}
    assert summary["weights_set"] is True and summary["random_seed_hex"] == filled.seeds[w]
    receipts = client.get(f"/api/v1/windows/{w}/evaluations").json()
    assert receipts["total"] == 8 and [r["uid"] for r in receipts["items"]] == list(range(8))
    rejected = client.get(f"/api/v1/windows/{w}/evaluations", params={"status": "rejected"}).json()["items"]
    assert {r["status"] for r in rejected} == {"rejected"} and all(r["reject_reason"] for r in rejected)
    one = client.get(f"/api/v1/windows/{w}/evaluations", params={"hotkey": filled.hotkeys[0]}).json()
    assert one["total"] == 1 and one["items"][0]["hotkey"] == filled.hotkeys[0]
    assert one["items"][0]["rating_mu_after"] is not None and one["items"][0]["weight"] is not None


def test_weights_and_rejections(client: TestClient, filled: Filled) -> None:
    latest = client.get("/api/v1/weights/latest").json()
    assert latest["window"] == filled.scored_windows[-1] and latest["tx_status"] == "pending"
    assert sum(e["weight"] for e in latest["weights"]) == pytest.approx(1.0)
    assert all(e["hotkey"] for e in latest["weights"])
    ok = client.get("/api/v1/weights/latest", params={"successful_only": True}).json()
    assert ok["window"] == filled.scored_windows[-2] and ok["tx_status"] == "success"
    allw = client.get("/api/v1/rejections").json()
    assert allw["total"] == sum(r["count"] for r in allw["reasons"]) == 3 * len(filled.scored_windows)
    one = client.get("/api/v1/rejections", params={"from_window": 101, "to_window": 101}).json()
    assert one["total"] == 3


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/peers?limit=0",
        "/api/v1/peers?limit=1001",
        "/api/v1/peers?offset=-1",
        "/api/v1/peers?uid=-1",
        "/api/v1/peers?uid=abc",
        "/api/v1/peers?hotkey=0OIl" + "1" * 44,
        "/api/v1/peers?limt=5",
        "/api/v1/peers/not-a-hotkey",
        "/api/v1/peers/by-uid/70000",
        "/api/v1/windows/-1",
        "/api/v1/windows/99999999999",
        "/api/v1/windows/1.5/evaluations",
        "/api/v1/windows/101/evaluations?status=bogus",
        "/api/v1/windows?status=closed",
        "/api/v1/rejections?from_window=10&to_window=9",
        "/api/v1/leaderboard?limit=" + "9" * 30,
    ],
)
def test_bad_input_is_a_422_with_detail(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [f"/api/v1/peers/{hotkey(999)}", f"/api/v1/peers/{hotkey(999)}/history", "/api/v1/peers/by-uid/4000",
     "/api/v1/windows/7", "/api/v1/windows/7/evaluations", f"/peer/{hotkey(999)}", "/window/7"],
)
def test_unknown_peer_or_window_is_a_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    if path.startswith("/api/"):
        assert "unknown" in response.json()["detail"] or "no peer holds uid" in response.json()["detail"]
    else:  # the dashboard answers with a page
        assert response.headers["content-type"].startswith("text/html") and "unknown" in response.text


def test_empty_database_answers_without_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    from validator.db.session import migrate

    migrate(url)
    with TestClient(create_app(url)) as c:
        assert c.get("/api/v1/leaderboard").json()["items"] == []
        assert c.get("/api/v1/weights/latest").status_code == 404
        assert c.get("/api/v1/health").json()["last_scored_window"] is None
        for page in ("/", "/windows"):
            assert c.get(page).status_code == 200


def test_health_and_metrics(client: TestClient, filled: Filled) -> None:
    health = client.get("/api/v1/health").json()
    assert health == {"status": "ok", "database": "ok", "redis": "disabled",
                      "last_scored_window": filled.scored_windows[-1], "version": health["version"], "follow": None}
    client.get("/api/v1/leaderboard")
    client.get("/api/v1/peers/nope")
    text = client.get("/metrics").text
    assert 'gauntlet_api_requests_total{method="GET",route="/api/v1/leaderboard",status="200"}' in text
    assert 'route="/api/v1/peers/{hotkey}",status="422"' in text
    assert 'gauntlet_api_request_seconds_bucket{le="0.01",method="GET",route="/api/v1/leaderboard"}' in text


def test_health_shows_whom_the_validator_follows_and_degrades_when_it_cannot(tmp_path: Path) -> None:
    from protocol.follow import FollowStatus
    from validator.db import repo
    from validator.db.session import make_engine, migrate, session_factory

    url = f"sqlite:///{tmp_path / 'follow.db'}"
    migrate(url)
    sessions = session_factory(make_engine(url))
    with TestClient(create_app(url)) as c:
        with sessions() as s:
            repo.record_follow_status(s, FollowStatus("following", 7, "ab" * 32, "5Pub", "", failovers=1))
        body = c.get("/api/v1/health").json()
        assert body["status"] == "ok"
        assert body["follow"] | {"updated_at": None} == {
            "state": "following", "in_sync": True, "window": 7, "model_hash": "ab" * 32, "publisher": "5Pub",
            "detail": None, "failovers": 1, "null_windows": 0, "updated_at": None}
        with sessions() as s:
            repo.record_follow_status(s, FollowStatus("stalled", 7, "ab" * 32, "5Pub", "no validator has a usable "
                                                      "checkpoint at or before window 9"))
        body = c.get("/api/v1/health").json()
        assert body["status"] == "degraded" and not body["follow"]["in_sync"]
        assert "checkpoint" in body["follow"]["detail"]


def test_unreachable_database_is_a_503_not_a_500(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///file:{tmp_path}/absent.db?mode=ro&uri=true")
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/api/v1/leaderboard").status_code == 503
        health = c.get("/api/v1/health")
        assert health.status_code == 503 and health.json()["database"] == "error"


def test_dashboard_pages_render_rows_and_charts(client: TestClient, filled: Filled) -> None:
    index = client.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert index.text.count('class="peer-row') == len(filled.hotkeys) - 1
    assert "<svg" in index.text and "https://" not in index.text  # no CDN
    peer = client.get(f"/peer/{filled.hotkeys[0]}").text
    assert peer.count("<svg") == 5 and 'data-points="0"' not in peer.split("Rejections")[0]
    assert "Rating" in peer and 'class="band"' in peer
    windows = client.get("/windows").text
    assert f'data-points="{len(filled.scored_windows) + 1}"' in windows
    assert filled.seeds[filled.open_window][:6] not in windows and "secret until scored" in windows
    assert client.get(f"/window/{filled.scored_windows[0]}").text.count("<tr>") == 8 + 1  # and the header
    assert client.get("/static/style.css").status_code == 200
