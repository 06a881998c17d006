"""Collect window W's uploads: one capped, timed read per registered miner, in parallel.

Every miner announces on chain (its commitment) the storage URL its deltas live in; the
validator reads ``delta_key(W, hotkey)`` from *that* store. What this module guarantees:

* **No peer blocks the loop.** Reads run in a thread pool and the whole collection has a
  deadline (``per_peer_timeout_s``, all peers in parallel); a peer still reading then is
  recorded as ``timeout`` and its thread is abandoned (the pool is not joined).
* **No peer makes the validator read what it should not.** Every committed URL passes
  ``protocol.peer_storage.EndpointPolicy`` first (s3:// with a public https endpoint;
  file://, http and private or loopback hosts only with ``allow_local_storage``, the
  ``GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE`` development flag), requests to miners' stores
  are unsigned, and reads are capped at ``hp.max_upload_bytes`` by the store itself.
* **No peer learns about the validator's network.** A failed read is recorded with a
  fixed phrase (``peer_storage.failure_category``: "unreachable", "not found",
  "refused by policy: private address", ...), never the exception's text, which goes to
  the validator's log only: receipts are public, and "connection refused" vs "timed out"
  vs an HTTP error would map the validator's internal ports for whoever asks.
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
from protocol.peer_storage import (
    STORE_ERROR,
    EndpointPolicy,
    StorageRefused,
    failure_category,
    open_peer_storage,
)
from protocol.storage import ObjectNotFound, ObjectTooLarge, Storage, StorageError, delta_key
from scoring.filters import Rejection, check_timing

log = logging.getLogger(__name__)


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
    reason: Rejection | None = None  # None: collected and on time
    detail: str = ""
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None and self.data is not None


class StorageCache:
    """One ``Storage`` per committed URL, opened once (S3 clients are costly to build).

    ``policy`` judges every URL before the opener sees it, whatever the opener (tests inject
    in-memory stores); the default opener also guards each S3 request and signs none.
    """

    def __init__(self, opener: Callable[[str], Storage] | None = None, *,
                 policy: EndpointPolicy | None = None) -> None:
        self.policy = policy or EndpointPolicy()
        self._opener = opener or (lambda url: open_peer_storage(url, self.policy))
        self._stores: dict[str, Storage] = {}

    def get(self, url: str) -> Storage:
        if url not in self._stores:
            self.policy.check_store_url(url)
            self._stores[url] = self._opener(url)
        return self._stores[url]


def _failure(exc: BaseException) -> tuple[Rejection, str]:
    """(reason, fixed receipt detail) of a failed read; see the module docstring."""
    if isinstance(exc, StorageRefused):
        return Rejection.BAD_STORAGE_URL, exc.category
    if isinstance(exc, ObjectNotFound):
        return Rejection.MISSING, failure_category(exc)
    if isinstance(exc, ObjectTooLarge):
        return Rejection.TOO_LARGE, failure_category(exc)
    return Rejection.STORAGE_UNAVAILABLE, failure_category(exc)


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
            peer.reason, peer.detail = timing, f"uploaded_at={info.uploaded_at:.3f}"
            return peer
        peer.data = store.get(key, max_bytes=hp.max_upload_bytes)
        # The object may have been overwritten between stat and get: the later stamp counts.
        again = store.stat(key)
        if again.uploaded_at > info.uploaded_at:
            peer.uploaded_at = again.uploaded_at
            late = check_timing(again.uploaded_at, times.start, times.end, hp.windows.upload_grace_s)
            if late is not None:
                peer.data, peer.reason, peer.detail = None, late, "overwritten after the deadline"
    except (StorageError, ValueError, OSError) as exc:
        peer.data = None
        peer.reason, peer.detail = _failure(exc)
        log.info("window %d: %s's store %s: %s: %s", window, peer.hotkey, peer.url, peer.detail, exc)
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
    """Read every registered miner's delta for ``window``; one :class:`Collected` per hotkey.

    ``allow_local_storage`` is the policy's development flag; given ``stores``, their own
    policy applies instead (it is what the window loop keeps between windows).
    """
    stores = stores or StorageCache(policy=EndpointPolicy(allow_private=allow_local_storage))
    peers: dict[str, Collected] = {}
    todo: list[Collected] = []
    for hotkey, uid in hotkeys.items():
        url = commitments.get(hotkey)
        peer = Collected(hotkey=hotkey, uid=uid, url=url)
        peers[hotkey] = peer
        if not url:
            peer.reason, peer.detail = Rejection.MISSING, "no storage commitment"
        else:
            todo.append(peer)  # the policy is applied in the reading thread: resolving a host takes time
    if not todo:
        return peers
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(todo))), thread_name_prefix="collect")
    futures = {pool.submit(_read_one, p, window, times, hp, stores): p for p in todo}
    done, pending = wait(futures, timeout=per_peer_timeout_s, return_when=ALL_COMPLETED)
    for fut in pending:  # a slow or hostile store: give up on it, never wait for its thread
        peer = futures[fut]
        fut.cancel()
        peers[peer.hotkey] = Collected(peer.hotkey, peer.uid, peer.url, reason=Rejection.TIMEOUT,
                                       detail=f"no answer within {per_peer_timeout_s}s")
    for fut in done:
        if fut.exception() is not None:  # _read_one catches storage errors; this is a bug guard
            peer = futures[fut]
            log.error("window %d: reading %s's store failed: %r", window, peer.hotkey, fut.exception())
            peers[peer.hotkey] = Collected(peer.hotkey, peer.uid, peer.url, reason=Rejection.STORAGE_UNAVAILABLE,
                                           detail=STORE_ERROR)
    pool.shutdown(wait=False, cancel_futures=True)
    if pending:
        log.warning("window %d: %d peer(s) timed out while collecting", window, len(pending))
    return peers
