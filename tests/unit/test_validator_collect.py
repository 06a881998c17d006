"""Collection of a window's uploads: URL policy, timing by the store's clock, caps, timeouts.

The SSRF tests run a real listener on loopback: a miner naming it must not get a single
connection out of the validator (unless the development flag is on), and the receipt must
carry a fixed phrase, never what the connection attempt revealed.

Run: ``pytest tests/unit/test_validator_collect.py -q``
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from protocol.hparams import HParams
from protocol.peer_storage import NOT_FOUND, REFUSED_PRIVATE, REFUSED_SCHEME, UNREACHABLE, EndpointPolicy
from protocol.storage import ObjectInfo, ObjectNotFound, ObjectTooLarge, delta_key
from scoring.filters import Rejection
from validator.collect import Collected, StorageCache, WindowTimes, collect_window

HP = HParams().override(**{"windows.upload_grace_s": 10.0, "max_upload_bytes": 2048})
TIMES = WindowTimes(start=1000.0, end=1100.0)  # deadline = 1110
HK = [f"5{c}" + "A" * 46 for c in "BCDEFGH"]


class FakeStore:
    """In-memory store: key -> (bytes, uploaded_at); ``hang`` blocks every read until released."""

    def __init__(self, objects: dict[str, tuple[bytes, float]], hang: threading.Event | None = None) -> None:
        self.objects, self.hang = objects, hang

    def stat(self, key: str) -> ObjectInfo:
        if self.hang is not None:
            self.hang.wait(5)
        if key not in self.objects:
            raise ObjectNotFound("fake", key)
        data, t = self.objects[key]
        return ObjectInfo(key, len(data), t)

    def get(self, key: str, *, max_bytes: int) -> bytes:
        data = self.objects[key][0]
        if len(data) > max_bytes:
            raise ObjectTooLarge("fake", key, max_bytes)
        return data


def _reasons(urls: list[str], *, allow: bool) -> list[tuple[str | None, str]]:
    stores = StorageCache(lambda url: FakeStore({}), policy=EndpointPolicy(allow_private=allow))
    hotkeys = {HK[i]: i for i in range(len(urls))}
    got = collect_window(1, hotkeys=hotkeys, commitments=dict(zip(hotkeys, urls, strict=True)), times=TIMES,
                         hp=HP, allow_local_storage=allow, stores=stores)
    return [(got[hk].reason, got[hk].detail) for hk in hotkeys]


def test_url_policy() -> None:
    urls = ["s3://bucket/x", "file:///etc", "http://x", "/etc/passwd", "s3://bkt?endpoint=https://10.0.0.1"]
    assert _reasons(urls, allow=False) == [
        ("missing", NOT_FOUND), (Rejection.BAD_STORAGE_URL, REFUSED_SCHEME), (Rejection.BAD_STORAGE_URL, REFUSED_SCHEME), (Rejection.BAD_STORAGE_URL, REFUSED_SCHEME),
        (Rejection.BAD_STORAGE_URL, REFUSED_PRIVATE)]
    assert _reasons(urls, allow=True) == [
        ("missing", NOT_FOUND), ("missing", NOT_FOUND), (Rejection.BAD_STORAGE_URL, REFUSED_SCHEME), (Rejection.BAD_STORAGE_URL, REFUSED_SCHEME),
        ("missing", NOT_FOUND)]


def test_each_peer_gets_one_outcome() -> None:
    w = 5
    objects = {
        delta_key(w, HK[0]): (b"ok", 1050.0),  # on time
        delta_key(w, HK[1]): (b"late", 1110.5),  # 0.5 s past end + grace
        delta_key(w, HK[2]): (b"early", 999.0),  # before the window began
        delta_key(w, HK[3]): (b"x" * 4096, 1050.0),  # over the cap
        delta_key(w, HK[4]): (b"edge", 1110.0),  # exactly at the deadline: inclusive
    }
    stores = StorageCache(lambda url: FakeStore(objects))
    commitments = {hk: "s3://bucket/p" for hk in HK[:6]}
    commitments[HK[6]] = "file:///etc"
    hotkeys = {hk: i for i, hk in enumerate(HK)}
    got = collect_window(w, hotkeys=hotkeys, commitments=commitments, times=TIMES, hp=HP,
                         allow_local_storage=False, stores=stores)
    assert got[HK[0]].ok and got[HK[0]].data == b"ok" and got[HK[0]].uploaded_at == 1050.0
    assert got[HK[1]].reason == "late" and got[HK[1]].data is None
    assert got[HK[2]].reason == "early"
    assert got[HK[3]].reason == Rejection.TOO_LARGE
    assert got[HK[4]].ok
    assert got[HK[5]].reason == "missing"
    assert got[HK[6]].reason == Rejection.BAD_STORAGE_URL  # never opened


def test_a_hanging_store_does_not_block_the_others() -> None:
    w = 1
    release = threading.Event()
    slow = FakeStore({delta_key(w, HK[0]): (b"a", 1050.0)}, hang=release)
    fast = FakeStore({delta_key(w, HK[1]): (b"b", 1050.0)})
    stores = StorageCache(lambda url: slow if "slow" in url else fast)
    try:
        got = collect_window(w, hotkeys={HK[0]: 0, HK[1]: 1},
                             commitments={HK[0]: "s3://slow/x", HK[1]: "s3://fast/x"},
                             times=TIMES, hp=HP, allow_local_storage=False, per_peer_timeout_s=0.5, stores=stores)
    finally:
        release.set()
    assert got[HK[0]].reason == Rejection.TIMEOUT
    assert got[HK[1]].ok


class Listener:
    """A TCP server on 127.0.0.1 that records what reaches it and answers every request 404."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    self.requests.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)  # a host proxy must not stand in for the loopback server
    monkeypatch.setenv("GAUNTLET_S3_ACCESS_KEY_ID", "AKIAVALIDATOROWNKEY")  # the validator's own credentials
    monkeypatch.setenv("GAUNTLET_S3_SECRET_ACCESS_KEY", "validator-secret")
    server = Listener()
    yield server
    server.close()


