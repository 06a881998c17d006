"""What ``gauntlet localnet`` prints: the per-window table, the leaderboard and on-chain incentives.

It reads the validator's database directly (read-only SQL through the ORM models), so the
live view works the same with SQLite or PostgreSQL and whether or not the API is up.
Peers are labelled with the localnet's own names (``honest-8``, ``copycat``, ...) so the
table reads as a story: who cheated, why it was rejected, and what it was paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from validator.db.models import FINAL_WINDOW_STATUSES, Evaluation, Peer, WeightSet, Window

#: What reading a database the validator has not migrated yet raises: SQLite reports a missing
#: table as an OperationalError, PostgreSQL as a ProgrammingError (UndefinedTable).
NOT_MIGRATED = (sa.exc.OperationalError, sa.exc.ProgrammingError)


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    status: str
    reason: str
    score: float
    weight: float


class View:
    """Reads one validator database; ``names`` maps hotkey -> (name, kind)."""

    def __init__(self, db_url: str, names: dict[str, tuple[str, str]]) -> None:
        self.engine = sa.create_engine(db_url)
        self.names = names

    def close(self) -> None:
        self.engine.dispose()

    def scored_windows(self) -> list[int]:
        with self.engine.connect() as c:
            try:
                rows = c.execute(sa.select(Window.window).where(Window.status.in_(FINAL_WINDOW_STATUSES))
                                 .order_by(Window.window)).all()
            except NOT_MIGRATED:  # the validator has not migrated the DB yet
                return []
        return [w for (w,) in rows]

    def window_rows(self, window: int) -> list[Row]:
        """The window's receipts, with the weights set for it, or (not set yet) the ones its scores imply."""
        with self.engine.connect() as c:
            evals = c.execute(sa.select(Evaluation.hotkey, Evaluation.uid, Evaluation.status,
                                        Evaluation.reject_reason, Evaluation.final_score, Evaluation.weight)
                              .where(Evaluation.window == window)).all()
            ws = c.execute(sa.select(WeightSet.uids, WeightSet.weights).where(WeightSet.window == window)).first()
        set_weights = dict(zip(ws[0], ws[1], strict=True)) if ws is not None else None
        rows = []
        for hk, uid, status, reason, score, implied in evals:
            name, kind = self.names.get(hk, (hk[:8], "?"))
            weight = set_weights.get(uid, 0.0) if set_weights is not None else (implied or 0.0)
            rows.append(Row(name, kind, status, reason or "", score or 0.0, weight))
        return sorted(rows, key=lambda r: (-r.weight, -r.score, r.name))

    def last_weights(self) -> dict[str, float]:
        """Hotkey -> weight of the most recent weight set (what the chain was told)."""
        with self.engine.connect() as c:
            ws = c.execute(sa.select(WeightSet.uids, WeightSet.weights).order_by(WeightSet.window.desc())).first()
            uids = dict(c.execute(sa.select(Peer.uid, Peer.hotkey)).all())
        return {uids[u]: w for u, w in zip(ws[0], ws[1], strict=True) if u in uids} if ws is not None else {}

    def peers(self) -> list[Row]:
        with self.engine.connect() as c:
            peers = c.execute(sa.select(Peer.hotkey, Peer.score, Peer.banned_until_window)).all()
        weights = self.last_weights()
        rows = []
        for hk, score, banned in peers:
            weight = weights.get(hk, 0.0)
            name, kind = self.names.get(hk, (hk[:8], "?"))
            rows.append(Row(name, kind, "banned" if banned is not None else "", "", score, weight))
        return sorted(rows, key=lambda r: (-r.weight, -r.score, r.name))

    def weight_set_windows(self) -> list[int]:
        with self.engine.connect() as c:
            return [w for (w,) in c.execute(sa.select(WeightSet.window).order_by(WeightSet.window))]

    def window_timings(self, window: int) -> dict[str, Any]:
        with self.engine.connect() as c:
            return c.execute(sa.select(Window.stage_timings).where(Window.window == window)).scalar() or {}


def format_window(window: int, rows: list[Row], timings: dict[str, Any]) -> str:
    total = sum(v for v in timings.values() if isinstance(v, int | float))
    lines = [f"── window {window} scored ({len(rows)} peers, scoring took {total:.1f}s) " + "─" * 20,
             f"  {'peer':<18} {'kind':<9} {'status':<10} {'reason':<16} {'score':>9} {'weight':>7}"]
    for r in rows:
        lines.append(f"  {r.name:<18} {r.kind:<9} {r.status:<10} {r.reason:<16} {r.score:>9.4f} {r.weight:>7.3f}")
    return "\n".join(lines)


def format_leaderboard(rows: list[Row]) -> str:
    lines = ["final leaderboard (validator DB):",
             f"  {'#':>2} {'peer':<18} {'kind':<9} {'score':>9} {'weight':>7}  note"]
    for i, r in enumerate(rows, 1):
        lines.append(f"  {i:>2} {r.name:<18} {r.kind:<9} {r.score:>9.4f} {r.weight:>7.3f}  {r.status}")
    return "\n".join(lines)


