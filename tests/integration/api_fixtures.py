"""A realistic validator database for the API tests, written through ``validator.db.repo``.

``fill_db`` scores a few windows the way the validator does (``mark_window_scored`` with
every peer's receipt and new state, then ``record_weight_set``): accepted peers with losses
and rating changes, a rejected peer per window (reasons rotate), a missing one, a peer that
is deregistered half-way (its uid moves to a newcomer), a banned copier, a peer left
unevaluated (time budget) in the last scored window, and one window still ``open`` with its
secret seed and a receipt already stored, which the API must not publish. Every evaluated
receipt of a window shares its "before" loss on the random pages, as the validator's do.
``follow=True`` also records what the follower decided: each window's applied aggregate (a
failover to a second validator, and one null window), the validator's hotkey and its follow
state. Deterministic: the same arguments give the same rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from scoring.final import PeerState
from scoring.ratings import Rating
from validator.db import repo, weight_repo
from validator.db.models import Evaluation

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
REJECT_REASONS = ("norm_too_large", "late", "bad_signature", "out_of_sync")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def hotkey(i: int, *, seed: int = 0) -> str:
    """A deterministic SS58-shaped hotkey (48 base58 characters starting with 5)."""
    rng = random.Random(f"hotkey-{seed}-{i}")
    return "5" + "".join(rng.choice(BASE58) for _ in range(47))


@dataclass
class Filled:
    """What ``fill_db`` wrote, for assertions."""

    hotkeys: list[str]
    scored_windows: list[int]
    open_window: int
    deregistered: str
    newcomer: str
    banned: str
    missing: str
    unevaluated: str
    seeds: dict[int, str] = field(default_factory=dict)
    #: With ``follow=True``: this validator, the validator it failed over to, and the null window.
    validator: str | None = None
    failover_to: str | None = None
    null_window: int | None = None


def _receipt(rng: random.Random, hk: str, uid: int, status: str, window: int, prev: tuple[float, float],
             seed_hex: str, base: str, reason: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    mu, sigma = prev
    r: dict[str, Any] = {"hotkey": hk, "uid": uid, "status": status, "base_model_hash": base,
                         "rating_mu_before": mu, "rating_sigma_before": sigma}
    if status == "accepted":
        before = 4.0 - window * 0.01 + rng.uniform(-0.05, 0.05)
        # theta_W on the window's random pages: one value per window (a falling curve, noisy
        # because each window draws new pages), from its own generator so the rest stays as it was.
        shared = 4.1 - window * 0.01 + random.Random(f"loss-{window}").uniform(-0.012, 0.012)
        gain_a, gain_r = rng.uniform(0.0, 0.08), rng.uniform(-0.01, 0.05)
        contribution = gain_r
        mu, sigma = mu + rng.uniform(-0.5, 1.5), max(1.0, sigma * 0.93)
        r.update(payload_hash=f"{rng.getrandbits(128):032x}", upload_bytes=rng.randint(10**5, 10**6),
                 uploaded_at=T0 + timedelta(minutes=window), filters_passed=["registered", "on_time", "norm", "copy"],
                 assigned_page_ids=sorted(rng.sample(range(10_000), 4)),
                 random_page_ids=sorted(rng.sample(range(10_000), 4)), random_seed_hex=seed_hex,
                 loss_before_assigned=before, loss_after_assigned=before - gain_a, loss_before_random=shared,
                 loss_after_random=shared - gain_r, estimate=gain_r * 0.9, contribution=contribution,
                 indicator=1.0 if contribution > 0 else 0.0, bma_after=max(0.0, contribution), sync_score=1.0,
                 eval_seconds=rng.uniform(1, 3), details={"norm": rng.uniform(0.5, 2.0)})
    elif status == "rejected":
        mu, sigma = mu - 1.0, sigma
        r.update(reject_reason=reason, reject_detail=f"rejected by the {reason} filter", filters_passed=["registered"])
    score = max(0.0, mu - 3 * sigma) / 100
    r.update(rating_mu_after=mu, rating_sigma_after=sigma, final_score=score)
    update: dict[str, Any] = {"hotkey": hk, "uid": uid, "seen_window": window, "rating_mu": mu,
                               "rating_sigma": sigma, "score": score, "bma": r.get("bma_after") or 0.0,
                               "inactive_windows": 1 if status == "missing" else 0}
    return r, update


def _record(u: dict[str, Any]) -> repo.PeerRecord:
    state = PeerState(Rating(u["rating_mu"], u["rating_sigma"]), u["bma"], u["score"], u["inactive_windows"],
                      u.get("banned_until_window"))
    return repo.PeerRecord(u["uid"], state, u["weight"])


def fill_db(sessions: sessionmaker[Session], *, num_peers: int = 8, first_window: int = 100,
            num_windows: int = 5, seed: int = 0, follow: bool = False) -> Filled:
    """Score ``num_windows`` windows for ``num_peers`` peers and leave one more window open."""
    rng = random.Random(seed)
    hks = [hotkey(i, seed=seed) for i in range(num_peers + 1)]
    newcomer, deregistered, banned, missing = hks[num_peers], hks[1], hks[2], hks[3]
    filled = Filled(hotkeys=hks, scored_windows=[], open_window=first_window + num_windows,
                    deregistered=deregistered, newcomer=newcomer, banned=banned, missing=missing,
                    unevaluated=hks[5 % num_peers])
    ratings = {hk: (25.0, 25.0 / 3) for hk in hks}
    with sessions() as s:
        for k in range(num_windows):
            w = first_window + k
            seed_hex, base = f"{rng.getrandbits(256):064x}", f"{rng.getrandbits(256):064x}"
            filled.seeds[w] = seed_hex
            repo.open_window(s, window=w, base_model_hash=base, random_seed_hex=seed_hex,
                             started_at=T0 + timedelta(minutes=w))
            # The deregistered peer's uid 1 goes to the newcomer from the second half on.
            active = [(uid, hk) for uid, hk in enumerate(hks[:num_peers])]
            if k >= num_windows // 2:
                active[1] = (1, newcomer)
            receipts, updates = [], []
            for uid, hk in active:
                status, reason = "accepted", None
                if hk == missing:
                    status = "missing"
                elif hk == filled.unevaluated and k == num_windows - 1:
                    status = "unevaluated"
                elif hk == banned or uid == 4 + k % max(1, num_peers - 4):
                    status, reason = "rejected", "copy" if hk == banned else REJECT_REASONS[k % len(REJECT_REASONS)]
                r, u = _receipt(rng, hk, uid, status, w, ratings[hk], seed_hex, base, reason)
                ratings[hk] = (u["rating_mu"], u["rating_sigma"])
                if hk == banned:
                    u["banned_until_window"] = first_window + num_windows + 10
                receipts.append(r)
                updates.append(u)
            total = sum(u["score"] for u in updates) or 1.0
            for r, u in zip(receipts, updates, strict=True):
                u["weight"] = r["weight"] = u["score"] / total
            repo.mark_window_scored(s, window=w, evaluations=[Evaluation(window=w, **r) for r in receipts],
                                    peers={u["hotkey"]: _record(u) for u in updates}, aggregate_hash=f"{w:064x}",
                                    stage_timings={"stage1": 1.5, "stage2": 30.0},
                                    scored_at=T0 + timedelta(minutes=w, seconds=50))
            uids = [u["uid"] for u in updates if u["uid"] is not None]
            weight_repo.record_weight_set(s, window=w, uids=uids, weights=[u["weight"] for u in updates],
                                   version_key=1, block=1000 + w, tx_status="success" if k < num_windows - 1 else "pending")
            filled.scored_windows.append(w)
        # The current window: open, its seed drawn and one receipt already written.
        w = filled.open_window
        seed_hex = f"{rng.getrandbits(256):064x}"
        filled.seeds[w] = seed_hex
        repo.open_window(s, window=w, base_model_hash="ab" * 32, random_seed_hex=seed_hex,
                         started_at=T0 + timedelta(minutes=w))
        repo.record_evaluation(s, window=w, hotkey=hks[0], status="accepted", uid=0,
                               random_seed_hex=seed_hex, random_page_ids=[1, 2, 3], assigned_page_ids=[4, 5])
        if follow:
            _record_follow(s, filled, seed=seed)
    return filled


def _record_follow(s: Session, filled: Filled, *, seed: int) -> None:
    """Decisions for the scored windows (theta_{W+1} is the next window's base model), run config, state.

    This validator publishes the first windows; the middle window is a null window (theta
    unchanged), after which a second validator publishes (a failover).
    """
    from protocol.follow import FollowStatus
    from validator.db.models import Window

    filled.validator, filled.failover_to = hotkey(900, seed=seed), hotkey(901, seed=seed)
    windows = filled.scored_windows
    filled.null_window = windows[len(windows) // 2]
    for w in windows:
        nxt = s.get(Window, w + 1)  # every scored window has a successor (the last one: the open window)
        assert nxt is not None and nxt.base_model_hash is not None
        publisher = None if w == filled.null_window else (
            filled.validator if w < filled.null_window else filled.failover_to)
        repo.record_decision(s, window=w, publisher=publisher, next_model_hash=nxt.base_model_hash)
    repo.record_run_config(s, config={"fixture": True}, version="test", hotkey=filled.validator)
    repo.record_follow_status(s, FollowStatus("following", filled.open_window, "ab" * 32, filled.failover_to, "",
                                              failovers=1, null_windows=1))
    # The validators on chain after the last scored window: this one and the one it failed over to.
    repo.record_agreement(s, window=windows[-1], agreement={"block": 1234, "validators": [
        {"hotkey": filled.failover_to, "uid": 901, "stake": 1000.0, "has_weights": True, "validator_trust": 0.98,
         "overlap": 0.91, "rho": 0.95},
        {"hotkey": filled.validator, "uid": 900, "stake": 700.0, "has_weights": True, "validator_trust": 0.93,
         "overlap": 1.0, "rho": 1.0}]})


def filled_database(url: str, **kwargs: Any) -> Filled:
    """Migrate the database at ``url`` to head and fill it (see :func:`fill_db`)."""
    from validator.db.session import make_engine, migrate, session_factory

    migrate(url)
    engine = make_engine(url)
    try:
        return fill_db(session_factory(engine), **kwargs)
    finally:
        engine.dispose()