def _collect_from(urls: list[str], *, allow: bool) -> dict[str, Collected]:
    hotkeys = {HK[i]: i for i in range(len(urls))}
    return collect_window(3, hotkeys=hotkeys, commitments=dict(zip(hotkeys, urls, strict=True)), times=TIMES,
                          hp=HP, allow_local_storage=allow, per_peer_timeout_s=20.0)


def test_a_loopback_endpoint_gets_no_connection(listener: Listener) -> None:
    urls = [f"s3://bkt?endpoint=http://127.0.0.1:{listener.port}&path_style=1",
            f"s3://bkt?endpoint=https://127.0.0.1:{listener.port}",
            f"s3://bkt?endpoint=http://[::ffff:127.0.0.1]:{listener.port}"]
    got = _collect_from(urls, allow=False)
    assert listener.connections == 0 and listener.requests == []
    for peer in got.values():
        assert (peer.reason, peer.detail) == (Rejection.BAD_STORAGE_URL, REFUSED_PRIVATE)


def test_dev_flag_reaches_loopback_unsigned_with_fixed_details(listener: Listener) -> None:
    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    urls = [f"s3://bkt?endpoint=http://127.0.0.1:{listener.port}&path_style=1",
            f"s3://bkt?endpoint=http://127.0.0.1:{dead}&path_style=1"]
    got = list(_collect_from(urls, allow=True).values())
    assert (got[0].reason, got[0].detail) == ("missing", NOT_FOUND)
    assert (got[1].reason, got[1].detail) == (Rejection.STORAGE_UNAVAILABLE, UNREACHABLE)
    assert listener.requests and all(r.startswith(b"HEAD /bkt/deltas/") for r in listener.requests)
    for raw in listener.requests:  # anonymous: the validator's own key never leaves it
        assert b"authorization" not in raw.lower() and b"AKIAVALIDATOROWNKEY" not in raw
        assert b"x-amz-security-token" not in raw.lower()