def incentives(chain: Any, netuid: int, names: dict[str, tuple[str, str]]) -> list[tuple[str, str, int, float]]:
    """(name, kind, uid, incentive) for every miner on the subnet, highest incentive first."""
    mg = chain.metagraph(netuid)
    out = [(names.get(hk, (hk[:8], "?"))[0], names.get(hk, ("", "?"))[1], uid, float(mg.incentive[i]))
           for i, (uid, hk) in enumerate(zip(mg.uids, mg.hotkeys, strict=True)) if hk in names]
    return sorted(out, key=lambda t: (-t[3], t[0]))


def format_incentives(rows: list[tuple[str, str, int, float]], block: int) -> str:
    lines = [f"on-chain incentive (metagraph at block {block}):",
             f"  {'uid':>4} {'peer':<18} {'kind':<9} {'incentive':>9}"]
    lines += [f"  {uid:>4} {name:<18} {kind:<9} {inc:>9.4f}" for name, kind, uid, inc in rows]
    return "\n".join(lines)


class Validators:
    """Every validator of a local network: last window, model hash, whom it follows, agreement."""

    def __init__(self, nodes: list[Any], hotkeys: dict[str, str]) -> None:
        self.nodes, self.hotkeys = nodes, hotkeys
        self.engines = {n.name: sa.create_engine(n.db_url) for n in nodes}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()

    def _read(self, name: str) -> dict[str, Any]:
        """What one validator's database says (empty before it has migrated)."""
        from validator.db.models import FollowState

        try:
            with self.engines[name].connect() as c:
                windows = c.execute(sa.select(Window.window, Window.base_model_hash, Window.publisher)
                                    .where(Window.status.in_(FINAL_WINDOW_STATUSES)).order_by(Window.window)).all()
                follow = c.execute(sa.select(FollowState.state, FollowState.publisher, FollowState.window,
                                             FollowState.failovers, FollowState.null_windows)).first()
                sets = c.execute(sa.select(WeightSet.window, WeightSet.uids, WeightSet.weights)).all()
        except NOT_MIGRATED:
            return {}
        return {"hashes": {w: h for w, h, _p in windows}, "publishers": {w: p for w, _h, p in windows},
                "last": windows[-1][0] if windows else None,
                "follow": dict(follow._mapping) if follow is not None else {},
                "weights": {w: dict(zip(u, v, strict=True)) for w, u, v in sets}}

    def _names(self) -> dict[str, str]:
        return {hk: name for name, hk in self.hotkeys.items()}

    def agreement(self, chain: Any, netuid: int) -> tuple[dict[str, float], dict[str, float]]:
        """(validator trust, lowest Spearman against another validator), from the weights now on chain."""
        from chain.agreement import standings

        mg, onchain = chain.metagraph(netuid), chain.weights(netuid)
        names, ours = self._names(), set(self.hotkeys.values())
        per_ref = {hk: standings(mg.uids, mg.hotkeys, mg.stakes, onchain, ours, hk) for hk in ours}
        trust = {names[r.hotkey]: r.validator_trust for rows in per_ref.values() for r in rows
                 if r.validator_trust is not None}
        rho = {names[hk]: min((r.rho for r in rows if r.hotkey != hk and r.rho is not None), default=1.0)
               for hk, rows in per_ref.items() if any(r.hotkey == hk and r.has_weights for r in rows)}
        return trust, rho

    def format(self, chain: Any, netuid: int) -> str:
        reads = {n.name: self._read(n.name) for n in self.nodes}
        trust, rho = self.agreement(chain, netuid)
        lead = reads[self.nodes[0].name]
        names = self._names()
        lines = [f"  {'validator':<13} {'stake':>6} {'last':>5} {'model':<13} {'follows':<13} {'state':<10}"
                 f" {'vtrust':>6} {'rho':>5}"]
        for n in self.nodes:
            r = reads[n.name]
            last = r.get("last")
            h = (r.get("hashes") or {}).get(last) if last is not None else None
            same = "" if h is None else ("=" if (lead.get("hashes") or {}).get(last, h) == h else "≠")
            follow = r.get("follow") or {}
            pub = names.get(follow.get("publisher") or "", (follow.get("publisher") or "-")[:8])
            lines.append(f"  {n.name:<13} {n.stake:>6.0f} {'-' if last is None else last:>5} "
                         f"{(h or '-')[:10] + ' ' + same:<13} {pub:<13} {follow.get('state', 'not started'):<10}"
                         f" {trust.get(n.name, float('nan')):>6.3f} {rho.get(n.name, float('nan')):>5.2f}")
        return "\n".join(lines)

    def summary(self, chain: Any, netuid: int) -> dict[str, Any]:
        trust, rho = self.agreement(chain, netuid)
        out = {}
        for n in self.nodes:
            r = self._read(n.name)
            out[n.name] = {"hotkey": self.hotkeys[n.name], "stake": n.stake, "last_scored": r.get("last"),
                           "model_hashes": {str(w): h for w, h in (r.get("hashes") or {}).items()},
                           "publishers": {str(w): p for w, p in (r.get("publishers") or {}).items()},
                           "follow": r.get("follow") or {}, "validator_trust": trust.get(n.name),
                           "min_spearman": rho.get(n.name),
                           "weights": {str(w): {str(u): x for u, x in ws.items()}
                                       for w, ws in (r.get("weights") or {}).items()}}
        return out
