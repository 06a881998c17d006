"""Object storage for windows' artefacts: the key layout, the ``Storage`` contract and its backends.

This module owns where miners' deltas, validators' aggregates and checkpoints live
(``delta_key`` and friends), which keys are safe, and two backends behind one contract:
``LocalStorage`` (a directory; development and the local network) and ``S3Storage``
(AWS S3, Cloudflare R2, MinIO; in ``protocol.storage_s3``). ``protocol.storage_open.open_storage``
turns a settings URL into one of them.

Why the ``Storage`` protocol is shaped this way:

* Five whole-object verbs (put, get, stat, list, delete) are all the protocol needs, and
  every S3-like store offers them with the same meaning, so a backend is a thin adapter.
* Every answer about an object carries ``uploaded_at``, the *store's* timestamp. Lateness
  is judged by it, never by a clock a miner controls, so no method accepts a timestamp.
* ``get`` takes a mandatory ``max_bytes``: uploads come from untrusted miners, and a
  reader must never buffer more than the protocol allows. Backends count the bytes that
  actually arrive instead of believing a size header.
* Keys are validated before any backend sees them (``validate_key``): miners choose their
  hotkey strings, and a key must never become a path outside the store.
* Failures are a small hierarchy (``StorageError`` > ``ObjectNotFound``, ``ObjectTooLarge``,
  ``StorageUnavailable``, ``AccessDenied``) whose messages name the backend and key, so
  callers can tell "the miner did not upload" from "the store is down" from "the upload is
  abusive" from "the store will not let us read".

The S3 backend lives in ``protocol.storage_s3`` (boto3 is an extra), and the policy for stores
that peers name is ``protocol.peer_storage``.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import stat as stat_mod
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "MAX_KEY_LENGTH",
    "AccessDenied",
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectTooLarge",
    "S3Location",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "aggregate_key",
    "checkpoint_key",
    "delta_key",
    "delta_prefix",
    "fsync_dir",
    "parse_delta_key",
    "parse_s3_url",
    "proposal_key",
    "validate_hotkey",
    "validate_key",
    "validate_prefix",
    "window_of_delta_key",
]

CHUNK_BYTES = 1 << 20
MAX_KEY_LENGTH = 512
MAX_WINDOW = 10**10 - 1  # keys zero-pad windows to ten digits

# --------------------------------------------------------------------------- objects and errors


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object: its key, its size in bytes and the store's upload time (unix seconds)."""

    key: str
    size: int
    uploaded_at: float


class StorageError(Exception):
    """A storage operation failed; ``backend`` and ``key`` say where."""

    def __init__(self, backend: str, key: str | None, detail: str) -> None:
        super().__init__(backend, key, detail)
        self.backend = backend
        self.key = key
        self.detail = detail

    def __str__(self) -> str:
        where = self.backend if self.key is None else f"{self.backend} key {self.key!r}"
        return f"{where}: {self.detail}"


class ObjectNotFound(StorageError):
    """No object is stored under the key."""

    def __init__(self, backend: str, key: str | None, detail: str = "no such object") -> None:
        super().__init__(backend, key, detail)


class ObjectTooLarge(StorageError):
    """The object holds more than the reader's ``max_bytes``; nothing beyond the cap was kept."""

    def __init__(self, backend: str, key: str | None, limit: int) -> None:
        super().__init__(backend, key, f"object exceeds the {limit}-byte limit")
        self.args = (backend, key, limit)
        self.limit = limit


class StorageUnavailable(StorageError):
    """The store could not be reached or could not serve the request (retrying later may help)."""


class AccessDenied(StorageError):
    """The store refused to serve the object to this reader (HTTP 401/403: private bucket, bad keys)."""


# --------------------------------------------------------------------------- the contract


