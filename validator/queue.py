"""Redis coordination of validators and workers: the evaluation queue and the leader lease.

* :class:`WorkQueue` is a Redis Streams queue with one consumer group, so any number of
  ``gauntlet validator worker`` processes (other machines or GPUs) share the evaluation of
  a window. The leader ``submit``s one job per (window, hotkey); workers ``claim`` jobs,
  ``complete`` them (result written and job acknowledged in one MULTI), and the leader
  reads ``results(window)``. Results are keyed by hotkey in a per-window hash, so a job done
  twice (a worker died after writing, before acknowledging) overwrites the same result.
  Jobs of a dead worker stay in the group's pending list and are taken over with
  ``reclaim_stale`` (``XAUTOCLAIM``) once idle long enough.
* :class:`LeaderLease` is a lease (redis-py's :class:`~redis.lock.Lock`: ``SET NX PX``,
  token-checked renew and release) so that one validator instance alone sets weights. The
  database's unique weight set per window is the final guard against a stale leader.
* Degraded mode: every Redis failure (connection refused, timeout, server loading) surfaces
  as one exception, :class:`QueueUnavailable`. The caller catches it, evaluates in-process
  and keeps going; :class:`RedisHealth` logs the outage and the recovery once each and
  tells the caller when to try Redis again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import LockError
from redis.lock import Lock
from redis.retry import Retry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Redis errors that mean "Redis is not there right now" (as opposed to a bug in a command).
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica after failover
    ConnectionError,
    TimeoutError,
)


class QueueUnavailable(RuntimeError):
    """Redis cannot be reached; evaluate in-process and try again later."""


def connect(url: str, *, socket_timeout_s: float = 10.0, connect_timeout_s: float = 2.0) -> redis.Redis:
    """A client for ``url`` that fails fast (short retries) instead of hanging the window loop."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        health_check_interval=30,
    )


class RedisHealth:
    """Tracks whether Redis is up, logs each outage and recovery once, paces reconnect tries."""

    def __init__(
        self, client: redis.Redis, *, retry_after_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ):
        self.client = client
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._down_since: float | None = None
        self._last_try = 0.0

    @property
    def up(self) -> bool:
        """Last known state (no network call)."""
        return self._down_since is None

    def report_failure(self, exc: BaseException) -> None:
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
            log.warning("Redis unavailable (%s); continuing in degraded mode without it", exc)
        self._last_try = now

    def report_success(self) -> None:
        if self._down_since is not None:
            log.warning("Redis is back after %.1f s; leaving degraded mode", self._clock() - self._down_since)
            self._down_since = None

    def available(self) -> bool:
        """True when Redis answers; while down, pings at most once per ``retry_after_s``."""
        if self._down_since is not None and self._clock() - self._last_try < self.retry_after_s:
            return False
        try:
            self.client.ping()
        except UNAVAILABLE_ERRORS as exc:
            self.report_failure(exc)
            return False
        self.report_success()
        return True


@contextmanager
def _guard(health: RedisHealth | None, what: str) -> Iterator[None]:
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        if health is not None:
            health.report_failure(exc)
        raise QueueUnavailable(f"redis unavailable during {what}: {exc}") from exc
    if health is not None:
        health.report_success()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Job:
    """One evaluation job: the peer ``hotkey``'s delta of ``window`` and what to evaluate."""

    id: str
    window: int
    hotkey: str
    payload: dict[str, Any] = field(default_factory=dict)
    deliveries: int = 1  # how many times the job was handed out (more than 1 after a reclaim)

    @classmethod
    def from_entry(cls, entry_id: Any, fields: Mapping[Any, Any], deliveries: int = 1) -> Job:
        data = {_text(k): _text(v) for k, v in fields.items()}
        return cls(
            id=_text(entry_id),
            window=int(data["window"]),
            hotkey=data["hotkey"],
            payload=json.loads(data.get("payload", "{}")),
            deliveries=deliveries,
        )


# KEYS: stream, submitted-hash. ARGV: hotkey, window, payload, ttl_s.
_SUBMIT_ONCE = """
local id = redis.call('HGET', KEYS[2], ARGV[1])
if id then return id end
id = redis.call('XADD', KEYS[1], '*', 'window', ARGV[2], 'hotkey', ARGV[1], 'payload', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], id)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return id
"""


