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
            except sa.exc.OperationalError:  # the validator has not migrated the DB yet
                return []
        return [w for (w,) in rows]

    def window_rows(self, window: int) -> list[Row]:
        with self.engine.connect() as c:
            evals = c.execute(sa.select(Evaluation.hotkey, Evaluation.uid, Evaluation.status,
                                        Evaluation.reject_reason, Evaluation.final_score)
                              .where(Evaluation.window == window)).all()
            ws = c.execute(sa.select(WeightSet.uids, WeightSet.weights).where(WeightSet.window == window)).first()
        set_weights = dict(zip(ws[0], ws[1], strict=True)) if ws is not None else {}
        rows = []
        for hk, uid, status, reason, score in evals:
            name, kind = self.names.get(hk, (hk[:8], "?"))
            rows.append(Row(name, kind, status, reason or "", score or 0.0, set_weights.get(uid, 0.0)))
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
