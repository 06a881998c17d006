"""Chart series of the score API and the dashboard panels built on them, over a filled SQLite database.

Run: ``pytest tests/unit/test_api_series.py``. Covers ``/api/v1/model/loss`` (the global model's
loss over windows), ``/api/v1/windows/outcomes`` (receipts per window by status) and
``/api/v1/peers/{hotkey}/scores`` (a peer's score and weight history), their ``?last=N`` bound,
and the front page's loss chart, outcome chart and follow panel.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from tests.integration.api_fixtures import Filled, filled_database, hotkey
from validator.api import create_app
from validator.api.routes.dashboard import follow_view

SVG = re.compile(r'<svg[^>]*aria-label="([^"]+)"[^>]*data-points="(\d+)"')


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Filled]:
    url = f"sqlite:///{tmp_path_factory.mktemp('api-series') / 'validator.db'}"
    return url, filled_database(url, follow=True)


@pytest.fixture(scope="module")
def client(db: tuple[str, Filled]) -> Iterator[TestClient]:
    with TestClient(create_app(db[0])) as c:
        yield c


@pytest.fixture(scope="module")
def filled(db: tuple[str, Filled]) -> Filled:
    return db[1]


def _charts(html: str) -> dict[str, int]:
    return {title: int(n) for title, n in SVG.findall(html)}


def _chart(html: str, prefix: str) -> int:
    found = [n for title, n in _charts(html).items() if title.startswith(prefix)]
    assert len(found) == 1, (prefix, _charts(html))
    return found[0]


def test_model_loss_is_the_shared_before_loss_of_each_window(client: TestClient, filled: Filled) -> None:
    body = client.get("/api/v1/model/loss").json()
    windows = [p["window"] for p in body["items"]]
    assert body["last"] == 200 and windows == [*filled.scored_windows, filled.open_window]  # oldest first
    for point in body["items"][:-1]:
        receipts = client.get(f"/api/v1/windows/{point['window']}/evaluations").json()["items"]
        shared = {r["loss_before_random"] for r in receipts if r["loss_before_random"] is not None}
        assert shared == {point["loss_before_random"]}
        assert point["loss_before_random"] == pytest.approx(4.1 - point["window"] * 0.01, abs=0.013)
    losses = [p["loss_before_random"] for p in body["items"][:-1]]
    assert losses[-1] < losses[0]  # the fixture's model learns
    current = body["items"][-1]
    assert current["status"] == "open" and current["loss_before_random"] is None
    assert current["publisher"] is None and set(current) == {"window", "status", "loss_before_random", "publisher",
                                                              "num_evaluated"}
    by_window = {p["window"]: p for p in body["items"]}
    assert by_window[filled.null_window]["publisher"] is None  # theta unchanged
    assert by_window[filled.scored_windows[0]]["publisher"] == filled.validator
    assert by_window[filled.scored_windows[-1]]["publisher"] == filled.failover_to
    tail = client.get("/api/v1/model/loss", params={"last": 2}).json()
    assert [p["window"] for p in tail["items"]] == windows[-2:] and tail["last"] == 2


def test_window_outcomes_count_every_status(client: TestClient, filled: Filled) -> None:
    body = client.get("/api/v1/windows/outcomes").json()
    items = body["items"]
    assert [o["window"] for o in items] == [*filled.scored_windows, filled.open_window]
    for o in items:
        counts = client.get(f"/api/v1/windows/{o['window']}").json()["counts"]
        assert {k: v for k, v in o.items() if k not in ("window", "status") and v} == counts
    last_scored = items[-2]
    assert last_scored["unevaluated"] == 1 and last_scored["status"] == "scored"
    assert all(o["unevaluated"] == 0 for o in items[:-2])
    assert items[-1] | {"window": 0} == {"window": 0, "status": "open", "accepted": 1, "rejected": 0, "missing": 0,
                                          "unevaluated": 0}
    assert len(client.get("/api/v1/windows/outcomes", params={"last": 1}).json()["items"]) == 1


def test_peer_scores_match_its_receipts(client: TestClient, filled: Filled) -> None:
    hk = filled.hotkeys[0]
    body = client.get(f"/api/v1/peers/{hk}/scores").json()
    history = client.get(f"/api/v1/peers/{hk}/history").json()["items"]
    assert body["hotkey"] == hk and [p["window"] for p in body["items"]] == [r["window"] for r in reversed(history)]
    for point, r in zip(body["items"], reversed(history), strict=True):
        for key in ("status", "final_score", "weight", "rating_mu_after", "rating_sigma_after"):
            assert point[key] == r[key]
        for key in ("loss_improvement_assigned", "loss_improvement_random"):
            assert point[key] == pytest.approx(r[key]) if r[key] is not None else point[key] is None
    scored = [p for p in body["items"] if p["window"] in filled.scored_windows]
    assert all(p["final_score"] is not None and p["weight"] is not None for p in scored)
    tail = client.get(f"/api/v1/peers/{hk}/scores", params={"last": 2}).json()["items"]
    assert [p["window"] for p in tail] == [p["window"] for p in body["items"][-2:]]
    assert client.get(f"/api/v1/peers/{hotkey(999)}/scores").status_code == 404


@pytest.mark.parametrize("path", ["/api/v1/model/loss", "/api/v1/windows/outcomes",
                                  f"/api/v1/peers/{hotkey(0)}/scores", "/", "/windows", f"/peer/{hotkey(0)}"])
@pytest.mark.parametrize("query", ["last=0", "last=1001", "last=abc"])
def test_last_is_bounded(client: TestClient, path: str, query: str) -> None:
    response = client.get(f"{path}?{query}")
    assert response.status_code == 422, response.text


def test_unknown_parameter_is_a_422(client: TestClient) -> None:
    assert client.get("/api/v1/model/loss?limit=5").status_code == 422


def test_front_page_charts_the_model_loss_outcomes_and_follow_state(client: TestClient, filled: Filled) -> None:
    html = client.get("/").text
    assert _chart(html, "Global model loss") == len(filled.scored_windows)  # the open window has no loss yet
    assert _chart(html, "Receipts per window") == len(filled.scored_windows) + 1
    assert "unevaluated" in html and "Leaderboard" in html
    # Links come from per-request memoised route paths (validator.api.app._path_for): still exact.
    assert all(f'href="/peer/{hk}"' in html for hk in filled.hotkeys if hk != filled.deregistered)
    assert 'href="/static/style.css"' in html and 'href="/api/v1/health"' in html
    follow = html.split('id="follow"')[1].split("</section>")[0]
    assert "following" in follow and filled.failover_to is not None and filled.failover_to[:6] in follow
    assert "failovers <b>1</b>" in follow and "null windows <b>1</b>" in follow
    assert "(this validator)" in follow and "unbroken" in follow and "chain" in follow
    assert "Validators on chain after window" in follow  # agreement, measured by the validator
    tail = client.get("/", params={"last": 3}).text
    assert _chart(tail, "Global model loss") == 2 and _chart(tail, "Receipts per window") == 3


def test_peer_page_draws_score_and_weight_history(client: TestClient, filled: Filled) -> None:
    hk = filled.hotkeys[0]
    charts = _charts(client.get(f"/peer/{hk}").text)
    assert charts["Final score"] == charts["Weight"] == len(filled.scored_windows)
    tail = _charts(client.get(f"/peer/{hk}", params={"last": 3}).text)
    assert tail["Final score"] == tail["Weight"] == 2  # the open window's receipt is not scored yet


def test_windows_page_lists_unevaluated_and_publishers(client: TestClient, filled: Filled) -> None:
    html = client.get("/windows").text
    assert "Unevaluated" in html and "null window" in html and filled.validator is not None
    assert filled.validator[:6] in html
    assert _chart(client.get("/windows", params={"last": 2}).text, "Receipts per window") == 2


def test_follow_view_counts_publishers_and_finds_breaks_in_the_hash_chain() -> None:
    def row(w: int, base: str, nxt: str | None, publisher: str | None) -> SimpleNamespace:
        return SimpleNamespace(window=w, base_model_hash=base, next_model_hash=nxt, publisher=publisher)

    rows = [row(1, "a", "b", "A"), row(2, "b", "c", "A"), row(3, "x", "x", None), row(4, "x", "y", "B"),
            row(6, "q", None, None)]
    view = follow_view(rows, None, "A")
    assert view.publishers == [("A", 2), ("B", 1)] and view.null_windows == 1 and view.undecided == 1
    assert view.chain_breaks == [2]  # theta_3 computed in window 2 is not what window 3 scored; 4 -> 6 is a gap
    assert follow_view([], None, None).windows == 0


def test_validators_endpoint_and_front_page_show_the_agreement_on_chain(client: TestClient, filled: Filled) -> None:
    body = client.get("/api/v1/validators").json()
    assert body["window"] == filled.scored_windows[-1] and body["block"] == 1234
    assert [v["hotkey"] for v in body["validators"]] == [filled.failover_to, filled.validator]
    assert body["validators"][0]["overlap"] == 0.91
    html = client.get("/").text
    table = html[html.index('<table id="validators">'):]
    table = table[:table.index("</table>")]
    assert "0.980" in table and "0.910" in table and "(this validator)" in table


def test_validators_endpoint_is_empty_before_a_measurement(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'v.db'}"
    filled_database(url)
    with TestClient(create_app(url)) as c:
        assert c.get("/api/v1/validators").json() == {"window": None, "block": None, "validators": []}
        assert "No agreement with other validators measured yet" in c.get("/").text
