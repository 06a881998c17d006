"""``validator.audit`` on a window the real validator scored (SQLite, local chain, real uploads, API in process).

Two windows: window 0 with honest miners, garbage, a copy within the window, a wrong base model
and a missing upload; window 1 with a miner one step behind and the copier banned. The audit
must match every receipt of both, and report tampered receipts, a swapped upload, an upload
gone, a window not scored and a model not reachable.

Run: ``pytest tests/unit/test_audit.py -q``
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from protocol.codec import CodecConfig
from protocol.global_model import GlobalModel
from protocol.hparams import HParams
from protocol.pages import assigned_pages
from protocol.settings import load_settings
from protocol.storage import delta_key
from scoring.scale import step_factor
from testing import validator_sim as simulate
from validator import service
from validator.api.app import create_app
from validator.api.schemas import Receipt
from validator.app import RunOptions, build_context
from validator.audit import AuditInputs, audit, previous_state
from validator.audit_api import AuditError, ScoreApi
from validator.db import repo
from validator.db.models import Evaluation

pytestmark = pytest.mark.slow

HP = HParams().override(**{"windows.publish_timeout_s": 5.0,
    "windows.blocks_per_window": 100, "windows.upload_grace_s": 5.0, "data.seq_len": 32, "data.page_seqs": 4,
    "data.pages_per_window": 2, "data.eval_pages": 2, "outer.checkpoint_every": 2, "weights.set_every_windows": 1,
    "scoring.max_norm_ratio": 5.0,
})


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("audit")
    net = simulate.local_net(tmp, HP, 7, pages=simulate.RandomPages(page_seqs=4, seq_len=32))
    db_url = f"sqlite:///{tmp / 'v.db'}"
    settings = load_settings(None, home=tmp / "home", database_url=db_url, storage=f"file://{tmp / 'vstore'}")
    ctx = build_context(settings, HP, options=RunOptions(allow_local_storage=True), chain=net.chain,
                        keypair=net.validator, pages=net.pages)
    assert service.bootstrap(ctx, 0) == 0
    m, n = net.miners, net.pages.num_pages
    theta0 = GlobalModel.initial(HP, window=0)
    t0 = net.window_time(0)
    for miner in m[:3]:
        simulate.put(miner, 0, simulate.honest_upload(miner, theta0, 0, net.pages, HP, n), uploaded_at=t0)
    simulate.put(m[3], 0, b"GDLT" + b"\x00" * 300, uploaded_at=t0)
    stolen = simulate.training_delta(theta0, net.pages.pages(assigned_pages(0, m[0].hotkey, HP.data.public_seed, n, 2)))
    simulate.put(m[4], 0, simulate.sign(simulate.encode({k: 1.01 * v for k, v in stolen.items()}, HP), window=0,
                                        hotkey=m[4].hotkey, base_hash=theta0.hash, kp=m[4].keypair, hp=HP),
                 uploaded_at=t0 + 1)
    simulate.put(m[5], 0, simulate.sign(simulate.encode(stolen, HP), window=0, hotkey=m[5].hotkey, base_hash="ab" * 32,
                                        kp=m[5].keypair, hp=HP), uploaded_at=t0)  # m[6]: missing
    net.close_window(0)
    assert [r.window for r in service.run_pass(ctx, service.LoopConfig())] == [0]
    theta1 = ctx.carry.model
    assert theta1 is not None and theta1.window == 1
    moved = theta1.hash != theta0.hash  # the validator's model object moves on in place: compare now
    t1 = net.window_time(1)
    for miner in m[:2] + m[4:5]:  # the copier is banned now
        simulate.put(miner, 1, simulate.honest_upload(miner, theta1, 1, net.pages, HP, n), uploaded_at=t1)
    simulate.put(m[2], 1, simulate.honest_upload(m[2], theta0, 1, net.pages, HP, n), uploaded_at=t1)  # one behind
    net.close_window(1)
    assert [r.window for r in service.run_pass(ctx, service.LoopConfig())] == [1]
    client = TestClient(create_app(db_url))
    inputs = AuditInputs(hp=HP, chain=net.chain, netuid=1, pages=net.pages, codec_cfg=CodecConfig.from_params(HP.codec),
                         allow_local_storage=True)
    # theta moves only if some delta lowered the random loss, which depends on the validator's random seed.
    return {"net": net, "ctx": ctx, "api": ScoreApi("http://testserver", client=client), "inputs": inputs,
            "tmp": tmp, "moved": moved}


def _mismatches(report: Any) -> set[tuple[str, str]]:
    return {(c.hotkey, c.field) for c in report.checks if c.status == "mismatch"}


def test_every_receipt_of_both_windows_matches(scored: dict[str, Any]) -> None:
    api, inputs, net = scored["api"], scored["inputs"], scored["net"]
    m = [x.hotkey for x in net.miners]
    for window in (0, 1):
        report = audit(api, inputs, window)
        assert report.ok, [c for c in report.checks if c.status == "mismatch"]
        assert report.hotkeys == sorted(m)
    zero = {c.field: c for c in audit(api, inputs, 0).checks if c.hotkey == m[4]}
    assert zero["reject_reason"].published == "copy" and zero["reject_reason"].status == "match"  # within the window
    one = {(c.hotkey, c.field): c for c in audit(api, inputs, 1).checks}
    assert one[(m[4], "reject_reason")].published == "banned"  # the ban recomputed from window 0's receipt
    behind = one[(m[2], "details.steps_behind")]
    assert behind.status == "match" and behind.published == (1 if scored["moved"] else 0)
    assert one[(m[0], "rating_mu_before")].status == "match"  # carried from its window-0 receipt
    receipt = next(r for r in api.receipts(1) if r.hotkey == m[0])
    setup = receipt.setup  # what the receipt now carries
    assert setup is not None and (setup.device, setup.dtype, setup.evaluator) == ("cpu", "float32", "validator")
    assert setup.upload_url == net.miners[0].url and setup.model == HP.model
    # the size rule's factor (scoring.scale)
    assert setup.step_factor == pytest.approx(step_factor(receipt.details["norm"], receipt.details["median_norm"],
                                                          HP.scoring.eval_norm, HP.scoring.eval_clip_ratio))
    assert [c["multiple"] for c in receipt.details["reach"]] == list(HP.scoring.eval_reach)
    single = audit(api, inputs, 1, m[0])
    assert single.ok and single.hotkeys == [m[0]] and any("published receipts" in n for n in single.notes)


def test_previous_state_follows_the_penalty_rules(scored: dict[str, Any]) -> None:
    api, net = scored["api"], scored["net"]
    copier = net.miners[4].hotkey
    prev = previous_state(api.history(copier, down_to=-1), 1, HP)
    assert prev.banned_until_window == 0 + HP.scoring.copy_ban_windows and prev.inactive_windows == 0
    fake = [Receipt.model_validate({**api.history(copier, down_to=-1)[0].model_dump(), "window": w, "status": s,
                                    "reject_reason": r}) for w, s, r in
            ((9, "missing", "missing"), (8, "rejected", "banned"), (7, "unevaluated", None), (6, "rejected", "late"),
             (5, "accepted", None), (4, "missing", "missing"))]
    # Banned and unevaluated windows leave the idle count alone; an evaluated one ends it.
    assert previous_state(fake, 10, HP).inactive_windows == 2
    assert previous_state([], 10, HP).rating.mu == 25.0


def test_tampered_receipts_and_a_swapped_upload_are_mismatches(scored: dict[str, Any]) -> None:
    api, inputs, net, ctx = scored["api"], scored["inputs"], scored["net"], scored["ctx"]
    m = net.miners
    with ctx.sessions() as s:
        rows = {e.hotkey: e for e in s.scalars(sa.select(Evaluation).where(Evaluation.window == 1))}
        rows[m[0].hotkey].loss_after_random = rows[m[0].hotkey].loss_after_random + 0.01
        rows[m[1].hotkey].assigned_page_ids = [p + 1 for p in rows[m[1].hotkey].assigned_page_ids]
        s.commit()
    report = audit(api, inputs, 1)
    assert _mismatches(report) == {(m[0].hotkey, "loss_after_random"), (m[1].hotkey, "assigned_page_ids")}

    # m0's upload replaced by m1's (signed by m1), store timestamp kept: caught by hash and signature.
    path, other = (m[i].store.root / delta_key(1, m[i].hotkey) for i in (0, 1))
    stamp = path.stat().st_mtime
    shutil.copyfile(other, path)
    os.utime(path, (stamp, stamp))
    swapped = _mismatches(audit(api, inputs, 1, m[0].hotkey))
    assert {(m[0].hotkey, f) for f in ("payload_hash", "reject_reason", "status")} <= swapped


def test_clear_errors(scored: dict[str, Any]) -> None:
    api, inputs, net, ctx = scored["api"], scored["inputs"], scored["net"], scored["ctx"]
    with ctx.sessions() as s:
        repo.open_window(s, window=2)
    with pytest.raises(AuditError, match="window 2 is not scored yet"):
        audit(api, inputs, 2)
    with pytest.raises(AuditError, match="window 9 is unknown"):
        audit(api, inputs, 9)
    with pytest.raises(AuditError, match="no receipt for 5Gnobody"):
        audit(api, inputs, 1, "5Gnobody")
    (net.miners[2].store.root / delta_key(1, net.miners[2].hotkey)).unlink()
    with pytest.raises(AuditError, match=f"the upload of {net.miners[2].hotkey} for window 1 is gone"):
        audit(api, inputs, 1, net.miners[2].hotkey)
    other = HP.override(**{"scoring.indicator_alpha": 0.1})
    with pytest.raises(AuditError, match="other hyper-parameters"):
        audit(api, AuditInputs(**{**inputs.__dict__, "hp": other}), 0)
    shutil.rmtree(scored["tmp"] / "vstore")
    with pytest.raises(AuditError, match="model theta_0 is not reachable"):
        audit(api, inputs, 0)


def test_the_api_client_caps_and_validates_answers() -> None:
    import httpx

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/windows/1"):
            return httpx.Response(200, content=b"x" * 2000)
        if request.url.path.endswith("/windows/2"):
            return httpx.Response(200, json={"window": 2, "status": "nonsense"})
        return httpx.Response(500)

    api = ScoreApi("http://api", client=httpx.Client(transport=httpx.MockTransport(serve)), max_bytes=1000)
    with pytest.raises(AuditError, match="more than 1000 bytes"):
        api.window(1)
    with pytest.raises(AuditError, match="malformed"):
        api.window(2)
    with pytest.raises(AuditError, match="HTTP 500"):
        api.receipts(3)
    unreachable = ScoreApi("http://127.0.0.1:9", timeout_s=1.0)
    with pytest.raises(AuditError, match="cannot reach the score API"):
        unreachable.window(1)


def test_the_api_publishes_setup_typed_and_tolerates_old_or_odd_rows() -> None:
    from validator.api.schemas import _split_setup

    assert _split_setup(None) == (None, {})
    assert _split_setup({"norm": 1.0, "setup": {"model": "tiny"}}) == (None, {"norm": 1.0})  # incomplete: dropped
    setup, rest = _split_setup({"setup": {"spec_version": 1, "hparams_digest": "ab", "model": "tiny", "model_seed": 0,
                                          "data_digest": None, "seq_len": 8, "page_seqs": 2, "batch": "b",
                                          "eval_eta": 0.2, "size_rule": "cap", "eval_step": 0.2, "step_factor": 1.0,
                                          "upload_url": None, "future_key": 1}})
    assert setup is not None and setup.model == "tiny" and rest == {}


def test_cli_errors_are_one_line_with_status_2() -> None:
    from typer.testing import CliRunner

    from gauntlet.cli import app

    runner = CliRunner()
    both = runner.invoke(app, ["audit", "--api", "http://127.0.0.1:9", "--window", "1"])
    assert both.exit_code == 2 and "give exactly one of --hotkey HK or --all" in both.output
    down = runner.invoke(app, ["audit", "--api", "http://127.0.0.1:9", "--window", "1", "--all"])
    assert down.exit_code == 2 and down.output.strip().startswith("gauntlet audit: cannot reach the score API")
    assert len(down.output.strip().splitlines()) == 1
