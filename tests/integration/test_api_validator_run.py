"""The score API over a database written by a real validator run (not a fixture).

A local network (``testing.validator_sim``) with 9 miners uploads window 0: 3 honest
training deltas, then garbage, a re-signed copy, a late upload, a huge norm, a wrong base
model and a missing one (the scenario of ``test_validator_window.py``). The validator's
own loop (``service.run_pass``) scores the window into SQLite; the API must then explain
every weight with its receipt and still hide the seed of the window now open.

Run: ``pytest tests/integration/test_api_validator_run.py``
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.test_validator_window import _net_and_ctx, _upload_window0
from validator import service
from validator.api import create_app

pytestmark = pytest.mark.integration


def test_api_explains_a_real_validator_window(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'validator.db'}"
    net, _settings, ctx = _net_and_ctx(tmp_path, url, 9)
    assert service.bootstrap(ctx, 0) == 0
    honest = _upload_window0(net)
    net.close_window(0)
    reports = service.run_pass(ctx, service.LoopConfig())
    assert [r.window for r in reports] == [0]
    miners = [m.hotkey for m in net.miners]

    with TestClient(create_app(url)) as client:
        summary = client.get("/api/v1/windows/0").json()
        assert summary["status"] in ("scored", "weights_set") and summary["random_seed_hex"]
        assert summary["counts"] == {"accepted": 3, "rejected": 5, "missing": 1}
        receipts = {r["hotkey"]: r for r in client.get("/api/v1/windows/0/evaluations").json()["items"]}
        assert set(receipts) == set(miners)
        for hk in honest:
            r = receipts[hk]
            assert r["status"] == "accepted" and r["loss_improvement_assigned"] > 0
            assert r["random_seed_hex"] == summary["random_seed_hex"] and r["rating_mu_after"] is not None
        assert receipts[miners[4]]["reject_reason"] == "copy" and receipts[miners[4]]["copy_of_hotkey"] == miners[0]
        assert receipts[miners[5]]["reject_reason"] == "late"
        assert receipts[miners[8]]["status"] == "missing"
        reasons = {r["reason"] for r in client.get("/api/v1/rejections").json()["reasons"]}
        assert {"copy", "late", "norm_too_large", "out_of_sync", "missing"} <= reasons

        board = client.get("/api/v1/leaderboard").json()
        assert board["last_scored_window"] == 0 and board["total"] == len(miners)
        scores = {p["hotkey"]: p["score"] for p in board["items"]}
        for hk, r in receipts.items():  # the peer's score is the one its receipt explains
            assert scores[hk] == pytest.approx(r["final_score"])
        assert min(scores[hk] for hk in honest) >= max(s for hk, s in scores.items() if hk not in honest)
        weights = client.get("/api/v1/weights/latest")
        if weights.status_code == 200:
            assert weights.json()["window"] == 0
            assert {e["hotkey"] for e in weights.json()["weights"]} <= set(miners)
            assert all(e["weight"] >= 0 for e in weights.json()["weights"])

        history = client.get(f"/api/v1/peers/{miners[0]}/history").json()["items"]
        assert history[0]["window"] == 0 and history[0]["window_final"] is True
        for w in client.get("/api/v1/windows").json()["items"]:
            if w["status"] not in ("scored", "weights_set"):
                assert w["random_seed_hex"] is None  # an open window's seed stays secret
        page = client.get(f"/peer/{miners[0]}")
        assert page.status_code == 200 and "<svg" in page.text
