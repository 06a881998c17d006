"""Does the Stage-2 score track effort? In-process honest miners of different effort, real scoring.

Honest miners train from the same theta_W with 2/4/8/16 inner AdamW steps (persistent
optimizer, ``miner.train``), send their pseudo-gradient through the real codec with error
feedback (``miner.compress``); a free-rider (Gaussian noise) and a wrong-pages miner join as
the two adversaries Stage 1 accepts. Each window the validator's own evaluator
(``validator.evaluate.WindowEvaluator``) measures every peer on its assigned pages and on
random pages, with the evaluation step clipped to the median norm (as Stage 2 does) and
without clipping, on 1 and on ``--eval-pages`` random pages; the outer step applies the
robust aggregate of the accepted honest deltas (``validator.publish.robust_aggregate``).

Scores are then replayed through ``scoring`` (ratings, bma, final score, weights) so the
weight mapping can be compared on the same measurements. Usage::

    python benchmarks/effort.py --windows 8 --eval-pages 8 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from miner.compress import Compressor
from miner.train import inner_train, iter_batches, load_state, make_optimizer, pseudo_gradient
from protocol.hparams import HParams
from protocol.model import build_model, preset
from protocol.pages import assigned_pages, default_store, derive_seed, random_eval_pages
from protocol.sync import apply_update, dense_to_update
from validator.evaluate import EvalJob, WindowEvaluator, clip_step, eval_subset
from validator.stage2 import model_from_state


def hparams() -> HParams:
    from gauntlet.localnet import localnet_hparams

    return localnet_hparams(60, 2.0)


def run(windows: int, steps: list[int], eval_pages: int, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    hp = hparams()
    store = default_store(Path.home() / ".cache" / "gauntlet", hp.data)
    cfg = preset(hp.model)
    state = {n: p.detach().clone() for n, p in build_model(cfg, seed=hp.model_seed).named_parameters()}
    peers = [(f"honest-{s}", "honest", s) for s in steps] + [("free-rider-noise", "noise", 1),
                                                              ("wrong-pages", "wrong", 4)]
    models = {n: build_model(cfg, seed=hp.model_seed) for n, _k, _s in peers}
    opts = {n: make_optimizer(models[n], hp.inner) for n, _k, _s in peers}
    comps = {n: Compressor(hp) for n, _k, _s in peers}
    done = dict.fromkeys(models, 0)
    eta = hp.scoring.eval_step_scale * hp.outer.lr
    rows = []
    for w in range(windows):
        decoded, raw_norm = {}, {}
        for name, kind, s in peers:
            hk = name if kind != "wrong" else name + "/not-mine"
            ids = assigned_pages(w, hk, hp.data.public_seed, store.num_pages, hp.data.pages_per_window)
            if kind == "noise":
                g = torch.Generator().manual_seed(derive_seed("effort/noise", w))
                delta = {n: torch.randn(t.shape, generator=g) * hp.inner.lr * s for n, t in state.items()}
            else:
                load_state(models[name], state)
                batches = iter_batches(store.pages(ids), hp.inner.micro_batch, s, derive_seed("effort", w, name))
                inner_train(models[name], batches, opts[name], s, params=hp.inner, step_offset=done[name])
                done[name] += s
                delta = pseudo_gradient(state, dict(models[name].named_parameters()))
            raw_norm[name] = float(torch.sqrt(sum((t.float() ** 2).sum() for t in delta.values())))
            decoded[name] = comps[name].decode(comps[name].step(delta))
        norms = {n: float(torch.sqrt(sum((t ** 2).sum() for t in d.values()))) for n, d in decoded.items()}
        median = statistics.median(norms.values())
        wseed = derive_seed("effort/window", w, seed).to_bytes(8, "little") * 4
        taken = sorted({p for n, _k, _s in peers
                        for p in assigned_pages(w, n if _k != "wrong" else n + "/not-mine", hp.data.public_seed,
                                                store.num_pages, hp.data.pages_per_window)})
        rand_many = random_eval_pages(w, wseed, store.num_pages, eval_pages, exclude=taken)
        model = model_from_state(cfg, state)
        ev_1 = WindowEvaluator(model, store, rand_many[:1])
        ev_n = WindowEvaluator(model_from_state(cfg, state), store, rand_many)
        for name, _kind, _s in peers:
            upd = dense_to_update(decoded[name])
            own = assigned_pages(w, name, hp.data.public_seed, store.num_pages, hp.data.pages_per_window)
            pages1 = eval_subset(own, 1, seed=wseed, hotkey=name)
            clipped = clip_step(norms[name], median, eta)
            r1 = ev_1.evaluate(EvalJob(name, upd, clipped, pages1))
            rn = ev_n.evaluate(EvalJob(name, upd, clipped, tuple(own)))
            rnu = ev_n.evaluate(EvalJob(name, upd, eta, tuple(own)))

            def rel(b: float, a: float) -> float:
                return (b - a) / b
            rows.append({
                "window": w, "peer": name, "raw_norm": raw_norm[name], "sent_norm": norms[name],
                "clip": clipped / eta,
                "contrib_1": rel(r1.loss_before_random, r1.loss_after_random),
                "ind_1": 1 if rel(r1.loss_before_assigned, r1.loss_after_assigned)
                > rel(r1.loss_before_random, r1.loss_after_random) else -1,
                "contrib_n": rel(rn.loss_before_random, rn.loss_after_random),
                "ind_n": 1 if rel(rn.loss_before_assigned, rn.loss_after_assigned)
                > rel(rn.loss_before_random, rn.loss_after_random) else -1,
                "contrib_n_noclip": rel(rnu.loss_before_random, rnu.loss_after_random),
                "assigned_n_noclip": rel(rnu.loss_before_assigned, rnu.loss_after_assigned),
                "ind_n_noclip": 1 if rel(rnu.loss_before_assigned, rnu.loss_after_assigned)
                > rel(rnu.loss_before_random, rnu.loss_after_random) else -1,
                "estimate_n": -rn.estimate / rn.loss_before_random,
            })
        from validator.publish import robust_aggregate

        honest = [dense_to_update(decoded[n]) for n, k, _s in peers if k == "honest"]
        agg = robust_aggregate(honest, {n: tuple(t.shape) for n, t in state.items()}, hp)
        apply_update(state, dense_to_update(agg, lr=hp.outer.lr))
        print(f"window {w}: " + "  ".join(f"{r['peer']}={r['contrib_n']:+.2e}" for r in rows[-len(peers):]),
              flush=True)
    return {"peers": [p[0] for p in peers], "rows": rows, "eval_pages": eval_pages}


def replay(result: dict, key: str, ind_key: str, mapping: str, windows: int | None = None) -> dict[str, float]:
    """Weights after ``windows`` windows when ratings/bma are fed ``key``/``ind_key`` under ``mapping``."""
    from protocol.hparams import WeightParams
    from scoring import final, ratings
    from scoring.loss import update_bma
    from scoring.weights import compute_weights

    hp = hparams()
    peers = result["peers"]
    rates: dict[str, ratings.Rating] = {}
    bma = dict.fromkeys(peers, 0.0)
    by_w: dict[int, dict[str, dict]] = {}
    for r in result["rows"]:
        by_w.setdefault(r["window"], {})[r["peer"]] = r
    for w in sorted(by_w)[:windows]:
        rates = ratings.update_ratings(rates, {p: by_w[w][p][key] for p in peers}, hp.scoring)
        for p in peers:
            bma[p] = update_bma(bma[p], by_w[w][p][ind_key], hp.scoring.indicator_alpha)
    scores = {}
    floor = min([0.0, *(ratings.ordinal(rates[p]) for p in peers)])
    for i, p in enumerate(peers):
        if mapping == "ordinal":  # the reference: max(0, ordinal)
            scores[i] = final.final_score(ratings.ordinal(rates[p]), bma[p], 1.0)
        else:  # "floor", tried and dropped (scoring/final.py): ordinals measured from the worst peer
            scores[i] = final.final_score(ratings.ordinal(rates[p]) - floor, bma[p], 1.0)
    w = compute_weights(scores, WeightParams(top_n=32, power=1.0))
    return {p: round(w.get(i, 0.0), 3) for i, p in enumerate(peers)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--steps", default="2,4,8,16")
    ap.add_argument("--eval-pages", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args.windows, [int(s) for s in args.steps.split(",")], args.eval_pages, args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    peers = res["peers"]
    print("\nmean over windows (contribution = relative random-loss improvement, x1e-3)")
    print(f"{'peer':18} {'raw':>8} {'sent':>8} {'clip':>5} {'c(1p)':>7} {'c(Np)':>7} {'c noclip':>8} "
          f"{'estim':>7} {'ind1+':>5} {'indN+':>5} {'a/r':>5}")
    for p in peers:
        rs = [r for r in res["rows"] if r["peer"] == p]

        def m(k: str, rs: list = rs) -> float:
            return statistics.mean(r[k] for r in rs)
        print(f"{p:18} {m('raw_norm'):8.4f} {m('sent_norm'):8.4f} {m('clip'):5.2f} {1e3 * m('contrib_1'):7.3f} "
              f"{1e3 * m('contrib_n'):7.3f} {1e3 * m('contrib_n_noclip'):8.3f} {1e3 * m('estimate_n'):7.3f} "
              f"{sum(r['ind_1'] > 0 for r in rs):5d} {sum(r['ind_n'] > 0 for r in rs):5d} "
              f"{m('assigned_n_noclip') / m('contrib_n_noclip'):5.2f}")
    for n in (4, args.windows):
        for key, ind in (("contrib_1", "ind_1"), ("contrib_n", "ind_n"), ("contrib_n_noclip", "ind_n_noclip")):
            for mapping in ("ordinal", "floor"):
                print(f"weights after {n} windows, {key:17} {mapping:8}", replay(res, key, ind, mapping, n))


if __name__ == "__main__":
    main()
