"""Collection of a window's uploads: URL policy, timing by the store's clock, caps, timeouts.

Run: ``pytest tests/unit/test_validator_collect.py -q``
"""

from __future__ import annotations

import threading

from protocol.hparams import HParams
from protocol.storage import ObjectInfo, ObjectNotFound, ObjectTooLarge, delta_key
from validator.collect import (
    BAD_URL,
    TIMEOUT,
    TOO_LARGE,
    StorageCache,
    WindowTimes,
    collect_window,
    storage_url_allowed,
)

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


def test_url_policy() -> None:
    assert storage_url_allowed("s3://bucket/x", allow_local_storage=False)
    assert not storage_url_allowed("file:///etc", allow_local_storage=False)
    assert storage_url_allowed("file:///tmp/x", allow_local_storage=True)
    assert not storage_url_allowed("http://x", allow_local_storage=True)
    assert not storage_url_allowed("/etc/passwd", allow_local_storage=True)


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
    assert got[HK[3]].reason == TOO_LARGE
    assert got[HK[4]].ok
    assert got[HK[5]].reason == "missing"
    assert got[HK[6]].reason == BAD_URL  # never opened


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
    assert got[HK[0]].reason == TIMEOUT
    assert got[HK[1]].ok
