"""The embedded local chain: one SQLite file that several processes share, no server.

Why SQLite: miners, validators and the CLI of a development network are separate
processes, and the issue forbids a server to install. A WAL-mode SQLite file gives them
a shared, transactional state for free. There is no block producer either: the block
number is a pure function of the wall clock, ``floor((now - genesis) / block_time_s)``,
with genesis and every parameter stored in the file at creation, so every process
agrees on the time without talking to each other.

Tempo work (Yuma Consensus) is done lazily: every read or write first checks whether a
tempo boundary has passed since the subnet's last epoch and, if so, runs the epoch in a
``BEGIN IMMEDIATE`` transaction that re-checks under the write lock. Whichever process
gets there first does it exactly once; the others see it done. If several boundaries
passed with nobody touching the chain, one epoch runs for the latest: nothing changed
in between, so the result is the same. Writes run pending epochs first, so a write just
after a boundary never leaks into the epoch before it.

The subnet hyper-parameters a validator reads before setting weights
(:meth:`LocalChain.subnet_params`) are the file's parameters, and ``set_weights``
enforces each one it advertises, as subtensor would: the rate limit, the version key,
``min_allowed_weights`` and the ``max_weights_limit`` cap (a u16 fraction of the row's sum;
a lone self-weight is exempt from both, as on subtensor). Commit-reveal is never on.

Block hashes (:meth:`LocalChain.block_hash`) are keyed by a random secret drawn when the file is
created, and a hash is only given out once its block is produced: as on a real chain, nobody who
does not read the file can know it in advance, which is what the window beacon needs
(``protocol.windows.beacon_block``).

Dev simplifications (documented in the report): signatures are not checked (holding
the Keypair object is the proof), commitments are not rate limited, emission is
recorded but not restaked, and the weights rate limit counts from the last
``set_weights`` only (not from registration, as subtensor does).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chain.base import (
    U16_MAX,
    ChainError,
    ChainTimeoutError,
    InvalidWeightsError,
    Metagraph,
    NotRegisteredError,
    NoValidatorPermitError,
    RateLimitedError,
    SubnetFullError,
    SubnetNotFoundError,
    SubnetParams,
    coldkey_address,
    hotkey_address,
)
from chain.yuma import yuma

__all__ = [
    "LocalChain",
    "LocalParams",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS params (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subnets (
    netuid INTEGER PRIMARY KEY, owner_hotkey TEXT NOT NULL, owner_coldkey TEXT NOT NULL,
    created_block INTEGER NOT NULL, last_epoch_block INTEGER NOT NULL, owner_emission REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS neurons (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, coldkey TEXT NOT NULL,
    registered_block INTEGER NOT NULL, last_update INTEGER NOT NULL, weights_block INTEGER,
    incentive REAL NOT NULL DEFAULT 0, dividends REAL NOT NULL DEFAULT 0,
    emission REAL NOT NULL DEFAULT 0, consensus REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (netuid, uid), UNIQUE (netuid, hotkey));
CREATE TABLE IF NOT EXISTS stakes (hotkey TEXT PRIMARY KEY, amount REAL NOT NULL);
CREATE TABLE IF NOT EXISTS commitments (
    netuid INTEGER NOT NULL, hotkey TEXT NOT NULL, data TEXT NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (netuid, hotkey));
CREATE TABLE IF NOT EXISTS weights (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, dest INTEGER NOT NULL, weight REAL NOT NULL,
    PRIMARY KEY (netuid, uid, dest));
CREATE TABLE IF NOT EXISTS bonds (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, dest INTEGER NOT NULL, bond REAL NOT NULL,
    PRIMARY KEY (netuid, uid, dest));
CREATE TABLE IF NOT EXISTS epochs (netuid INTEGER NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (netuid, block));
"""


