"""Versioned hyper-parameters every node of a subnet must agree on.

Miners and validators load the same ``hparams.json``; its ``spec_version`` is bound into
every signed upload and set as the weights version key, so a node running a different
spec is rejected instead of silently mis-scored. Unknown keys are errors: a typo in an
operator's file must not fall back to a default without anyone noticing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "CodecParams",
    "DataParams",
    "HParams",
    "HParamsError",
    "InnerParams",
    "OuterParams",
    "ScoringParams",
    "WeightParams",
    "WindowParams",
    "load_hparams",
]

SPEC_VERSION = 1
DEFAULT_HPARAMS_PATH = Path(__file__).with_name("hparams.json")


class HParamsError(ValueError):
    """The hyper-parameter file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowParams(_Strict):
    blocks_per_window: int = Field(125, ge=1, description="Chain blocks per window (125 x 12 s = 25 min).")
    upload_grace_s: float = Field(70.0, gt=0, description="Uploads count if the store's timestamp is at most this long after the window ends.")
    genesis_block: int = Field(0, ge=0, description="Block at which window 0 starts.")
    publish_timeout_s: float = Field(
        600.0, gt=0,
        description="The followed validator's aggregate of window W counts only if stored at most this long after "
        "W's upload grace ends; past it every node fails over to the next validator (protocol.follow). Must exceed "
        "a validator's scoring time and stay below a window.",
    )


class DataParams(_Strict):
    seq_len: int = Field(128, ge=8, description="Tokens per training sequence.")
    page_seqs: int = Field(8, ge=1, description="Sequences per page; a page is the unit of data assignment.")
    pages_per_window: int = Field(4, ge=1, description="Pages each miner must train on per window.")
    eval_pages: int = Field(2, ge=1, description="Pages sampled per peer for loss scoring (assigned and random each).")
    public_seed: str = Field("gauntlet-v1", min_length=1, description="Public seed mixed into page assignment.")


class InnerParams(_Strict):
    optimizer: Literal["adamw", "muon"] = "adamw"
    steps: int = Field(30, ge=1, description="H, inner optimizer steps per window.")
    lr: float = Field(1.3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(0, ge=0)
    micro_batch: int = Field(8, ge=1, description="Sequences per inner step.")


class CodecParams(_Strict):
    chunk: int = Field(4096, ge=64, description="Elements per top-k chunk.")
    topk: int = Field(64, ge=1, description="Values kept per chunk (64/4096 = 1.5625% density).")
    ef_beta: float = Field(
        0.99, ge=0, le=1,
        description="Error-feedback decay: e <- beta*e + delta. 0.99 stayed within 1% of tuned DiLoCo from 40 to 60 "
        "windows, 0.95 was 1.9% behind at 60 (benchmarks/RESULTS.md, Convergence).",
    )

    @model_validator(mode="after")
    def _check(self) -> CodecParams:
        if self.topk > self.chunk:
            raise ValueError("codec.topk must not exceed codec.chunk")
        if self.chunk & (self.chunk - 1):
            raise ValueError("codec.chunk must be a power of two")
        return self


class OuterParams(_Strict):
    lr: float = Field(
        0.25, gt=0,
        description="Outer SGD learning rate applied to the aggregate (best for selected_mean in benchmarks/RESULTS.md).",
    )
    max_peers: int = Field(20, ge=1, description="Top peers by score aggregated into the outer step.")
    # selected_mean averages each coordinate over the peers that kept it, so the step does not
    # shrink as more peers with disjoint top-k sets are aggregated; trimmed_mean over all peers
    # zeroes coordinates that only a few peers kept (their error feedback already counted them as sent).
    rule: Literal["mean", "selected_mean", "trimmed_mean", "centered_clip"] = "selected_mean"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5)
    checkpoint_every: int = Field(10, ge=1, description="Windows between full checkpoints.")