class WorkQueue:
    """Evaluation jobs on a Redis stream shared by a consumer group of workers."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str = "gauntlet:eval",
        *,
        group: str = "workers",
        result_ttl_s: int = 7 * 24 * 3600,
        health: RedisHealth | None = None,
    ):
        self.client = client
        self.stream = stream
        self.group = group
        self.result_ttl_s = result_ttl_s
        self.health = health
        self._group_ready = False
        self._submit_once = client.register_script(_SUBMIT_ONCE)

    # keys
    def _results_key(self, window: int) -> str:
        return f"{self.stream}:results:{window}"

    def _submitted_key(self, window: int) -> str:
        return f"{self.stream}:submitted:{window}"

    def _ensure_group(self, *, force: bool = False) -> None:
        if self._group_ready and not force:
            return
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the group in place; recreate it once if Redis lost it (restart)."""
        with _guard(self.health, what):
            self._ensure_group()
            try:
                return fn()
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ensure_group(force=True)
                return fn()

    # producer side
    def submit(self, window: int, hotkey: str, payload: Mapping[str, Any], *, dedupe: bool = True) -> str:
        """Queue the evaluation of ``hotkey`` in ``window``; returns the job id.

        With ``dedupe`` (default) a (window, hotkey) already submitted is not queued again
        (a restarted leader resubmitting a window) and its first job id is returned.
        """
        body = json.dumps(dict(payload), separators=(",", ":"), sort_keys=True)

        def run() -> str:
            if dedupe:
                keys = [self.stream, self._submitted_key(window)]
                return _text(self._submit_once(keys=keys, args=[hotkey, window, body, self.result_ttl_s]))
            fields = {"window": window, "hotkey": hotkey, "payload": body}
            return _text(self.client.xadd(self.stream, fields))  # type: ignore[arg-type]

        return self._call("submit", run)

    def results(self, window: int) -> dict[str, dict[str, Any]]:
        """The results published so far for ``window``, by hotkey."""

        def run() -> dict[str, dict[str, Any]]:
            raw = self.client.hgetall(self._results_key(window))
            return {_text(k): json.loads(_text(v)) for k, v in raw.items()}  # type: ignore[union-attr]

        return self._call("results", run)

    def clear_window(self, window: int) -> None:
        """Forget ``window``'s results and submissions (after they are in the database)."""
        self._call(
            "clear", lambda: self.client.delete(self._results_key(window), self._submitted_key(window))
        )

    def pending(self) -> int:
        """Jobs handed out but not yet acknowledged."""
        return int(self._call("pending", lambda: self.client.xpending(self.stream, self.group))["pending"])  # type: ignore[index]

    def backlog(self) -> int:
        """Jobs in the stream: not yet handed out plus pending (acknowledged ones are deleted)."""
        return int(self._call("backlog", lambda: self.client.xlen(self.stream)))  # type: ignore[arg-type]

    # worker side
    def claim(self, consumer: str, count: int = 1, block_ms: int | None = None) -> list[Job]:
        """Up to ``count`` new jobs for ``consumer``; waits up to ``block_ms`` (None: no wait)."""
        if block_ms is not None and block_ms <= 0:
            raise ValueError("block_ms must be positive (0 would block forever) or None")

        def run() -> list[Job]:
            reply = self.client.xreadgroup(
                self.group, consumer, {self.stream: ">"}, count=count, block=block_ms
            )
            return [Job.from_entry(i, f) for _, entries in (reply or []) for i, f in entries if f]  # type: ignore[union-attr]

        return self._call("claim", run)

    def ack(self, job: Job) -> None:
        """Acknowledge ``job`` (and delete it from the stream)."""

        def run() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.xack(self.stream, self.group, job.id)
            pipe.xdel(self.stream, job.id)
            pipe.execute()

        self._call("ack", run)

    def publish_result(self, window: int, hotkey: str, result: Mapping[str, Any]) -> None:
        """Store ``result`` for (window, hotkey), replacing any earlier one."""

        def run() -> None:
            pipe = self.client.pipeline(transaction=True)
            self._queue_result(pipe, window, hotkey, result)
            pipe.execute()

        self._call("publish_result", run)

    def complete(self, job: Job, result: Mapping[str, Any]) -> None:
        """Publish ``job``'s result and acknowledge it in one MULTI/EXEC."""

        def run() -> None:
            pipe = self.client.pipeline(transaction=True)
            self._queue_result(pipe, job.window, job.hotkey, result)
            pipe.xack(self.stream, self.group, job.id)
            pipe.xdel(self.stream, job.id)
            pipe.execute()

        self._call("complete", run)

    def _queue_result(self, pipe: Any, window: int, hotkey: str, result: Mapping[str, Any]) -> None:
        key = self._results_key(window)
        pipe.hset(key, hotkey, json.dumps(dict(result), separators=(",", ":"), sort_keys=True))
        pipe.expire(key, self.result_ttl_s)

    def reclaim_stale(self, consumer: str, min_idle_ms: int, count: int = 100) -> list[Job]:
        """Take over jobs pending longer than ``min_idle_ms`` (their worker died) for ``consumer``."""

        def run() -> list[Job]:
            jobs: list[Job] = []
            cursor = "0-0"
            while len(jobs) < count:
                reply = self.client.xautoclaim(
                    self.stream, self.group, consumer, min_idle_ms, start_id=cursor, count=count - len(jobs)
                )
                cursor, entries = _text(reply[0]), reply[1]  # type: ignore[index]
                jobs.extend(Job.from_entry(i, f) for i, f in entries if f)
                if cursor == "0-0":
                    break
            return self._with_deliveries(consumer, jobs)

        return self._call("reclaim_stale", run)

    def _with_deliveries(self, consumer: str, jobs: list[Job]) -> list[Job]:
        if not jobs:
            return jobs
        ids = sorted((j.id for j in jobs), key=lambda i: tuple(int(p) for p in i.split("-")))
        rows = self.client.xpending_range(
            self.stream, self.group, min=ids[0], max=ids[-1], count=len(jobs) + 1000, consumername=consumer
        )
        times = {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}  # type: ignore[union-attr]
        return [
            Job(id=j.id, window=j.window, hotkey=j.hotkey, payload=j.payload, deliveries=times.get(j.id, 1))
            for j in jobs
        ]


