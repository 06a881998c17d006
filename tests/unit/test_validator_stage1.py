"""Stage 1 filters: sync distance, metadata, norms, copies, replays, bans, and how wire rejections are named.

Run: ``pytest tests/unit/test_validator_stage1.py -q``
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from protocol.hparams import HParams
from scoring.filters import Rejection
from validator.collect import Collected
from validator.stage1 import (
    Candidate,
    Decoded,
    SketchHistory,
    Stage1Result,
    _check_meta,
    _filter_copies,
    filter_norms,
    run_stage1,
    steps_behind,
)

HP = HParams()


def _cand(hk: str, seed: int, norm_scale: float = 1.0, t: float = 0.0, like: Candidate | None = None) -> Candidate:
    g = torch.Generator().manual_seed(seed)
    if like is None:
        idx = torch.stack([torch.randperm(4096, generator=g)[:64].sort().values + 4096 * c for c in range(8)])
        val = torch.randn(8, 64, generator=g)
    else:
        idx, val = like.decoded.sketch_idx.clone(), like.decoded.sketch_val * 1.5
    val = val * norm_scale
    return Candidate(hk, 0, t, f"h{hk}", 100, 0, Decoded({}, idx, val, float(val.norm())))


def test_steps_behind_hand_computed() -> None:
    recent = {"h10": 10, "h8": 8}
    assert steps_behind("h10", window=10, recent_hashes=recent) == 0
    assert steps_behind("h8", window=10, recent_hashes=recent) == 2
    assert steps_behind("zz", window=10, recent_hashes=recent) is None


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        (dict(spec_version=1, hotkey="me", window=5), None),
        (dict(spec_version=2, hotkey="me", window=5), Rejection.MALFORMED),
        # Not this hotkey's signature for this window: possibly planted in its store by anyone who can
        # write there, so never a copy/replay (those ban the hotkey), see test_planted_uploads_...
        (dict(spec_version=1, hotkey="other", window=5), Rejection.FOREIGN),  # someone's signed upload
        (dict(spec_version=1, hotkey="me", window=4), Rejection.WRONG_WINDOW),  # own old delta
        (dict(spec_version=1, hotkey="me", window=6), Rejection.WRONG_WINDOW),
    ],
)
def test_signed_metadata(meta: dict, reason: Rejection | None) -> None:
    got = _check_meta(SimpleNamespace(**meta), window=5, hotkey="me", hp=HP)
    assert (got[0] if got else None) == reason


def test_norm_bounds_against_the_window_median() -> None:
    res = Stage1Result(accepted={"a": _cand("a", 1), "b": _cand("b", 2), "c": _cand("c", 3),
                                 "big": _cand("big", 4, norm_scale=50.0), "zero": _cand("zero", 5, 0.0)})
    filter_norms(res, HP)  # max_norm_ratio = 10: 50x the median is out
    assert res.rejected["big"].reason == "norm_too_large"
    assert res.rejected["zero"].reason == "norm_too_small"
    assert set(res.accepted) == {"a", "b", "c"}
    norms = sorted(c.decoded.norm for c in res.accepted.values())
    assert res.median_norm == pytest.approx(norms[1])  # median of the survivors


def test_later_copy_is_rejected_and_earlier_kept_then_replay_caught() -> None:
    orig = _cand("orig", 1, t=10.0)
    res = Stage1Result(accepted={"orig": orig, "copier": _cand("copier", 0, t=20.0, like=orig),
                                 "honest": _cand("honest", 2, t=5.0)})
    history = SketchHistory(keep=3)
    _filter_copies(res, window=7, hp=HP, history=history, seed=1)
    assert set(res.accepted) == {"orig", "honest"}
    assert res.rejected["copier"].reason == "copy" and res.rejected["copier"].copy_of == "orig"
    # Next window: someone re-uploads orig's old delta (rescaled) -> replay of window 7.
    nxt = Stage1Result(accepted={"replayer": _cand("replayer", 0, t=1.0, like=orig), "new": _cand("new", 9)})
    _filter_copies(nxt, window=8, hp=HP, history=history, seed=2)
    assert nxt.rejected["replayer"].reason == "replay" and set(nxt.accepted) == {"new"}


def test_banned_and_uncollected_peers_get_their_reason() -> None:
    collected = {
        "b": Collected("b", 1, "s3://x", data=b"..", uploaded_at=1.0),
        "m": Collected("m", 2, "s3://x", reason="missing"),
        "l": Collected("l", 3, "s3://x", reason="late", uploaded_at=99.0),
    }
    res = run_stage1(collected, window=3, hp=HP, shapes={}, cfg=None, recent_hashes={}, banned=["b"])
    assert {hk: r.reason for hk, r in res.rejected.items()} == {"b": "banned", "m": "missing", "l": "late"}
    assert not res.accepted


def test_wire_rejections_keep_their_meaning() -> None:
    from bittensor.sp_core import Keypair

    from protocol.codec import CodecConfig, encode
    from protocol.wire import DeltaMeta, pack_delta
    from testing.adversaries import poison_tables
    from validator.stage1 import _parse_one

    cfg, shapes = CodecConfig(chunk=256, topk=6), {"w": (24, 40), "b": (40,)}
    alice, bob = Keypair.create_from_uri("//Alice"), Keypair.create_from_uri("//Bob")
    meta = DeltaMeta(window=7, hotkey=alice.ss58_address, base_model_hash="ab" * 32, spec_version=HP.spec_version)
    g = torch.Generator().manual_seed(0)
    good = pack_delta(encode({n: torch.randn(s, generator=g) for n, s in shapes.items()}, cfg), meta, cfg, alice)

    def parse(blob: bytes) -> object:
        peer = Collected(alice.ss58_address, 1, "file://x", data=blob, uploaded_at=1.0, size=len(blob))
        return _parse_one(peer, window=7, hp=HP, shapes=shapes, cfg=cfg, recent_hashes={"ab" * 32: 7})

    assert isinstance(parse(good), Candidate)
    for value in (float("nan"), float("inf")):
        rejected = parse(poison_tables(good, alice, value))
        assert (rejected.reason, rejected.detail.split(":")[0]) == (Rejection.NOT_FINITE.value, "lut_not_finite")
    assert parse(poison_tables(good, bob, 1.0)).reason == Rejection.BAD_SIGNATURE.value  # signed by someone else
    truncated = parse(good[: len(good) // 2])
    assert truncated.reason == Rejection.MALFORMED.value and truncated.detail


def test_planted_uploads_do_not_ban_the_victim() -> None:
    """Another miner's signed delta, or the victim's own older one, put under the victim's key.

    Whoever can write to the victim's store can do this; before, it was rejected as copy/replay
    and banned the *victim* for 200 windows. Now it is judged like a missing upload: the
    standing is exactly what a missing window gives (x0.75 decay, one more idle window).
    """
    from bittensor.sp_core import Keypair

    from protocol.codec import CodecConfig, encode
    from protocol.wire import DeltaMeta, pack_delta
    from scoring.final import PeerState
    from scoring.ratings import Rating
    from validator.combine import combine_window

    cfg, shapes, base = CodecConfig(chunk=256, topk=6), {"w": (24, 40), "b": (40,)}, "ab" * 32
    victim, attacker = Keypair.create_from_uri("//Alice"), Keypair.create_from_uri("//Bob")
    g = torch.Generator().manual_seed(0)

    def signed(key: Keypair, window: int) -> bytes:
        meta = DeltaMeta(window=window, hotkey=key.ss58_address, base_model_hash=base, spec_version=HP.spec_version)
        return pack_delta(encode({n: torch.randn(s, generator=g) for n, s in shapes.items()}, cfg), meta, cfg, key)

    hk, w = victim.ss58_address, 7
    before = PeerState(Rating(30.0, 5.0), bma=0.2, score=2.0, inactive_windows=1)
    planted = {"foreign": signed(attacker, w), "wrong_window": signed(victim, w - 1)}
    missing = Stage1Result(rejected={hk: run_stage1({hk: Collected(hk, 1, "s3://x", reason="missing")}, window=w,
                                                    hp=HP, shapes=shapes, cfg=cfg, recent_hashes={}).rejected[hk]})
    expected = combine_window(w, prev={hk: before}, stage1=missing, results={}, hp=HP).peers[hk].state
    for reason, blob in planted.items():
        peer = Collected(hk, 1, "s3://x", data=blob, uploaded_at=1.0, size=len(blob))
        s1 = run_stage1({hk: peer}, window=w, hp=HP, shapes=shapes, cfg=cfg, recent_hashes={base: w})
        assert s1.rejected[hk].reason == reason and not s1.accepted
        after = combine_window(w, prev={hk: before}, stage1=s1, results={}, hp=HP).peers[hk].state
        assert after.banned_until_window is None
        assert (after.rating, after.bma) == (Rating(30.0, 5.0), 0.2)  # rating and bma kept
        assert after.score == pytest.approx(1.5) and after.inactive_windows == 2  # the missing-window decay
        assert after == expected


def test_own_signed_copy_still_bans() -> None:
    """The ban stays for what the hotkey itself signed for W: its own delta carrying someone else's values."""
    from scoring.final import PeerState
    from validator.combine import combine_window

    orig = _cand("orig", 1, t=10.0)
    res = Stage1Result(accepted={"orig": orig, "copier": _cand("copier", 0, t=20.0, like=orig)})
    _filter_copies(res, window=7, hp=HP, history=None, seed=1)
    out = combine_window(7, prev={"copier": PeerState(score=2.0)}, stage1=res, results={}, hp=HP)
    assert res.rejected["copier"].reason == Rejection.COPY.value
    assert out.peers["copier"].state.banned_until_window == 7 + HP.scoring.copy_ban_windows



