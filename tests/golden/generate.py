"""Golden vectors: the bytes and numbers that other implementations and later versions must reproduce.

``python -m tests.golden.generate`` rewrites ``tests/golden/vectors/`` (run it only for an
intended format or scoring change, and say so in the commit); ``tests/unit/test_golden.py``
checks the current code against the stored files:

* ``upload.gdlt``: a signed delta upload (wire format v1) of a seeded pseudo-gradient over three
  tensors that exercise the chunk padding, signed by the dev key ``//GauntletGolden``;
* ``codec.json``: per tensor, the sha256 of the encoder's index and code bytes and its lookup
  table, and the sha256 of the decoded sparse values (what a validator evaluates);
* ``scoring.json``: six windows of four peers' fixed measurements run through the scoring
  functions (contribution, per-page indicator, OpenSkill, penalties, final score, weights).

The delta's values come from integer random bits turned into floats by one exact division, so
they are the same on every machine (torch's ``randn`` takes SIMD-specific paths).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
VECTORS = HERE / "vectors"
SHAPES: dict[str, tuple[int, ...]] = {"attn.weight": (64, 128), "norm.weight": (300,), "embed.weight": (2, 4101)}
KEY_URI = "//GauntletGolden"
WINDOW, BASE_HASH, SPEC = 7, "ab" * 32, 1


def seeded_delta(seed: int = 2026) -> dict[str, torch.Tensor]:
    rng = np.random.Generator(np.random.PCG64(seed))
    out = {}
    for name, shape in SHAPES.items():
        bits = rng.integers(-(1 << 23), 1 << 23, size=int(np.prod(shape)), dtype=np.int64)
        out[name] = torch.from_numpy((bits.astype(np.float64) / (1 << 23)).astype(np.float32)).view(shape)
    return out


def sha(t: torch.Tensor | bytes) -> str:
    data = t if isinstance(t, bytes) else t.contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def codec_vectors() -> dict[str, Any]:
    from protocol.codec import CodecConfig, decode_sparse, encode

    cfg = CodecConfig()
    enc = encode(seeded_delta(), cfg)
    return {"chunk": cfg.chunk, "topk": cfg.topk,
            "tensors": {name: {"idx_sha256": sha(e.idx), "codes_sha256": sha(e.codes), "lut": e.lut.tolist(),
                               "decoded_values_sha256": sha(decode_sparse(e, cfg).values),
                               "decoded_indices_sha256": sha(decode_sparse(e, cfg).indices)}
                        for name, e in sorted(enc.items())}}


def upload_bytes() -> bytes:
    from bittensor.sp_core import Keypair

    from protocol.codec import CodecConfig, encode
    from protocol.wire import DeltaMeta, pack_delta

    key = Keypair.create_from_uri(KEY_URI)
    cfg = CodecConfig()
    meta = DeltaMeta(window=WINDOW, hotkey=key.ss58_address, base_model_hash=BASE_HASH, spec_version=SPEC)
    return pack_delta(encode(seeded_delta(), cfg), meta, cfg, key)


#: Per window and peer: (loss before, after) on the random pages, then per assigned page; None: missing.
MEASUREMENTS: list[dict[str, tuple[tuple[float, float], list[tuple[float, float]]] | None]] = [
    {"honest-8": ((5.0, 4.90), [(5.1, 4.80), (5.0, 4.75)]), "honest-4": ((5.0, 4.95), [(5.1, 4.95), (5.0, 4.90)]),
     "partial": ((5.0, 4.94), [(5.1, 4.85), (5.0, 5.01)]), "free-rider": ((5.0, 5.0), [(5.1, 5.1), (5.0, 5.0)])},
    {"honest-8": ((4.9, 4.81), [(4.95, 4.70), (4.9, 4.66)]), "honest-4": ((4.9, 4.86), [(4.95, 4.82), (4.9, 4.80)]),
     "partial": ((4.9, 4.85), [(4.95, 4.99), (4.9, 4.72)]), "free-rider": None},
    {"honest-8": ((4.8, 4.72), [(4.85, 4.60), (4.8, 4.58)]), "honest-4": ((4.8, 4.76), [(4.85, 4.73), (4.8, 4.71)]),
     "partial": ((4.8, 4.75), [(4.85, 4.66), (4.8, 4.82)]), "free-rider": ((4.8, 4.8), [(4.85, 4.85), (4.8, 4.8)])},
    {"honest-8": ((4.7, 4.63), [(4.75, 4.52), (4.7, 4.49)]), "honest-4": ((4.7, 4.67), [(4.75, 4.64), (4.7, 4.62)]),
     "partial": ((4.7, 4.66), [(4.75, 4.80), (4.7, 4.55)]), "free-rider": ((4.7, 4.71), [(4.75, 4.76), (4.7, 4.7)])},
    {"honest-8": ((4.6, 4.54), [(4.65, 4.44), (4.6, 4.41)]), "honest-4": None,
     "partial": ((4.6, 4.57), [(4.65, 4.50), (4.6, 4.61)]), "free-rider": ((4.6, 4.6), [(4.65, 4.65), (4.6, 4.6)])},
    {"honest-8": ((4.5, 4.45), [(4.55, 4.36), (4.5, 4.33)]), "honest-4": ((4.5, 4.48), [(4.55, 4.45), (4.5, 4.44)]),
     "partial": ((4.5, 4.48), [(4.55, 4.56), (4.5, 4.38)]), "free-rider": ((4.5, 4.5), [(4.55, 4.55), (4.5, 4.5)])},
]


def scoring_vectors() -> dict[str, Any]:
    """Six windows through the scoring functions in the order ``validator.combine`` applies them."""
    from protocol.hparams import HParams
    from scoring import final as fin
    from scoring import loss, ratings, weights

    hp = HParams()
    sp = hp.scoring
    uids = {"honest-8": 1, "honest-4": 2, "partial": 3, "free-rider": 4}
    state = {hk: fin.PeerState() for hk in uids}
    out = []
    for w, window in enumerate(MEASUREMENTS):
        evaluated = {hk: m for hk, m in window.items() if m is not None}
        contrib = {hk: loss.reach_contribution(*m[0], []) for hk, m in evaluated.items()}
        new = ratings.update_ratings({hk: state[hk].rating for hk in evaluated}, contrib, sp)
        for hk in uids:
            m = window[hk]
            if m is None:
                verdict = fin.Verdict.missing(w)
            else:
                ind = loss.page_indicator([loss.relative_improvement(b, a) for b, a in m[1]], contrib[hk],
                                          sp.indicator_margin)
                verdict = fin.Verdict.evaluated(w, new[hk], loss.update_bma(state[hk].bma, ind, sp.indicator_alpha),
                                                      1.0)
            state[hk] = fin.apply_penalties(state[hk], verdict, sp)
        wts = weights.compute_weights({uids[hk]: s.score for hk, s in state.items()}, hp.weights)
        out.append({"window": w,
                    "peers": {hk: {"mu": s.rating.mu, "sigma": s.rating.sigma, "bma": s.bma, "score": s.score,
                                   "inactive_windows": s.inactive_windows, "evaluated_windows": s.evaluated_windows}
                              for hk, s in state.items()},
                    "weights": {str(u): x for u, x in sorted(wts.items())},
                    "u16": list(map(list, weights.to_u16(wts)))})
    return {"windows": out}


def main() -> None:
    VECTORS.mkdir(exist_ok=True)
    (VECTORS / "upload.gdlt").write_bytes(upload_bytes())
    (VECTORS / "codec.json").write_text(json.dumps(codec_vectors(), indent=1) + "\n")
    (VECTORS / "scoring.json").write_text(json.dumps(scoring_vectors(), indent=1) + "\n")
    print(f"wrote {', '.join(sorted(p.name for p in VECTORS.iterdir()))} in {VECTORS}")


if __name__ == "__main__":
    main()
