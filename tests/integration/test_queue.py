"""Redis work queue and leader lease against the real Redis (db 15).

Every test uses its own key prefix (``gauntlet:test:<random>``) and deletes only those keys,
so it never disturbs other tests or data in the same Redis database.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from validator.app import leader_check
from validator.queue import Job, LeaderLease, QueueUnavailable, RedisHealth, WorkQueue, connect

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    prefix = f"gauntlet:test:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = connect(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url)
    yield client
    client.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_consumers_split_the_jobs_without_loss_or_duplicates(client: redis.Redis, prefix: str) -> None:
    queue = WorkQueue(client, stream=f"{prefix}:eval")
    hotkeys = [f"hk{i:03d}" for i in range(60)]
    ids = {queue.submit(3, hk, {"uid": i, "pages": [i, i + 1]}) for i, hk in enumerate(hotkeys)}
    assert len(ids) == 60 and queue.backlog() == 60
    claimed: dict[str, list[Job]] = {"w1": [], "w2": []}

    def worker(name: str) -> None:
        own = WorkQueue(client, stream=queue.stream)
        while True:
            jobs = own.claim(name, count=4, block_ms=200)
            if not jobs:
                return
            for job in jobs:
                claimed[name].append(job)
                time.sleep(0.002)  # some work, so both workers get a share
                own.complete(job, {"worker": name, "uid": job.payload["uid"]})

    threads = [threading.Thread(target=worker, args=(n,)) for n in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    done = [job.hotkey for jobs in claimed.values() for job in jobs]
    assert sorted(done) == hotkeys  # every job exactly once
    assert all(claimed.values()), {n: len(j) for n, j in claimed.items()}  # both workers took part
    results = queue.results(3)
    assert sorted(results) == hotkeys
    assert all(results[job.hotkey]["worker"] == name for name, jobs in claimed.items() for job in jobs)
    assert queue.pending() == 0 and queue.backlog() == 0
    queue.clear_window(3)
    assert queue.results(3) == {}


def test_submit_is_deduplicated_per_window_and_hotkey(client: redis.Redis, prefix: str) -> None:
    queue = WorkQueue(client, stream=f"{prefix}:eval")
    first = queue.submit(1, "hk", {"a": 1})
    assert queue.submit(1, "hk", {"a": 2}) == first
    assert queue.submit(2, "hk", {"a": 1}) != first
    assert queue.backlog() == 2
    assert queue.submit(1, "hk", {"a": 3}, dedupe=False) != first
    jobs = queue.claim("w", count=10)
    assert [(j.window, j.hotkey, j.payload) for j in jobs] == [
        (1, "hk", {"a": 1}),
        (2, "hk", {"a": 1}),
        (1, "hk", {"a": 3}),
    ]
    assert queue.claim("w") == []


def test_jobs_of_a_dead_worker_are_reclaimed_and_redone_idempotently(
    client: redis.Redis, prefix: str
) -> None:
    queue = WorkQueue(client, stream=f"{prefix}:eval")
    for hk in ("a", "b", "c"):
        queue.submit(9, hk, {})
    dead = queue.claim("dead-worker", count=2)
    assert [j.hotkey for j in dead] == ["a", "b"]
    queue.publish_result(9, "a", {"loss": 1.0})  # wrote a result, died before acknowledging

    live = queue.claim("live-worker", count=5)
    assert [j.hotkey for j in live] == ["c"]
    queue.complete(live[0], {"loss": 3.0})
    assert queue.reclaim_stale("live-worker", min_idle_ms=60_000) == []  # not stale yet
    time.sleep(0.3)
    reclaimed = queue.reclaim_stale("live-worker", min_idle_ms=200)
    assert [(j.hotkey, j.deliveries) for j in reclaimed] == [("a", 2), ("b", 2)]
    for job in reclaimed:
        queue.complete(job, {"loss": 2.0, "by": "live"})
    assert queue.results(9) == {
        "a": {"loss": 2.0, "by": "live"},
        "b": {"loss": 2.0, "by": "live"},
        "c": {"loss": 3.0},
    }
    assert queue.pending() == 0 and queue.backlog() == 0
    # The "dead" worker was only slow: its late completion overwrites, never adds.
    queue.complete(dead[1], {"loss": 2.0, "by": "late"})
    assert len(queue.results(9)) == 3


def test_queue_survives_redis_losing_the_stream_and_group(client: redis.Redis, prefix: str) -> None:
    queue = WorkQueue(client, stream=f"{prefix}:eval")
    queue.submit(1, "a", {})
    client.delete(queue.stream, f"{queue.stream}:submitted:1")  # e.g. Redis restarted without persistence
    queue.submit(1, "a", {"again": True})
    assert [(j.hotkey, j.payload) for j in queue.claim("w", count=5)] == [("a", {"again": True})]


def test_leader_lease_is_exclusive_and_expires(client: redis.Redis, prefix: str) -> None:
    lease = LeaderLease(client, key=f"{prefix}:leader", ttl_s=0.3)
    assert lease.holder() is None
    assert lease.acquire("validator-a")
    assert lease.acquire("validator-a")  # re-entrant: extends its own lease
    assert not lease.acquire("validator-b")
    assert lease.renew("validator-a") and not lease.renew("validator-b")
    assert not lease.release("validator-b")
    assert lease.holder() == "validator-a"
    assert lease.release("validator-a") and lease.holder() is None
    assert lease.acquire("validator-b")

    time.sleep(0.45)  # b stops renewing (crashed): the lease lapses
    assert lease.holder() is None
    assert lease.acquire("validator-a")
    assert not lease.renew("validator-b")  # the old leader learns it lost the lease
    assert 0 < client.pttl(lease.key) <= 300


def test_two_owners_never_both_hold_the_lease_and_a_lapsed_one_notices(redis_url: str, prefix: str) -> None:
    # Two validator processes: separate clients and lease objects racing for one key.
    clients = [connect(redis_url) for _ in range(8)]
    try:
        leases = [LeaderLease(c, key=f"{prefix}:leader", ttl_s=0.4) for c in clients]
        start = threading.Barrier(len(leases))
        won: list[str] = []

        def contend(i: int) -> None:
            start.wait()
            if leases[i].acquire(f"owner-{i}"):
                won.append(f"owner-{i}")

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(leases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1  # exactly one winner of a simultaneous race
        leader = won[0]
        assert [ls.held(f"owner-{i}") for i, ls in enumerate(leases)].count(True) == 1
        assert leases[0].holder() == leader

        # The leader stalls past the TTL; another owner takes over.
        time.sleep(0.55)
        other = next(f"owner-{i}" for i in range(len(leases)) if f"owner-{i}" != leader)
        assert leases[1].acquire(other)
        # The stalled leader notices the loss every way it can ask, and cannot take it back.
        stale = leases[2]
        assert not stale.held(leader)
        assert not stale.renew(leader)
        assert not stale.acquire(leader)
        assert not stale.release(leader)
        assert stale.holder() == other and stale.held(other)
        assert leader_check(stale, leader)() is False and leader_check(stale, other)() is True
    finally:
        for c in clients:
            c.close()


def test_redis_down_raises_queue_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    down = connect(f"redis://127.0.0.1:{closed_port()}/15", connect_timeout_s=0.5)
    health = RedisHealth(down, retry_after_s=60)
    queue = WorkQueue(down, stream="gauntlet:test:down", health=health)
    lease = LeaderLease(down, key="gauntlet:test:down:leader", health=health)
    with caplog.at_level(logging.WARNING, logger="validator.queue"):
        for call in (
            lambda: queue.submit(1, "hk", {}),
            lambda: queue.claim("w", block_ms=100),
            lambda: queue.results(1),
            lambda: queue.reclaim_stale("w", 1000),
            lambda: lease.acquire("me"),
            lambda: lease.renew("me"),
        ):
            with pytest.raises(QueueUnavailable):
                call()
        assert not health.up
        assert not health.available()  # paced: no new connection attempt within retry_after_s
    assert sum("degraded" in r.getMessage() for r in caplog.records) == 1  # logged once per outage


class _Proxy:
    """A TCP proxy in front of Redis that the test can cut and restore (Redis 'down' and 'back')."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = closed_port()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                downstream, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()


def test_degraded_mode_recovers_when_redis_returns(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = _Proxy(("127.0.0.1", 6379))
    proxy.start()
    client = connect(f"redis://127.0.0.1:{proxy.port}/15", connect_timeout_s=0.5, socket_timeout_s=2)
    health = RedisHealth(client, retry_after_s=0.0)
    queue = WorkQueue(client, stream=f"{prefix}:eval", health=health)
    try:
        with caplog.at_level(logging.WARNING, logger="validator.queue"):
            queue.submit(1, "before", {})
            proxy.stop()
            with pytest.raises(QueueUnavailable):
                queue.submit(1, "during", {})
            assert not health.up and not health.available()
            proxy.start()
            assert health.available() and health.up
            queue.submit(1, "after", {})
            assert [j.hotkey for j in queue.claim("w", count=5)] == ["before", "after"]
        messages = [r.getMessage() for r in caplog.records]
        assert sum("continuing in degraded mode" in m for m in messages) == 1
        assert sum("is back" in m for m in messages) == 1
    finally:
        client.close()
        proxy.stop()
