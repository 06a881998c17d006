"""Golden vectors (``tests/golden``): wire bytes, codec output and multi-window scoring stay as pinned.

A failure here means a format or scoring change: miners and other implementations would
disagree with this validator. If the change is intended, regenerate with
``python -m tests.golden.generate`` and say so in the commit. Run: ``pytest tests/unit/test_golden.py -q``
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.golden import generate as g

UPLOAD = (g.VECTORS / "upload.gdlt").read_bytes()
CODEC = json.loads((g.VECTORS / "codec.json").read_text())
SCORING = json.loads((g.VECTORS / "scoring.json").read_text())


def test_the_stored_upload_parses_and_decodes_to_the_pinned_values() -> None:
    from bittensor.sp_core import Keypair

    from protocol.codec import CodecConfig, decode_sparse
    from protocol.wire import parse_delta

    cfg = CodecConfig(chunk=CODEC["chunk"], topk=CODEC["topk"])
    hotkey = Keypair.create_from_uri(g.KEY_URI).ss58_address
    parsed = parse_delta(UPLOAD, expected_shapes=g.SHAPES, cfg=cfg, max_bytes=1 << 20,
                         expected={"window": g.WINDOW, "hotkey": hotkey, "base_model_hash": g.BASE_HASH,
                                   "spec_version": g.SPEC})
    assert parsed.size == len(UPLOAD)
    for name, pinned in CODEC["tensors"].items():
        sparse = decode_sparse(parsed.encoded[name], cfg)
        assert g.sha(sparse.values) == pinned["decoded_values_sha256"], name
        assert g.sha(sparse.indices) == pinned["decoded_indices_sha256"], name


def test_packing_the_seeded_delta_gives_the_stored_payload() -> None:
    from protocol.wire import PREFIX_BYTES

    fresh = g.upload_bytes()
    assert fresh[:5] == UPLOAD[:5]  # magic and version
    assert fresh[PREFIX_BYTES:] == UPLOAD[PREFIX_BYTES:]  # the signed body (sr25519 signatures are randomised)


def test_the_codec_encodes_the_seeded_delta_as_pinned() -> None:
    got = g.codec_vectors()
    assert (got["chunk"], got["topk"]) == (CODEC["chunk"], CODEC["topk"])
    for name, pinned in CODEC["tensors"].items():
        mine = got["tensors"][name]
        assert mine["idx_sha256"] == pinned["idx_sha256"], name  # which coordinates are kept
        assert mine["codes_sha256"] == pinned["codes_sha256"], name  # their 2-bit codes
        torch.testing.assert_close(torch.tensor(mine["lut"]), torch.tensor(pinned["lut"]), rtol=1e-6, atol=0)


def test_six_windows_of_scores_and_weights_are_as_pinned() -> None:
    got = g.scoring_vectors()["windows"]
    assert len(got) == len(SCORING["windows"])
    for mine, pinned in zip(got, SCORING["windows"], strict=True):
        assert mine["u16"] == pinned["u16"], mine["window"]
        assert mine["weights"].keys() == pinned["weights"].keys()
        for uid, w in pinned["weights"].items():
            assert mine["weights"][uid] == pytest.approx(w, rel=1e-9, abs=1e-12)
        for hk, p in pinned["peers"].items():
            for key, value in p.items():
                assert mine["peers"][hk][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (mine["window"], hk, key)


def test_the_pinned_run_pays_work_and_not_free_riding() -> None:
    """The vectors mean something: honest-8 leads at the end, the free-rider gets nothing."""
    last = SCORING["windows"][-1]["weights"]
    assert max(last, key=last.get) == "1" and "4" not in last
