"""Collect window W's uploads: one capped, timed read per registered miner, in parallel.

Every miner announces on chain (its commitment) the storage URL its deltas live in; the
validator reads ``delta_key(W, hotkey)`` from *that* store. What this module guarantees:

* **No peer blocks the loop.** Reads run in a thread pool and the whole collection has a
  deadline (``per_peer_timeout_s``, all peers in parallel); a peer still reading then is
  recorded as ``timeout`` and its thread is abandoned (the pool is not joined).
* **No peer makes the validator read what it should not.** Only ``s3://`` URLs are
  followed, plus ``file://`` when ``allow_local_storage`` is on (development and the
  local network): a miner must not point the validator at arbitrary local paths.
  Reads are capped at ``hp.max_upload_bytes`` by the store itself.
* **Lateness is the store's word.** ``uploaded_at`` comes from ``stat``; it is checked
  against the window's block timestamps with :func:`protocol.windows.is_on_time`'s bounds
  (``scoring.filters.check_timing`` gives early vs late). A second ``stat`` after the read
  keeps the later stamp, so an on-time stat followed by a late overwrite is still late.

The result is a :class:`Collected` per registered hotkey, never an exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ALL_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from protocol.hparams import HParams
from protocol.storage import ObjectNotFound, ObjectTooLarge, Storage, StorageError, delta_key, open_storage
from scoring.filters import Rejection, check_timing

log = logging.getLogger(__name__)

#: Reason codes of a failed collection that are not Stage-1 ``Rejection`` members.
TIMEOUT = "timeout"
BAD_URL = "bad_storage_url"
UNAVAILABLE = "storage_unavailable"
TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class WindowTimes:
    """Unix times of window W's first block and of W+1's first block (its end)."""

    start: float
    end: float


@dataclass(slots=True)
class Collected:
    """What the validator found for one registered miner in one window."""

    hotkey: str
    uid: int | None
    url: str | None
    data: bytes | None = None
    uploaded_at: float | None = None
    size: int | None = None
    reason: str | None = None  # None: collected and on time
    detail: str = ""
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None and self.data is not None


def storage_url_allowed(url: str, *, allow_local_storage: bool) -> bool:
    """Whether a miner-committed URL may be read (s3 always; file only on dev/local networks)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    return scheme == "s3" or (scheme == "file" and allow_local_storage)


class StorageCache:
    """One ``Storage`` per committed URL, opened once (S3 clients are costly to build)."""

    def __init__(self, opener: Callable[[str], Storage] = open_storage) -> None:
        self._opener = opener
        self._stores: dict[str, Storage] = {}

    def get(self, url: str) -> Storage:
        if url not in self._stores:
            self._stores[url] = self._opener(url)
        return self._stores[url]


def _read_one(
    peer: Collected, window: int, times: WindowTimes, hp: HParams, stores: StorageCache
) -> Collected:
    t0 = time.perf_counter()
    try:
        store = stores.get(peer.url or "")
        key = delta_key(window, peer.hotkey)
        info = store.stat(key)
        timing = check_timing(info.uploaded_at, times.start, times.end, hp.windows.upload_grace_s)
        peer.uploaded_at, peer.size = info.uploaded_at, info.size
        if timing is not None:
            peer.reason, peer.detail = timing.value, f"uploaded_at={info.uploaded_at:.3f}"
            return peer
        peer.data = store.get(key, max_bytes=hp.max_upload_bytes)
        # The object may have been overwritten between stat and get: the later stamp counts.
        again = store.stat(key)
        if again.uploaded_at > info.uploaded_at:
            peer.uploaded_at = again.uploaded_at
            late = check_timing(again.uploaded_at, times.start, times.end, hp.windows.upload_grace_s)
            if late is not None:
                peer.data, peer.reason, peer.detail = None, late.value, "overwritten after the deadline"
    except ObjectNotFound:
        peer.reason = Rejection.MISSING.value
    except ObjectTooLarge as exc:
        peer.reason, peer.detail = TOO_LARGE, str(exc)
    except (StorageError, ValueError, OSError) as exc:
        peer.reason, peer.detail = UNAVAILABLE, str(exc)[:500]
    finally:
        peer.seconds = time.perf_counter() - t0
    return peer


def collect_window(
    window: int,
    *,
    hotkeys: Mapping[str, int | None],
    commitments: Mapping[str, str],
    times: WindowTimes,
    hp: HParams,
    allow_local_storage: bool,
    per_peer_timeout_s: float = 30.0,
    max_workers: int = 16,
    stores: StorageCache | None = None,
) -> dict[str, Collected]:
    """Read every registered miner's delta for ``window``; one :class:`Collected` per hotkey."""
    stores = stores or StorageCache()
    peers: dict[str, Collected] = {}
    todo: list[Collected] = []
    for hotkey, uid in hotkeys.items():
        url = commitments.get(hotkey)
        peer = Collected(hotkey=hotkey, uid=uid, url=url)
        peers[hotkey] = peer
        if not url:
            peer.reason, peer.detail = Rejection.MISSING.value, "no storage commitment"
        elif not storage_url_allowed(url, allow_local_storage=allow_local_storage):
            peer.reason, peer.detail = BAD_URL, url.partition("://")[0][:16]
        else:
            todo.append(peer)
    if not todo:
        return peers
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(todo))), thread_name_prefix="collect")
    futures = {pool.submit(_read_one, p, window, times, hp, stores): p for p in todo}
    done, pending = wait(futures, timeout=per_peer_timeout_s, return_when=ALL_COMPLETED)
    for fut in pending:  # a slow or hostile store: give up on it, never wait for its thread
        peer = futures[fut]
        fut.cancel()
        peers[peer.hotkey] = Collected(peer.hotkey, peer.uid, peer.url, reason=TIMEOUT,
                                       detail=f"no answer within {per_peer_timeout_s}s")
    for fut in done:
        if fut.exception() is not None:  # _read_one catches storage errors; this is a bug guard
            peer = futures[fut]
            peers[peer.hotkey] = Collected(peer.hotkey, peer.uid, peer.url, reason=UNAVAILABLE,
                                           detail=repr(fut.exception())[:500])
    pool.shutdown(wait=False, cancel_futures=True)
    if pending:
        log.warning("window %d: %d peer(s) timed out while collecting", window, len(pending))
    return peers
