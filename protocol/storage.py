"""Object storage for windows' artefacts: the key layout, the ``Storage`` contract and its backends.

This module owns where miners' deltas, validators' aggregates and checkpoints live
(``delta_key`` and friends), which keys are safe, and two backends behind one contract:
``LocalStorage`` (a directory; development and the local network) and ``S3Storage``
(AWS S3, Cloudflare R2, MinIO). ``open_storage`` turns a settings URL into one of them.

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
  ``StorageUnavailable``) whose messages name the backend and key, so callers can tell
  "the miner did not upload" from "the store is down" from "the upload is abusive".
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import os
import random
import re
import stat as stat_mod
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "MAX_KEY_LENGTH",
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectTooLarge",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "aggregate_key",
    "checkpoint_key",
    "delta_key",
    "delta_prefix",
    "fsync_dir",
    "open_storage",
    "parse_delta_key",
    "validate_hotkey",
    "validate_key",
    "validate_prefix",
    "window_of_delta_key",
]

T = TypeVar("T")

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


# --------------------------------------------------------------------------- S3 and compatibles

_ENV_ACCESS_KEY = "GAUNTLET_S3_ACCESS_KEY_ID"
_ENV_SECRET_KEY = "GAUNTLET_S3_SECRET_ACCESS_KEY"
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "InternalError", "ServiceUnavailable"}
)


def _import_boto3() -> tuple[Any, Any, Any]:
    """``(boto3, botocore.config.Config, botocore.exceptions)``, or a clear ImportError."""
    try:
        import boto3
        import botocore.exceptions
        from botocore.config import Config
    except ModuleNotFoundError as exc:
        raise ImportError(
            "S3 storage needs boto3, which is not installed: pip install 'gauntlet[s3]'"
        ) from exc
    return boto3, Config, botocore.exceptions


_SESSION_LOCK = threading.Lock()
_SESSION: Any = None


def _shared_session(boto3: Any) -> Any:
    """One boto3 session per process: it caches the S3 service model, making each client cheap."""
    global _SESSION
    if _SESSION is None:
        _SESSION = boto3.session.Session()
    return _SESSION


def _client_config(config_cls: Any, path_style: bool, connect_timeout_s: float, read_timeout_s: float) -> Any:
    options: dict[str, Any] = {
        "signature_version": "s3v4",
        "s3": {"addressing_style": "path" if path_style else "auto"},
        "retries": {"total_max_attempts": 1},  # S3Storage retries itself, around whole operations
        "connect_timeout": connect_timeout_s,
        "read_timeout": read_timeout_s,
    }
    # botocore >= 1.36 adds CRC checksums to every request by default, which some S3-compatible
    # stores reject; Content-MD5 (sent by put) already protects uploads.
    if "request_checksum_calculation" in getattr(config_cls, "OPTION_DEFAULTS", {}):
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return config_cls(**options)


def _credentials(access_key: str | None, secret_key: str | None) -> tuple[str | None, str | None]:
    access_key = access_key or os.environ.get(_ENV_ACCESS_KEY) or None
    secret_key = secret_key or os.environ.get(_ENV_SECRET_KEY) or None
    if (access_key is None) != (secret_key is None):
        raise ValueError(
            "S3 credentials need both an access key and a secret key "
            f"(arguments or {_ENV_ACCESS_KEY} / {_ENV_SECRET_KEY})"
        )
    return access_key, secret_key


def _normalise_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{validate_key(prefix)}/" if prefix else ""


class S3Storage:
    """An S3-protocol bucket (AWS S3, Cloudflare R2, MinIO) under an optional key prefix.

    ``uploaded_at`` is the store's ``LastModified``, truncated to whole seconds so that
    ``put``, ``stat`` and ``list`` agree (HEAD reports HTTP dates, which have one-second
    resolution). Transient failures (connection errors, timeouts, 5xx, throttling) are
    retried with exponential backoff and jitter, ``max_attempts`` tries in all; after that
    ``StorageUnavailable`` is raised. Credentials come from the arguments, else from
    ``GAUNTLET_S3_ACCESS_KEY_ID`` / ``GAUNTLET_S3_SECRET_ACCESS_KEY``, else from boto3's usual
    chain (``AWS_*`` variables, config files). R2 and MinIO usually need ``endpoint_url``;
    MinIO also ``path_style=True``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        path_style: bool = False,
        max_attempts: int = 4,
        backoff_s: float = 0.25,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not bucket:
            raise ValueError("S3 storage needs a bucket name")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        boto3, config_cls, self._exceptions = _import_boto3()
        self.bucket = bucket
        self.prefix = _normalise_prefix(prefix)
        self.endpoint_url = endpoint_url
        self.name = f"s3://{bucket}/{self.prefix}" + (f" at {endpoint_url}" if endpoint_url else "")
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._sleep = sleep
        access, secret = _credentials(access_key, secret_key)
        with _SESSION_LOCK:  # boto3 sessions are not thread-safe; clients are
            self._client = _shared_session(boto3).client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access,
                aws_secret_access_key=secret,
                config=_client_config(config_cls, path_style, connect_timeout_s, read_timeout_s),
            )

    def __repr__(self) -> str:
        return (
            f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"
        )

    # -- the verbs

    def put(self, key: str, data: bytes) -> ObjectInfo:
        full = self._full(key)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()

        def put_and_head() -> dict[str, Any]:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentMD5=md5)
            return self._client.head_object(Bucket=self.bucket, Key=full)

        head = self._call("put", key, put_and_head)
        return self._info(key, head["ContentLength"], head["LastModified"])

    def get(self, key: str, *, max_bytes: int) -> bytes:
        _check_max_bytes(max_bytes)
        full = self._full(key)

        def fetch() -> bytes:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            body = response["Body"]
            try:
                declared = response.get("ContentLength")
                if declared is not None and declared > max_bytes:
                    raise ObjectTooLarge(self.name, key, max_bytes)
                return _read_capped(body.read, max_bytes, self.name, key)
            finally:
                body.close()

        return self._call("get", key, fetch)

    def stat(self, key: str) -> ObjectInfo:
        full = self._full(key)
        head = self._call("stat", key, lambda: self._client.head_object(Bucket=self.bucket, Key=full))
        return self._info(key, head["ContentLength"], head["LastModified"])

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        validate_prefix(prefix)

        def list_all() -> builtins.list[ObjectInfo]:
            found = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix) :]
                    if _key_problem(key) is None:  # objects written by other tools are not ours
                        found.append(self._info(key, obj["Size"], obj["LastModified"]))
            return found

        return sorted(self._call("list", None, list_all), key=lambda info: info.key)

    def delete(self, key: str) -> None:
        full = self._full(key)
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=full))

    # -- plumbing

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _info(self, key: str, size: int, last_modified: Any) -> ObjectInfo:
        return ObjectInfo(key=key, size=int(size), uploaded_at=float(int(last_modified.timestamp())))

    def _call(self, op: str, key: str | None, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying transient failures with backoff and translating boto errors."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                return fn()
            except StorageError:
                raise
            except Exception as exc:
                if not self._is_transient(exc):
                    translated = self._translate(op, key, exc)
                    if translated is exc:
                        raise
                    raise translated from exc
                if attempt == self._max_attempts:
                    raise StorageUnavailable(
                        self.name, key, f"{op} failed after {attempt} attempt(s): {exc}"
                    ) from exc
                delay = self._backoff_s * 2 ** (attempt - 1)
                self._sleep(delay * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _is_transient(self, exc: Exception) -> bool:
        errors = self._exceptions
        if isinstance(exc, errors.ClientError):
            code, status = _client_error_code(exc)
            return status >= 500 or status == 429 or code in _TRANSIENT_CODES
        return isinstance(
            exc, errors.ConnectionError | errors.HTTPClientError | errors.IncompleteReadError | OSError
        )

    def _translate(self, op: str, key: str | None, exc: Exception) -> Exception:
        errors = self._exceptions
        if isinstance(exc, errors.ClientError):
            code, status = _client_error_code(exc)
            if code == "NoSuchBucket":
                return StorageError(self.name, key, f"{op} failed: bucket {self.bucket!r} does not exist")
            if code in _NOT_FOUND_CODES or status == 404:
                return ObjectNotFound(self.name, key)
            message = exc.response.get("Error", {}).get("Message", "")
            return StorageError(self.name, key, f"{op} failed: {code} (HTTP {status}) {message}".rstrip())
        if isinstance(exc, errors.NoCredentialsError):
            return StorageError(
                self.name, key, f"{op} failed: no S3 credentials (set {_ENV_ACCESS_KEY} / {_ENV_SECRET_KEY})"
            )
        if isinstance(exc, errors.BotoCoreError):
            return StorageError(self.name, key, f"{op} failed: {exc}")
        return exc  # a programming error: let it surface as is


def _client_error_code(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


# --------------------------------------------------------------------------- URLs

_URL_FORMS = (
    "expected 'file:///absolute/dir', 'file://relative/dir' or "
    "'s3://bucket[/prefix][?endpoint=http://host:port&region=name&path_style=1]'"
)
_S3_OPTIONS = frozenset({"endpoint", "region", "path_style"})
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def open_storage(url: str) -> Storage:
    """The backend a settings URL names (see ``_URL_FORMS``); ``ValueError`` for anything else."""
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    scheme = scheme.lower()
    if sep and scheme == "file":
        if not rest:
            raise ValueError(f"storage URL {url!r} names no directory; {_URL_FORMS}")
        return LocalStorage(Path(rest))
    if sep and scheme == "s3":
        return _open_s3(url)
    raise ValueError(f"unsupported storage URL {url!r}; {_URL_FORMS}")


def _open_s3(url: str) -> S3Storage:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(
            f"storage URL {url!r}: credentials do not belong in the URL; set {_ENV_ACCESS_KEY} / {_ENV_SECRET_KEY}"
        )
    if not _BUCKET.fullmatch(parts.netloc):
        raise ValueError(f"storage URL {url!r} has no valid bucket name; {_URL_FORMS}")
    if parts.fragment:
        raise ValueError(f"storage URL {url!r} may not have a fragment; {_URL_FORMS}")
    options = _s3_options(url, parts.query)
    return S3Storage(
        parts.netloc,
        parts.path.strip("/"),
        endpoint_url=options.get("endpoint") or None,
        region=options.get("region") or None,
        path_style=_flag(url, options.get("path_style", "")),
    )


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
