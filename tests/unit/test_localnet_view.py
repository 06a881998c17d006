"""The localnet's live view of one validator database.

Run: ``pytest tests/unit/test_localnet_view.py -q``
"""

from __future__ import annotations

from pathlib import Path

from gauntlet.localnet_view import View
from validator.db import repo, weight_repo
from validator.db.models import Evaluation
from validator.db.session import make_engine, migrate, session_factory


def test_a_window_shows_the_weights_its_scores_imply_until_its_weight_set_exists(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    migrate(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    receipts = [Evaluation(hotkey="hk-a", uid=1, status="accepted", final_score=3.0, weight=0.75),
                Evaluation(hotkey="hk-b", uid=2, status="accepted", final_score=1.0, weight=0.25)]
    with sessions() as s:
        repo.open_window(s, window=4)
        repo.mark_window_scored(s, window=4, evaluations=receipts)
    view = View(url, {"hk-a": ("a", "honest"), "hk-b": ("b", "honest")})
    try:
        assert [(r.name, r.weight) for r in view.window_rows(4)] == [("a", 0.75), ("b", 0.25)]
        with sessions() as s:  # once set, the table shows what the chain was told
            weight_repo.record_weight_set(s, window=4, uids=[1, 2], weights=[0.6, 0.4], version_key=0)
            s.commit()
        assert [(r.name, r.weight) for r in view.window_rows(4)] == [("a", 0.6), ("b", 0.4)]
    finally:
        view.close()
        engine.dispose()