class ScoringParams(_Strict):
    eval_step_scale: float = Field(
        0.8, gt=0, description="Evaluation step = scale x outer lr (0.8 x 0.25 = 0.2, the step benchmarks/effort.py measured)."
    )
    eval_norm: Literal["cap", "normalise"] = Field(
        "cap",
        description="How a delta's size enters Stage 2 and the aggregate (scoring.scale): 'cap' at eval_clip_ratio x "
        "the median norm (inflating a delta pays up to that factor), or 'normalise' every delta to the median norm "
        "(scale-invariant; on the local chain it leaves 2-8-step honest miners near-tied, each validator breaks the "
        "ties with its own random pages, and three validators shared only 58-76% of their weight; RESULTS.md Effort).",
    )
    eval_reach: tuple[float, ...] = Field(
        (4.0, 16.0, 64.0),
        description="Further multiples of the evaluation step at which the random-page loss is measured along the "
        "normalised direction; the contribution is the best gain over 1 and these (scoring.loss.reach_contribution). "
        "More inner work keeps lowering the loss further along its direction; size alone does not.",
    )
    eval_clip_ratio: float = Field(
        3.0, ge=1,
        description="With eval_norm 'cap': the evaluated delta's norm is capped at this x the window's median norm: "
        "loose enough that effort shows (honest norms spread ~3x), tight enough that inflating buys at most this.",
    )
    eval_reserve_fraction: float = Field(
        0.25, ge=0, lt=1,
        description="Stage 2 stops this share of windows.publish_timeout_s before the publish deadline, leaving it "
        "for combining, aggregating and publishing; peers not evaluated by then are recorded as unevaluated "
        "(validator.stage2).",
    )
    indicator_alpha: float = Field(0.05, gt=0, le=1, description="bma <- (1-a)*bma + a*indicator.")
    proof_floor: float = Field(
        0.6, ge=-1, lt=1,
        description="Proof of work (bias-corrected bma, scoring.work.proof_of_work) at or below which a peer earns "
        "nothing. Under the rank test a peer that trains on half its assigned pages averages ~0.48, honest ones "
        "0.77-0.89, a page nobody trained on 0 (benchmarks/RESULTS.md, Effort).",
    )
    proof_full: float = Field(
        0.8, gt=-1, le=1, description="Proof of work at or above which the work gate is fully open (linear between)."
    )
    proof_prior_windows: int = Field(
        4, ge=0,
        description="Virtual passed windows in front of a peer's first: one unlucky page early must not shut an "
        "honest newcomer's gate (scoring.work).",
    )
    score_temperature: float | None = Field(
        None, gt=0,
        description="None: final score = max(0, ordinal) x work gate x sync. A number T: exp(ordinal / T) x gate x "
        "sync, which pays every gated-in peer in rank order, low effort included, but also pays valid noise "
        "while the gate's prior outweighs its evidence (scoring.final; benchmarks/RESULTS.md, Effort).",
    )
    indicator_margin: float = Field(
        0.0, ge=0,
        description="An assigned page's gain must beat the control pages' by this fraction of it (0: the reference's "
        "plain comparison; see scoring.loss).",
    )
    indicator_test: Literal["mean", "rank"] = Field(
        "rank",
        description="Per-page proof-of-work test (scoring.loss): 'mean' = +1 where the page beats the control pages' "
        "mean gain; 'rank' = 2 x (share of control pages it beats) - 1, 0 on average for a page nobody trained on.",
    )
    openskill_beta: float = Field(7.0, gt=0)
    openskill_tau: float = Field(0.1, ge=0)
    sync_max_behind: int = Field(5, ge=1)
    sync_exponent: float = Field(2.5, gt=0)
    copy_overlap_threshold: float = Field(0.6, gt=0, le=1, description="Index overlap at which a later upload is a copy.")
    copy_value_cosine: float = Field(0.95, gt=0, le=1, description="Cosine of decoded values above which an upload is a copy.")
    copy_coverage_threshold: float = Field(
        0.6, gt=0, le=1,
        description="Mean over chunks of the best earlier upload's overlap (several sources, own history excluded) "
        "at which an upload is a copy: catches deltas assembled from other peers' chunks. 0.6 like the pairwise "
        "overlap: 1-step AdamW miners from the same theta share ~0.5 of their top-k (the first Adam step has "
        "nearly equal magnitudes, so weight decay on the common theta picks the indices; localnet, window 2).",
    )
    copy_history_windows: int = Field(20, ge=0, description="Earlier windows compared against for replays.")
    max_norm_ratio: float = Field(10.0, gt=1, description="Reject deltas whose norm exceeds this x the median norm.")
    inactivity_decay: float = Field(0.75, gt=0, le=1)
    inactivity_reset_windows: int = Field(3, ge=1)
    copy_ban_windows: int = Field(200, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ScoringParams:
        if self.proof_full <= self.proof_floor:
            raise ValueError("scoring.proof_full must exceed scoring.proof_floor")
        if any(not (c > 1) for c in self.eval_reach):
            raise ValueError("scoring.eval_reach multiples must be > 1 (the step itself is always measured)")
        return self


class WeightParams(_Strict):
    set_every_windows: int = Field(2, ge=1)
    top_n: int = Field(32, ge=1)
    power: float = Field(1.0, gt=0, description="Weights proportional to score**power.")
    burn_uid: int | None = Field(None, ge=0)
    burn_fraction: float = Field(0.0, ge=0, le=1)
    warmup_windows: int = Field(
        5, ge=0,
        description="A validator that joins a running subnet sets weights only after scoring this many windows: "
        "ratings and the indicator average carry history it lacks, and its first weights disagree with the "
        "others' on marginal miners (benchmarks/RESULTS.md, Validators). Validators there at genesis need none.",
    )


class HParams(_Strict):
    """All consensus-relevant parameters. Change ``spec_version`` whenever any of them changes."""

    spec_version: int = Field(SPEC_VERSION, ge=1)
    model: str = Field("tiny", description="Model preset name (protocol.model.PRESETS).")
    model_seed: int = Field(0, description="Seed of the deterministic initial weights.")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Hard cap on one delta upload.")
    windows: WindowParams = WindowParams()
    data: DataParams = DataParams()
    inner: InnerParams = InnerParams()
    codec: CodecParams = CodecParams()
    outer: OuterParams = OuterParams()
    scoring: ScoringParams = ScoringParams()
    weights: WeightParams = WeightParams()

    def override(self, **changes: object) -> HParams:
        """A copy with dotted-key changes applied, e.g. ``override(**{"windows.blocks_per_window": 4})``."""
        data = self.model_dump()
        for dotted, value in changes.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if key not in node or not isinstance(node[key], dict):
                    raise HParamsError(f"unknown hyper-parameter {dotted!r}")
                node = node[key]
            if leaf not in node:
                raise HParamsError(f"unknown hyper-parameter {dotted!r}")
            node[leaf] = value
        return _validate(data, source="overrides")


def _validate(data: object, *, source: str) -> HParams:
    try:
        return HParams.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HParamsError(f"invalid hyper-parameters in {source}: {problems}") from None


def load_hparams(path: str | Path | None = None) -> HParams:
    """Load and validate a hyper-parameter file (the packaged default when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_HPARAMS_PATH
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HParamsError(f"hyper-parameter file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise HParamsError(f"hyper-parameter file {path} is not valid JSON: {exc}") from None
    hp = _validate(data, source=str(path))
    if hp.spec_version > SPEC_VERSION:
        raise HParamsError(f"{path} has spec_version {hp.spec_version}; this build understands up to {SPEC_VERSION}")
    return hp