@dataclass(frozen=True)
class LocalParams:
    """Chain-wide parameters, fixed at creation and stored in the file."""

    genesis_time: float
    block_time_s: float = 12.0
    tempo: int = 360
    max_uids: int = 256
    max_validators: int = 64
    weights_rate_limit: int = 100
    immunity_period: int = 4096
    emission_per_block: float = 1.0
    weights_version: int = 0
    min_allowed_weights: int = 1  # older files lack the two: subtensor's defaults
    max_weights_limit: int = U16_MAX


class LocalChain:
    """A :class:`chain.base.Chain` backed by one SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ChainError(f"local chain file not found: {self.path} (create it with `gauntlet chain local`)")
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = self._connect(self.path)
        with self._tx(immediate=False) as c:
            rows = dict(c.execute("SELECT key, value FROM params").fetchall())
        if "params" not in rows:
            raise ChainError(f"{self.path} is not a gauntlet local chain (no params)")
        self.params = LocalParams(**json.loads(rows["params"]))
        self._block_secret = bytes.fromhex(rows["block_secret"]) if "block_secret" in rows else self._add_secret()

    def _add_secret(self) -> bytes:
        """The block-hash secret, drawn on the file's first open (by whichever process gets there first)."""
        with self._tx(immediate=True) as c:
            c.execute("INSERT OR IGNORE INTO params VALUES ('block_secret', ?)", (secrets.token_hex(32),))
            (value,) = c.execute("SELECT value FROM params WHERE key = 'block_secret'").fetchone()
        return bytes.fromhex(value)

    # --- creation -------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        block_time_s: float = 12.0,
        tempo: int = 360,
        max_uids: int = 256,
        max_validators: int = 64,
        weights_rate_limit: int = 100,
        immunity_period: int = 4096,
        emission_per_block: float = 1.0,
        weights_version: int = 0,
        min_allowed_weights: int = 1,
        max_weights_limit: int = U16_MAX,
        netuids: tuple[int, ...] = (1,),
        clock: Callable[[], float] = time.time,
    ) -> LocalChain:
        """Create the file (or open it if another process just did) with subnets ``netuids``."""
        if block_time_s <= 0 or tempo < 1 or max_uids < 1:
            raise ChainError("block_time_s must be > 0, tempo >= 1 and max_uids >= 1")
        if weights_rate_limit < 0 or min_allowed_weights < 0 or not 0 < max_weights_limit <= U16_MAX:
            raise ChainError("weights_rate_limit and min_allowed_weights must be >= 0, max_weights_limit in 1..65535")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        params = LocalParams(
            genesis_time=clock(), block_time_s=block_time_s, tempo=tempo, max_uids=max_uids,
            max_validators=max_validators, weights_rate_limit=weights_rate_limit, immunity_period=immunity_period,
            emission_per_block=emission_per_block, weights_version=weights_version,
            min_allowed_weights=min_allowed_weights, max_weights_limit=max_weights_limit)
        conn = cls._connect(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(stmt)
            created = conn.execute(
                "INSERT OR IGNORE INTO params VALUES ('params', ?)", (json.dumps(asdict(params)),)
            ).rowcount
            if created:
                for netuid in netuids:
                    conn.execute("INSERT INTO subnets VALUES (?, '', '', 0, 0, 0)", (netuid,))
            conn.execute("COMMIT")
        finally:
            conn.close()
        return cls(path, clock=clock)

    @classmethod
    def open(cls, path: str | Path, *, clock: Callable[[], float] = time.time) -> LocalChain:
        return cls(path, clock=clock)

    @classmethod
    def open_or_create(cls, path: str | Path, **params: Any) -> LocalChain:
        """Open ``path``; create it with ``params`` when missing (existing files keep their own)."""
        clock = params.pop("clock", time.time)
        if Path(path).is_file():
            return cls(path, clock=clock)
        return cls.create(path, clock=clock, **params)

    def close(self) -> None:
        self._conn.close()

    # --- transactions and lazy epochs ---------------------------------------------

    @contextmanager
    def _tx(self, *, immediate: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """A write transaction at the current block, after running any due epochs."""
        with self._tx(immediate=True) as c:
            b = self.block()
            self._run_due_epochs(c, b)
            yield c, b

    @contextmanager
    def _read(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        b = self.block()
        due = self._due(self._conn_query("SELECT netuid, last_epoch_block FROM subnets"), b)
        if due:
            with self._write():
                pass
        with self._tx(immediate=False) as c:
            yield c, b

    def _conn_query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _due(self, subnets: list[tuple], block: int) -> list[tuple[int, int]]:
        boundary = (block // self.params.tempo) * self.params.tempo
        return [(netuid, boundary) for netuid, last in subnets if boundary > last]

    def _run_due_epochs(self, c: sqlite3.Connection, block: int) -> None:
        for netuid, boundary in self._due(c.execute("SELECT netuid, last_epoch_block FROM subnets").fetchall(), block):
            self._epoch(c, netuid, boundary)

    def _epoch(self, c: sqlite3.Connection, netuid: int, boundary: int) -> None:
        """Run Yuma for ``netuid`` and store its outputs; called inside a write transaction."""
        c.execute("UPDATE subnets SET last_epoch_block = ? WHERE netuid = ?", (boundary, netuid))
        if not c.execute("INSERT OR IGNORE INTO epochs VALUES (?, ?)", (netuid, boundary)).rowcount:
            return
        uids, _, stakes, permits = self._neuron_columns(c, netuid)
        if not uids:
            return
        n = max(uids) + 1
        w = np.zeros((n, n))
        for uid, dest, weight in c.execute("SELECT uid, dest, weight FROM weights WHERE netuid = ?", (netuid,)):
            if uid < n and dest < n:
                w[uid, dest] = weight
        bonds = np.zeros((n, n))
        for uid, dest, bond in c.execute("SELECT uid, dest, bond FROM bonds WHERE netuid = ?", (netuid,)):
            if uid < n and dest < n:
                bonds[uid, dest] = bond
        s, p = np.zeros(n), np.zeros(n, dtype=bool)
        for uid, stake, permit in zip(uids, stakes, permits, strict=True):
            s[uid], p[uid] = stake, permit
        res = yuma(w, s, p, bonds, epoch_emission=self.params.emission_per_block * self.params.tempo)
        for uid in uids:
            c.execute(
                "UPDATE neurons SET incentive=?, dividends=?, emission=?, consensus=? WHERE netuid=? AND uid=?",
                (float(res.incentive[uid]), float(res.dividends[uid]), float(res.emission[uid]),
                 float(res.consensus[uid]), netuid, uid),
            )
        c.execute("DELETE FROM bonds WHERE netuid = ?", (netuid,))
        nz = np.argwhere(res.bonds > 0)
        c.executemany("INSERT INTO bonds VALUES (?, ?, ?, ?)",
                      [(netuid, int(i), int(j), float(res.bonds[i, j])) for i, j in nz])
        c.execute("UPDATE subnets SET owner_emission = ? WHERE netuid = ?", (res.owner_emission, netuid))

    def _neuron_columns(self, c: sqlite3.Connection, netuid: int) -> tuple[list[int], list[str], list[float], list[bool]]:
        rows = c.execute(
            "SELECT n.uid, n.hotkey, COALESCE(s.amount, 0) FROM neurons n LEFT JOIN stakes s ON s.hotkey = n.hotkey"
            " WHERE n.netuid = ? ORDER BY n.uid", (netuid,)).fetchall()
        uids = [r[0] for r in rows]
        stakes = [float(r[2]) for r in rows]
        # Validator permits: the max_validators highest stakes (ties to the lower uid), stake > 0.
        ranked = sorted((i for i in range(len(rows)) if stakes[i] > 0), key=lambda i: (-stakes[i], uids[i]))
        top = set(ranked[: self.params.max_validators])
        return uids, [r[1] for r in rows], stakes, [i in top for i in range(len(rows))]

    def _require_subnet(self, c: sqlite3.Connection, netuid: int) -> None:
        if not c.execute("SELECT 1 FROM subnets WHERE netuid = ?", (netuid,)).fetchone():
            raise SubnetNotFoundError(f"subnet {netuid} does not exist on the local chain {self.path}")

    def _uid(self, c: sqlite3.Connection, netuid: int, hotkey: str) -> int:
        row = c.execute("SELECT uid FROM neurons WHERE netuid = ? AND hotkey = ?", (netuid, hotkey)).fetchone()
        if row is None:
            raise NotRegisteredError(f"hotkey {hotkey} is not registered on subnet {netuid}")
        return int(row[0])

    # --- time -------------------------------------------------------------------------

    def block(self) -> int:
        return max(0, math.floor((self._clock() - self.params.genesis_time) / self.params.block_time_s))

    def block_timestamp(self, block: int) -> float:
        return self.params.genesis_time + block * self.params.block_time_s

    def block_time_s(self) -> float:
        return self.params.block_time_s

    def block_hash(self, block: int) -> str:
        if block < 0 or block > self.block():
            raise ChainError(f"block {block} has not been produced yet (head {self.block()})")
        digest = hashlib.blake2b(block.to_bytes(8, "little"), key=self._block_secret, digest_size=32,
                                 person=b"gauntlet-block").hexdigest()
        return "0x" + digest

    def wait_for_block(self, block: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (current := self.block()) < block:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChainTimeoutError(f"block {block} not reached within {timeout_s}s (at {current})")
            time.sleep(max(0.001, min(left, self.block_timestamp(block) - self._clock() + 0.001)))
        return current

    # --- subnets, stake, registration ---------------------------------------------

    def create_subnet(self, owner: Any, netuid: int | None = None) -> int:
        """Create a subnet owned by ``owner`` (Keypair/Wallet/ss58); returns its netuid."""
        hot, cold = hotkey_address(owner), coldkey_address(owner)
        with self._write() as (c, b):
            if netuid is None:
                netuid = int(c.execute("SELECT COALESCE(MAX(netuid), 0) + 1 FROM subnets").fetchone()[0])
            elif c.execute("SELECT 1 FROM subnets WHERE netuid = ?", (netuid,)).fetchone():
                raise ChainError(f"subnet {netuid} already exists")
            epoch0 = (b // self.params.tempo) * self.params.tempo
            c.execute("INSERT INTO subnets VALUES (?, ?, ?, ?, ?, 0)", (netuid, hot, cold, b, epoch0))
        return netuid

    def stake(self, hotkey: Any, amount: float) -> float:
        """Add ``amount`` (alpha) of stake to a hotkey (local only); returns the new total."""
        if amount < 0 or not math.isfinite(amount):
            raise ChainError("stake amount must be a finite non-negative number")
        hot = hotkey_address(hotkey)
        with self._write() as (c, _):
            c.execute("INSERT INTO stakes VALUES (?, ?) ON CONFLICT(hotkey) DO UPDATE SET amount = amount + ?",
                      (hot, amount, amount))
            return float(c.execute("SELECT amount FROM stakes WHERE hotkey = ?", (hot,)).fetchone()[0])

    def register(self, keypair_or_wallet: Any, netuid: int) -> int:
        hot, cold = hotkey_address(keypair_or_wallet), coldkey_address(keypair_or_wallet)
        with self._write() as (c, b):
            self._require_subnet(c, netuid)
            row = c.execute("SELECT uid FROM neurons WHERE netuid = ? AND hotkey = ?", (netuid, hot)).fetchone()
            if row:
                return int(row[0])
            count = int(c.execute("SELECT COUNT(*) FROM neurons WHERE netuid = ?", (netuid,)).fetchone()[0])
            if count < self.params.max_uids:
                uid = count
            else:
                # Subtensor's pruning score: the lowest last-epoch emission (incentive for miners,
                # dividends for validators, so staked validators are not pruned), oldest first.
                victim = c.execute(
                    "SELECT uid FROM neurons WHERE netuid = ? AND ? - registered_block >= ?"
                    " ORDER BY emission ASC, incentive ASC, registered_block ASC, uid ASC LIMIT 1",
                    (netuid, b, self.params.immunity_period)).fetchone()
                if victim is None:
                    raise SubnetFullError(f"subnet {netuid} is full ({count} uids) and every uid is still immune")
                uid = int(victim[0])
                # The new hotkey starts clean: no inherited weights, bonds or scores.
                c.execute("DELETE FROM neurons WHERE netuid = ? AND uid = ?", (netuid, uid))
                for table in ("weights", "bonds"):
                    c.execute(f"DELETE FROM {table} WHERE netuid = ? AND (uid = ? OR dest = ?)", (netuid, uid, uid))
            c.execute("INSERT INTO neurons (netuid, uid, hotkey, coldkey, registered_block, last_update)"
                      " VALUES (?, ?, ?, ?, ?, ?)", (netuid, uid, hot, cold, b, b))
            return uid

    # --- commitments and weights ----------------------------------------------------

    def commit(self, hotkey_keypair: Any, netuid: int, data: str) -> None:
        if not isinstance(data, str):
            raise ChainError("commitment data must be a string")
        hot = hotkey_address(hotkey_keypair)
        with self._write() as (c, b):
            self._require_subnet(c, netuid)
            self._uid(c, netuid, hot)
            c.execute("INSERT OR REPLACE INTO commitments VALUES (?, ?, ?, ?)", (netuid, hot, data, b))

    def commitments(self, netuid: int) -> dict[str, str]:
        with self._read() as (c, _):
            self._require_subnet(c, netuid)
            rows = c.execute("SELECT c.hotkey, c.data FROM commitments c JOIN neurons n ON n.netuid = c.netuid"
                             " AND n.hotkey = c.hotkey WHERE c.netuid = ?", (netuid,)).fetchall()
        return dict(rows)

    def set_weights(self, hotkey_keypair: Any, netuid: int, uids: list[int], weights: list[float],
                    version_key: int) -> None:
        hot = hotkey_address(hotkey_keypair)
        if len(uids) != len(weights) or not uids:
            raise InvalidWeightsError("uids and weights must be non-empty and of equal length")
        if len(set(uids)) != len(uids):
            raise InvalidWeightsError("duplicate uids in weights")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise InvalidWeightsError("weights must be finite, non-negative and not all zero")
        if version_key < self.params.weights_version:
            raise InvalidWeightsError(f"version_key {version_key} < the subnet's {self.params.weights_version}")
        with self._write() as (c, b):
            self._require_subnet(c, netuid)
            uid = self._uid(c, netuid, hot)
            all_uids, _, _, permits = self._neuron_columns(c, netuid)
            if not permits[all_uids.index(uid)]:
                raise NoValidatorPermitError(f"hotkey {hot} (uid {uid}) has no validator permit on subnet {netuid}")
            unknown = sorted(set(uids) - set(all_uids))
            if unknown:
                raise InvalidWeightsError(f"uids not registered on subnet {netuid}: {unknown}")
            if uids != [uid]:  # a lone self-weight is exempt, as on subtensor
                self._check_weight_limits(weights)
            last = c.execute("SELECT weights_block FROM neurons WHERE netuid = ? AND uid = ?", (netuid, uid)).fetchone()[0]
            if last is not None and b - last < self.params.weights_rate_limit:
                wait = self.params.weights_rate_limit - (b - last)
                raise RateLimitedError(f"uid {uid} set weights at block {last}; retry in {wait} blocks", wait)
            total = float(sum(weights))
            c.execute("DELETE FROM weights WHERE netuid = ? AND uid = ?", (netuid, uid))
            c.executemany("INSERT INTO weights VALUES (?, ?, ?, ?)",
                          [(netuid, uid, int(d), float(w) / total) for d, w in zip(uids, weights, strict=True) if w > 0])
            c.execute("UPDATE neurons SET weights_block = ?, last_update = ? WHERE netuid = ? AND uid = ?",
                      (b, b, netuid, uid))

    def _check_weight_limits(self, weights: list[float]) -> None:
        """``min_allowed_weights`` and the ``max_weights_limit`` share, checked as subtensor does."""
        given = [w for w in weights if w > 0]
        if len(given) < self.params.min_allowed_weights:
            raise InvalidWeightsError(f"{len(given)} non-zero weights; the subnet requires at least "
                                      f"{self.params.min_allowed_weights}")
        share = max(given) / sum(given)
        if share > self.params.max_weights_limit / U16_MAX + 1 / U16_MAX:  # within the chain's u16 rounding
            raise InvalidWeightsError(f"largest weight is {share:.4f} of the row; the subnet caps one weight at "
                                      f"{self.params.max_weights_limit / U16_MAX:.4f}")

    def subnet_params(self, netuid: int) -> SubnetParams:
        """The file's parameters, which :meth:`set_weights` enforces; commit-reveal is never on here."""
        with self._read() as (c, _):
            self._require_subnet(c, netuid)
        p = self.params
        return SubnetParams(netuid=netuid, tempo=p.tempo, weights_rate_limit=p.weights_rate_limit,
                            weights_version=p.weights_version, commit_reveal_enabled=False, commit_reveal_period=0,
                            max_weights_limit=p.max_weights_limit, min_allowed_weights=p.min_allowed_weights)

    def weights(self, netuid: int) -> dict[int, dict[int, float]]:
        with self._read() as (c, _):
            self._require_subnet(c, netuid)
            rows = c.execute("SELECT uid, dest, weight FROM weights WHERE netuid = ? ORDER BY uid, dest",
                             (netuid,)).fetchall()
        out: dict[int, dict[int, float]] = {}
        for uid, dest, w in rows:
            out.setdefault(uid, {})[dest] = w
        return out

    # --- reads ------------------------------------------------------------------------

    def metagraph(self, netuid: int) -> Metagraph:
        with self._read() as (c, b):
            self._require_subnet(c, netuid)
            uids, hotkeys, stakes, permits = self._neuron_columns(c, netuid)
            rows = {r[0]: r[1:] for r in c.execute(
                "SELECT uid, coldkey, last_update, incentive, dividends, emission, consensus FROM neurons"
                " WHERE netuid = ?", (netuid,))}
        col = lambda k: [rows[u][k] for u in uids]  # noqa: E731
        return Metagraph(netuid=netuid, block=b, uids=uids, hotkeys=hotkeys, coldkeys=col(0), stakes=stakes,
                         validator_permit=permits, last_update=col(1), incentive=col(2), dividends=col(3),
                         emission=col(4), consensus=col(5))

    def subnets(self) -> list[int]:
        with self._read() as (c, _):
            return [r[0] for r in c.execute("SELECT netuid FROM subnets ORDER BY netuid")]

    def last_epoch_block(self, netuid: int) -> int:
        with self._read() as (c, _):
            self._require_subnet(c, netuid)
            return int(c.execute("SELECT last_epoch_block FROM subnets WHERE netuid = ?", (netuid,)).fetchone()[0])

    def epochs_run(self, netuid: int) -> list[int]:
        """Boundary blocks at which an epoch ran (each exactly once)."""
        with self._read() as (c, _):
            return [r[0] for r in c.execute("SELECT block FROM epochs WHERE netuid = ? ORDER BY block", (netuid,))]