@runtime_checkable
class Storage(Protocol):
    """A flat, S3-like object store addressed by validated keys (see ``validate_key``).

    Contract for every backend:

    * ``put(key, data)`` stores the whole object atomically (readers see the old object,
      or none, or all of the new one; never a part) and returns its ``ObjectInfo``.
      Putting an existing key replaces it and refreshes ``uploaded_at``.
    * ``get(key, max_bytes=...)`` returns the whole object. It streams and raises
      ``ObjectTooLarge`` as soon as more than ``max_bytes`` bytes arrive, whatever size the
      store advertised; a declared size over the cap is rejected before reading.
    * ``stat(key)`` returns the object's ``ObjectInfo`` without reading it.
    * ``list(prefix)`` returns every object whose key starts with ``prefix`` (a plain string
      prefix, as in S3, not a directory), sorted by key.
    * ``delete(key)`` removes the object; deleting a missing key is not an error.

    ``uploaded_at`` is always the store's own clock (file mtime, S3 ``LastModified``).
    ``get`` and ``stat`` raise ``ObjectNotFound`` for a missing key; every method raises
    ``ValueError`` for an unsafe key, ``StorageUnavailable`` when the store cannot be
    reached, and ``StorageError`` for any other failure.
    """

    def put(self, key: str, data: bytes) -> ObjectInfo: ...

    def get(self, key: str, *, max_bytes: int) -> bytes: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str) -> builtins.list[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...


# --------------------------------------------------------------------------- keys

_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_HOTKEY = re.compile(r"[1-9A-HJ-NP-Za-km-z]{40,60}")  # SS58 alphabet (base58)
_DELTA_KEY = re.compile(r"deltas/([0-9]{10})/([1-9A-HJ-NP-Za-km-z]{40,60})\.gdlt")


def _key_problem(key: object) -> str | None:
    """Why ``key`` is unsafe, or None when it is a valid key."""
    if not isinstance(key, str):
        return f"must be a string, not {type(key).__name__}"
    if not key:
        return "is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"is longer than {MAX_KEY_LENGTH} characters"
    if "\\" in key:
        return "contains a backslash"
    if key.startswith("/"):
        return "is absolute"
    if ".." in key:
        return "contains '..'"
    if not _KEY_CHARS.fullmatch(key):
        return "may only contain A-Z a-z 0-9 . _ / -"
    if any(part in ("", ".") for part in key.split("/")):
        return "has an empty or '.' path segment"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` if it is safe to use as an object key, else raise ``ValueError``."""
    problem = _key_problem(key)
    if problem is not None:
        raise ValueError(f"unsafe storage key {key!r}: {problem}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe listing prefix ("" lists everything), else raise ``ValueError``.

    A prefix is a key's beginning: it may end inside a segment or with a single "/".
    """
    if prefix == "":
        return prefix
    body = prefix[:-1] if isinstance(prefix, str) and prefix.endswith("/") else prefix
    problem = _key_problem(body)
    if problem is not None:
        raise ValueError(f"unsafe storage prefix {prefix!r}: {problem}")
    return prefix


def validate_hotkey(hotkey: str) -> str:
    """Return ``hotkey`` if it looks like an SS58 address (40-60 base58 characters), else raise."""
    if not isinstance(hotkey, str) or not _HOTKEY.fullmatch(hotkey):
        raise ValueError(f"invalid hotkey {hotkey!r}: expected 40-60 base58 (SS58) characters")
    return hotkey


def _check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= MAX_WINDOW:
        raise ValueError(f"invalid window {window!r}: expected an int in [0, {MAX_WINDOW}]")
    return window


def delta_prefix(window: int) -> str:
    """Prefix under which every miner's delta for ``window`` lives (for ``Storage.list``)."""
    return f"deltas/{_check_window(window):010d}/"


def delta_key(window: int, hotkey: str) -> str:
    """Key of the delta that miner ``hotkey`` uploads for ``window``."""
    return f"{delta_prefix(window)}{validate_hotkey(hotkey)}.gdlt"


def aggregate_key(window: int) -> str:
    """Key of the outer update that defines theta_{window+1}: the one every node applied (a mirror)."""
    return f"aggregates/{_check_window(window):010d}.gagg"


def proposal_key(window: int) -> str:
    """Key of a validator's own proposed outer update for ``window`` (``protocol.follow`` picks one)."""
    return f"proposals/{_check_window(window):010d}.gagg"


def checkpoint_key(window: int) -> str:
    """Key of the full model checkpoint taken after ``window``."""
    return f"checkpoints/{_check_window(window):010d}.safetensors"


def parse_delta_key(key: str) -> tuple[int, str]:
    """``(window, hotkey)`` of a key built by ``delta_key``; ``ValueError`` for anything else."""
    match = _DELTA_KEY.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise ValueError(f"not a delta key: {key!r} (expected deltas/<10-digit window>/<hotkey>.gdlt)")
    return int(match.group(1)), match.group(2)


def window_of_delta_key(key: str) -> int:
    """Window of a key built by ``delta_key``; ``ValueError`` for anything else."""
    return parse_delta_key(key)[0]


# --------------------------------------------------------------------------- shared helpers


def _check_max_bytes(max_bytes: int) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int, not {max_bytes!r}")
    return max_bytes


def _read_capped(read: Callable[[int], bytes], max_bytes: int, backend: str, key: str) -> bytes:
    """Read a stream to its end, raising ``ObjectTooLarge`` once more than ``max_bytes`` arrive.

    At most ``max_bytes + 1`` bytes are ever requested, whatever the stream claims.
    """
    parts: builtins.list[bytes] = []
    received = 0
    while True:
        chunk = read(min(CHUNK_BYTES, max_bytes + 1 - received))
        if not chunk:
            return b"".join(parts)
        received += len(chunk)
        if received > max_bytes:
            raise ObjectTooLarge(backend, key, max_bytes)
        parts.append(chunk)


# --------------------------------------------------------------------------- local directory


class LocalStorage:
    """A directory as an object store: key ``a/b.c`` is the file ``<root>/a/b.c``.

    Writes go to a temporary file in the target directory, are fsynced and then renamed
    over the target, so readers never see a partial object. ``uploaded_at`` is the file's
    mtime, stamped by this host's clock when the write completes; the local store is for
    development, where miner and validator share that host.
    """

    _TMP_SUFFIX = "~tmp"  # "~" is not a key character, so a temp file is never listed as an object

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root)
        self.name = f"file://{path}"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(self.name, None, f"cannot create the store directory: {exc}") from exc
        self.root = path.resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        """The file for ``key``; ``ValueError`` if the key is unsafe or resolves outside the root."""
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"{self.name}: key {key!r} resolves outside the store")
        return path

    def _error(self, key: str | None, action: str, exc: OSError) -> StorageError:
        """A file-system failure: a key clashing with a directory is the caller's problem, the rest the store's."""
        if isinstance(exc, IsADirectoryError | NotADirectoryError | FileExistsError):
            return StorageError(
                self.name, key, f"{action} failed: the key clashes with another object's path ({exc})"
            )
        return StorageUnavailable(self.name, key, f"{action} failed: {exc}")

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(key=key, size=st.st_size, uploaded_at=st.st_mtime)

    def put(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        try:
            fd, tmp = self._temp_file(path)
        except OSError as exc:
            raise self._error(key, "creating the object", exc) from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fchmod(handle.fileno(), 0o644)
                os.fsync(handle.fileno())
                st = os.fstat(handle.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._error(key, "writing the object", exc) from exc
        return self._info(key, st)

    def _temp_file(self, path: Path) -> tuple[int, str]:
        """Create the parents and a temp file beside ``path`` (retrying if ``delete`` pruned a parent)."""
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=self._TMP_SUFFIX)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, key: str, *, max_bytes: int) -> bytes:
        _check_max_bytes(max_bytes)
        with self._open(key) as handle:
            if os.fstat(handle.fileno()).st_size > max_bytes:
                raise ObjectTooLarge(self.name, key, max_bytes)
            try:
                return _read_capped(handle.read, max_bytes, self.name, key)
            except OSError as exc:
                raise self._error(key, "reading the object", exc) from exc

    def _open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - returned to the caller's with-block
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(self.name, key) from None
        except OSError as exc:
            raise self._error(key, "opening the object", exc) from exc
        if not stat_mod.S_ISREG(os.fstat(handle.fileno()).st_mode):
            handle.close()
            raise ObjectNotFound(self.name, key)
        return handle

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(self.name, key) from None
        except OSError as exc:
            raise self._error(key, "stat", exc) from exc
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFound(self.name, key)
        return self._info(key, st)

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        validate_prefix(prefix)
        base = self.root / prefix.rpartition("/")[0]
        found: builtins.list[ObjectInfo] = []
        for key, path in self._walk(base):
            if not key.startswith(prefix) or _key_problem(key) is not None:
                continue
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue  # deleted while listing
            if stat_mod.S_ISREG(st.st_mode):
                found.append(self._info(key, st))
        return sorted(found, key=lambda info: info.key)

    def _walk(self, base: Path) -> Iterator[tuple[str, Path]]:
        """``(key, path)`` of every file under ``base`` (symlinked directories are not followed)."""
        if not base.resolve().is_relative_to(self.root):
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = Path(dirpath, name)
                yield path.relative_to(self.root).as_posix(), path

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            if path.is_file():
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._error(key, "deleting the object", exc) from exc
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove now-empty directories between ``directory`` and the root."""
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- URLs

_URL_FORMS = (
    "expected 'file:///absolute/dir', 'file://relative/dir' or "
    "'s3://bucket[/prefix][?endpoint=http://host:port&region=name&path_style=1]'"
)
_S3_OPTIONS = frozenset({"endpoint", "region", "path_style"})
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class S3Location:
    """An ``s3://`` URL taken apart and checked; nothing is contacted."""

    bucket: str
    prefix: str
    endpoint: str | None
    region: str | None
    path_style: bool


def parse_s3_url(url: str) -> S3Location:
    """The parts of ``s3://bucket[/prefix][?options]``; ``ValueError`` for anything malformed."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3":
        raise ValueError(f"unsupported storage URL {url!r}; {_URL_FORMS}")
    if "@" in parts.netloc:
        raise ValueError(
            f"storage URL {url!r}: credentials do not belong in the URL; "
            "set GAUNTLET_S3_ACCESS_KEY_ID / GAUNTLET_S3_SECRET_ACCESS_KEY"
        )
    if not _BUCKET.fullmatch(parts.netloc):
        raise ValueError(f"storage URL {url!r} has no valid bucket name; {_URL_FORMS}")
    if parts.fragment:
        raise ValueError(f"storage URL {url!r} may not have a fragment; {_URL_FORMS}")
    prefix = parts.path.strip("/")
    if prefix:
        validate_key(prefix)
    options = _s3_options(url, parts.query)
    return S3Location(parts.netloc, prefix, options.get("endpoint") or None, options.get("region") or None,
                      _flag(url, options.get("path_style", "")))


def _s3_options(url: str, query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _S3_OPTIONS:
            raise ValueError(f"storage URL {url!r}: unknown option {name!r}; accepted: {sorted(_S3_OPTIONS)}")
        if name in options:
            raise ValueError(f"storage URL {url!r}: option {name!r} given twice")
        options[name] = value
    return options


def _flag(url: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"storage URL {url!r}: path_style must be 1 or 0, not {value!r}")
