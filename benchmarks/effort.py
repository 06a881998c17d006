"""Can a rational miner game the score? Effort, scaling and partial work, under the real scoring rules.

In-process miners on the localnet hyper-parameters (tiny model, 2 assigned pages per window,
every assigned page evaluated, 4 random pages):

* ``honest-S``: honest miners with S inner AdamW steps (default 1, 2, 4, 8, 16, 32), persistent
  optimizer, real codec with error feedback (``miner.compress``);
* ``x{k}``: a twin of ``honest-4`` (same pages, same batches) that multiplies its
  pseudo-gradient by k before error feedback, for k in 0.3, 1.5, 3, 10: the magnitude game;
* ``partial``: 4 steps on one of its two assigned pages and one page of another hotkey;
* ``wrong-pages``: 4 steps on another hotkey's pages; ``noise``: Gaussian noise of an honest norm.

Every window the validator's own code scores them: ``validator.evaluate.WindowEvaluator`` at the
normalised step (``scoring.scale``), per-page indicator (``scoring.loss.work_indicator``),
OpenSkill ratings, bma, final score and weights (``scoring``); the outer step applies the
normalised ``selected_mean`` of the honest deltas (``validator.publish.outer_step``).

Printed: mean weight share per peer over the run and over its second half, effort-weight
Spearman, the twins' scores against honest-4's, and the proof-of-work test's honest
false-positive rate (windows whose page indicator fails, and miners whose bma is <= 0). Usage::

    python -m benchmarks.effort --windows 30 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from chain.agreement import spearman
from miner.compress import Compressor
from miner.train import inner_train, iter_batches, load_state, make_optimizer, pseudo_gradient
from protocol.hparams import HParams, WeightParams
from protocol.model import build_model, model_from_state, preset
from protocol.pages import assigned_pages, control_pages, default_store, derive_seed, random_eval_pages
from protocol.sync import apply_update, dense_to_update
from scoring import final, ratings
from scoring.loss import reach_contribution, relative_improvement, update_bma, work_indicator
from scoring.scale import step_factor
from scoring.weights import compute_weights
from scoring.work import work_gate
from validator.combine import control_improvement, control_improvements
from validator.evaluate import EvalJob, WindowEvaluator, eval_subset
from validator.publish import outer_step

SCALES = (0.3, 1.5, 3.0, 10.0)


def hparams(pages: int = 2, micro_batch: int = 8, eval_norm: str = "normalise", reach: str | None = None,
            temperature: float | None = None, inner_lr: float | None = None) -> HParams:
    from gauntlet.localnet import localnet_hparams

    hp = localnet_hparams(60, 2.0)
    extra: dict = {}
    # The packaged reach (localnet turns it off to fit 25 peers on two cores; this measures the rule itself).
    extra["scoring.eval_reach"] = (HParams().scoring.eval_reach if reach is None
                                   else tuple(float(c) for c in reach.split(",") if c.strip()))
    if inner_lr is not None:
        extra["inner.lr"] = inner_lr
    if temperature is not None:
        extra["scoring.score_temperature"] = temperature
    return hp.override(**{"data.pages_per_window": pages, "inner.micro_batch": micro_batch,
                          "scoring.eval_norm": eval_norm, **extra})


def _norm(d: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in d.values())))


def run(windows: int, steps: list[int], seed: int = 0, pages: int = 2, micro_batch: int = 8,
        eval_norm: str = "normalise", reach: str | None = None, temperature: float | None = None,
        inner_lr: float | None = None) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    hp = hparams(pages, micro_batch, eval_norm, reach, temperature, inner_lr)
    store = default_store(Path.home() / ".cache" / "gauntlet", hp.data)
    cfg = preset(hp.model)
    state = {n: p.detach().clone() for n, p in build_model(cfg, seed=hp.model_seed).named_parameters()}
    trained = [(f"honest-{s}", s) for s in steps] + [("partial", 4), ("wrong-pages", 4)]
    twins = [f"x{k:g}" for k in SCALES]
    names = [n for n, _ in trained] + twins + ["noise"]
    models = {n: build_model(cfg, seed=hp.model_seed) for n, _ in trained}
    opts = {n: make_optimizer(models[n], hp.inner) for n, _ in trained}
    comps = {n: Compressor(hp) for n in names}
    done = dict.fromkeys(models, 0)
    eta = hp.scoring.eval_step_scale * hp.outer.lr
    measured: list[dict] = []
    for w in range(windows):
        own = {n: assigned_pages(w, n, hp.data.public_seed, store.num_pages, hp.data.pages_per_window) for n in names}
        other = {n: assigned_pages(w, n + "/not-mine", hp.data.public_seed, store.num_pages,
                                   hp.data.pages_per_window) for n in names}
        decoded = {}
        for name, s in trained:
            half = len(own[name]) // 2
            ids = {"partial": [*own[name][:half], *other[name][half:]], "wrong-pages": other[name]}.get(name, own[name])
            load_state(models[name], state)
            batches = iter_batches(store.pages(ids), hp.inner.micro_batch, s, derive_seed("effort", w, name))
            inner_train(models[name], batches, opts[name], s, params=hp.inner, step_offset=done[name])
            done[name] += s
            delta = pseudo_gradient(state, dict(models[name].named_parameters()))
            decoded[name] = comps[name].decode(comps[name].step(delta))
            if name == "honest-4":
                for k, twin in zip(SCALES, twins, strict=True):
                    decoded[twin] = comps[twin].decode(comps[twin].step({n: t * k for n, t in delta.items()}))
        g = torch.Generator().manual_seed(derive_seed("effort/noise", w))
        std = _norm(decoded["honest-4"]) / sum(t.numel() for t in state.values()) ** 0.5
        noise = {n: torch.randn(t.shape, generator=g) * std for n, t in state.items()}
        decoded["noise"] = comps["noise"].decode(comps["noise"].step(noise))

        norms = {n: _norm(d) for n, d in decoded.items()}
        median = statistics.median(norms.values())
        wseed = derive_seed("effort/window", w, seed).to_bytes(8, "little") * 4
        taken = sorted({p for n in names for p in own[n]})
        random_ids = random_eval_pages(w, wseed, store.num_pages, hp.data.eval_pages, exclude=taken)
        beacon = derive_seed("effort/beacon", w, seed).to_bytes(8, "little") * 4  # the window's block hash
        control_ids = control_pages(w, beacon, store.num_pages, hp.data.eval_pages, exclude=taken)
        ev = WindowEvaluator(model_from_state(cfg, state), store, random_ids, control_page_ids=control_ids)
        contrib, ind = {}, {}
        for name in names:
            who = "honest-4" if name in twins else name  # a twin is honest-4's data, scaled
            pages = eval_subset(own[who], hp.data.eval_pages, seed=beacon, hotkey=who)
            step = eta * step_factor(norms[name], median, hp.scoring.eval_norm, hp.scoring.eval_clip_ratio)
            r = ev.evaluate(EvalJob(name, dense_to_update(decoded[name]), step, pages, tuple(hp.scoring.eval_reach)))
            contrib[name] = reach_contribution(r.loss_before_random, r.loss_after_random, [a for _, a in r.reach_losses])
            ind[name] = {"pages": [relative_improvement(b, a) for b, a in r.page_losses],
                         "controls": control_improvements(r), "control": control_improvement(r)}
        measured.append({"window": w, "median_norm": median,
                         **{n: {"norm": norms[n], "contribution": contrib[n], **ind[n]} for n in names}})
        honest = [dense_to_update(decoded[f"honest-{s}"]) for s in steps]
        honest_norms = [norms[f"honest-{s}"] for s in steps]
        apply_update(state, outer_step(honest, honest_norms, {n: tuple(t.shape) for n, t in state.items()}, hp,
                                       statistics.median(honest_norms)))
        print(f"window {w:2d} contribution x1e3: " + " ".join(f"{n}={contrib[n] * 1e3:.2f}" for n in names),
              flush=True)
    return {"peers": names, "steps": steps, "hparams": hp.model_dump(mode="json"),
            "rows": score_windows(measured, names, hp)}


def score_windows(measured: list[dict], names: list[str], hp: HParams) -> list[dict]:
    """Ratings, proof of work, gate, final score and weight per window, by the packaged rules.

    Each twin ``x{k}`` is scored in a match of its own, in honest-4's place: in a subnet a scaled
    delta is the miner's upload (a second peer uploading it beside the original is a copy, which
    copy detection rejects), and five near-identical peers in one match would split one rank
    between them and depress honest-4 as well. So the comparison is the one a miner faces: what
    it earns with ``k x delta`` against what it earns with ``delta``.
    """
    sp = hp.scoring
    twins = [n for n in names if n.startswith("x")]
    base = [n for n in names if n not in twins]
    scenarios: dict[str | None, list[str]] = {None: base, **{t: [t if n == "honest-4" else n for n in base]
                                                            for t in twins}}
    rates: dict[str | None, dict[str, ratings.Rating]] = {key: {} for key in scenarios}
    peer = {key: {n: final.PeerState() for n in members} for key, members in scenarios.items()}
    rows = []
    for w, m in enumerate(measured):
        for n in names:  # this window's proof-of-work indicator under the test being scored (scoring.loss)
            if "pages" in m[n]:
                m[n]["indicator"] = work_indicator(sp.indicator_test, m[n]["pages"], m[n]["controls"],
                                                   m[n]["control"], sp.indicator_margin)
        row: dict = {"window": w, "median_norm": m["median_norm"]}
        for key, members in scenarios.items():
            rates[key] = ratings.update_ratings(rates[key], {n: m[n]["contribution"] for n in members}, sp)
            for n in members:
                bma = update_bma(peer[key][n].bma, m[n]["indicator"], sp.indicator_alpha)
                verdict = final.Verdict.evaluated(w, rates[key][n], bma, 1.0)
                peer[key][n] = final.apply_penalties(peer[key][n], verdict, sp)
            weights = compute_weights({i: peer[key][n].score for i, n in enumerate(members)},
                                      WeightParams(top_n=32, power=1.0))
            for i, n in enumerate(members):
                if key is None or n == key:
                    st = peer[key][n]
                    proof = final.work_proof(st, sp)
                    row[n] = {**m[n], "bma": st.bma, "proof": proof,
                              "gate": work_gate(proof, sp.proof_floor, sp.proof_full), "score": st.score,
                              "weight": weights.get(i, 0.0)}
        rows.append(row)
    return rows


def summarise(res: dict) -> dict:
    names, rows, steps = res["peers"], res["rows"], res["steps"]
    half = rows[len(rows) // 2:]
    share = {n: statistics.mean(r[n]["weight"] for r in rows) for n in names}
    late = {n: statistics.mean(r[n]["weight"] for r in half) for n in names}
    honest = [f"honest-{s}" for s in steps]
    fails = [r[n]["indicator"] <= 0 for r in rows for n in honest]
    bma_fail = [r[n]["bma"] <= 0 for r in rows[5:] for n in honest]
    gate_shut = [r[n]["gate"] == 0 for r in rows for n in honest]
    gate_partly = [r[n]["gate"] < 0.99 for r in rows for n in honest]  # full=1.0 is reached only in the limit
    median_honest = statistics.median(late[n] for n in honest)
    others = [n for n in names if n not in honest and not n.startswith("x")]
    twin_gap = max(abs(r[t]["contribution"] - r["honest-4"]["contribution"]) for r in rows
                   for t in names if t.startswith("x"))
    return {
        "share": share, "share_second_half": late,
        "spearman_effort_weight": spearman([float(s) for s in steps], [late[n] for n in honest]),
        "median_honest_share": median_honest,
        "worst_adversary_over_median_honest": max(late[n] for n in others) / median_honest if median_honest else None,
        "max_twin_over_honest4": max(late[n] for n in names if n.startswith("x")) / late["honest-4"]
        if late.get("honest-4") else None,
        "honest_gate_shut_rate": sum(gate_shut) / len(gate_shut),
        "honest_gate_below_one_rate": sum(gate_partly) / len(gate_partly),
        "gate_mean": {n: statistics.mean(r[n]["gate"] for r in rows) for n in names},
        "honest_window_fail_rate": sum(fails) / len(fails),
        "honest_bma_nonpositive_rate": sum(bma_fail) / max(1, len(bma_fail)),
        "max_twin_contribution_gap": twin_gap,
        "indicator_mean": {n: statistics.mean(r[n]["indicator"] for r in rows) for n in names},
    }


def _proof_rules(hp: HParams, test: str | None, gate: str | None) -> HParams:
    """``hp`` with the proof-of-work test and gate given on the command line (None: unchanged)."""
    extra: dict = {} if test is None else {"scoring.indicator_test": test}
    if gate:
        floor, full, prior = gate.split(",")
        extra.update({"scoring.proof_floor": float(floor), "scoring.proof_full": float(full),
                      "scoring.proof_prior_windows": int(prior)})
    return hp.override(**extra) if extra else hp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=30)
    ap.add_argument("--steps", default="1,2,4,8,16,32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pages", type=int, default=2, help="assigned pages per window (localnet: 2)")
    ap.add_argument("--micro-batch", type=int, default=8, help="sequences per inner step (localnet: 8 = one page)")
    ap.add_argument("--eval-norm", choices=["normalise", "cap"], default="normalise", help="size rule (scoring.scale)")
    ap.add_argument("--reach", help="scoring.eval_reach as a comma list ('' = the step only; default: packaged)")
    ap.add_argument("--inner-lr", type=float, help="inner AdamW lr (default: localnet's 1e-3)")
    ap.add_argument("--temperature", type=float, help="scoring.score_temperature: exp(ordinal / T) instead of max(0, ordinal)")
    ap.add_argument("--indicator-test", choices=["mean", "rank"], help="scoring.indicator_test (default: packaged)")
    ap.add_argument("--gate", metavar="FLOOR,FULL,PRIOR", help="scoring.proof_floor, proof_full, proof_prior_windows")
    ap.add_argument("--json")
    ap.add_argument("--rescore", metavar="JSON",
                    help="score the measurements of an earlier --json run again (e.g. with --temperature) instead")
    args = ap.parse_args()
    if args.rescore:
        res = json.loads(Path(args.rescore).read_text())
        hp = HParams.model_validate(res["hparams"]) if "hparams" in res else hparams()  # older files: packaged
        if args.temperature is not None:
            hp = hp.override(**{"scoring.score_temperature": args.temperature})
        hp = _proof_rules(hp, args.indicator_test, args.gate)
        res["hparams"] = hp.model_dump(mode="json")
        res["rows"] = score_windows(res["rows"], res["peers"], hp)
    else:
        res = run(args.windows, [int(s) for s in args.steps.split(",")], args.seed, args.pages, args.micro_batch,
                  args.eval_norm, args.reach, args.temperature, args.inner_lr)
        if args.indicator_test or args.gate:
            hp = _proof_rules(HParams.model_validate(res["hparams"]), args.indicator_test, args.gate)
            res["hparams"], res["rows"] = hp.model_dump(mode="json"), score_windows(res["rows"], res["peers"], hp)
    summary = summarise(res)
    if args.json:
        Path(args.json).write_text(json.dumps({**res, "summary": summary}, indent=1))
    print(f"\n{'peer':12} {'share':>7} {'2nd half':>9} {'indicator':>10} {'gate':>6}")
    for n in res["peers"]:
        print(f"{n:12} {summary['share'][n]:7.3f} {summary['share_second_half'][n]:9.3f} "
              f"{summary['indicator_mean'][n]:+10.2f} {summary['gate_mean'][n]:6.2f}")
    for key in ("spearman_effort_weight", "median_honest_share", "worst_adversary_over_median_honest",
                "max_twin_over_honest4", "honest_window_fail_rate", "honest_gate_shut_rate",
                "honest_gate_below_one_rate", "honest_bma_nonpositive_rate", "max_twin_contribution_gap"):
        value = summary[key]
        print(f"{key}: {'n/a' if value is None else f'{value:.4g}'}")


if __name__ == "__main__":
    main()