class LeaderLease:
    """A lease held by one owner at a time; it lapses ``ttl_s`` after the last renewal.

    Built on redis-py's :class:`redis.lock.Lock` (``SET NX PX`` to take it, token-checked Lua
    to renew and release) rather than scripts of our own. The lock's token *is* the owner's
    name, so ``holder()`` can say who leads, and any lease object for the same owner (a
    restarted loop in the same process) recognises the lease as its own.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str = "gauntlet:leader",
        ttl_s: float = 30.0,
        *,
        health: RedisHealth | None = None,
    ):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.client = client
        self.key = key
        self.ttl_s = ttl_s
        self.health = health

    def _lock(self, owner: str) -> Lock:
        # Not thread-local: the token names the owner, whichever thread asks on its behalf.
        lock = Lock(self.client, self.key, timeout=self.ttl_s, blocking=False, thread_local=False)
        lock.local.token = self.client.get_encoder().encode(owner)
        return lock

    def acquire(self, owner: str) -> bool:
        """Take the lease if free (or extend it if ``owner`` holds it); True if ``owner`` holds it."""
        lock = self._lock(owner)
        with _guard(self.health, "lease acquire"):
            try:
                return lock.reacquire()  # already ours: back to a full TTL
            except LockError:
                return bool(lock.acquire(blocking=False, token=owner))

    def renew(self, owner: str) -> bool:
        """Extend the lease if ``owner`` still holds it; False if it was lost (lapsed or taken)."""
        lock = self._lock(owner)
        with _guard(self.health, "lease renew"):
            try:
                return lock.reacquire()
            except LockError:
                return False

    def held(self, owner: str) -> bool:
        """Whether ``owner`` holds the lease now (no renewal)."""
        with _guard(self.health, "lease held"):
            return self._lock(owner).owned()

    def release(self, owner: str) -> bool:
        """Give the lease up if ``owner`` holds it."""
        lock = self._lock(owner)
        with _guard(self.health, "lease release"):
            try:
                lock.release()
            except LockError:
                return False
            return True

    def holder(self) -> str | None:
        """The current owner, or None."""
        with _guard(self.health, "lease holder"):
            value = self.client.get(self.key)
        return None if value is None else _text(value)