def test_an_accepted_upload_is_held_compressed_and_decoded_on_demand() -> None:
    """Memory per peer is the upload's size, not 12 bytes per kept value (issue 12)."""
    from protocol.codec import CodecConfig, decode_sparse, encode
    from protocol.model import param_shapes, preset
    from validator.stage1 import decode_upload

    shapes = param_shapes(preset("tiny"))
    cfg = CodecConfig()
    g = torch.Generator().manual_seed(0)
    enc = encode({n: torch.randn(s, generator=g) for n, s in shapes.items()}, cfg)
    compressed = sum(e.idx.numel() + e.codes.numel() + 4 * e.lut.numel() for e in enc.values())
    decoded = decode_upload(enc, shapes, cfg)
    assert decoded.update is None and decoded.sketch_idx is None  # nothing decoded is kept
    assert decoded.nbytes() <= 1.05 * compressed
    update = decoded.load_update()
    kept = sum(i.numel() for i, _ in update.values())
    assert kept * 12 > 8 * compressed  # what holding the decoded form would have cost
    for name, (idx, val) in update.items():  # the same values as a direct decode
        sparse = decode_sparse(enc[name], cfg)
        real = sparse.indices.reshape(-1) < math.prod(shapes[name])
        assert torch.equal(idx, sparse.indices.reshape(-1)[real]) and torch.equal(val, sparse.values.reshape(-1)[real])
    idx, val = decoded.rows()
    assert tuple(idx.shape) == decoded.sketch_shape and idx.shape == val.shape
    assert decoded.norm == pytest.approx(float(torch.cat([v for _, v in update.values()]).double().norm()))
