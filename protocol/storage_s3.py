"""The S3-protocol backend of ``protocol.storage`` (AWS S3, Cloudflare R2, MinIO), via boto3.

Split from ``protocol.storage`` so that the contract, the key layout and the local backend
stay readable on their own (``protocol.storage_open`` opens one from a URL).

Two options exist for stores that *someone else* named (a miner's commitment, see
``protocol.peer_storage``): ``anonymous`` sends unsigned requests, so the validator's own
credentials never reach a host a miner chose, and ``request_guard`` sees the URL of every
request just before it is sent (after redirects and virtual-host rewriting), so a policy can
refuse a destination the client itself computed.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from protocol.storage import (
    AccessDenied,
    ObjectInfo,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageUnavailable,
    _check_max_bytes,
    _key_problem,
    _read_capped,
    validate_key,
    validate_prefix,
)

__all__ = ["S3Storage"]

T = TypeVar("T")

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


class _BodyBroken(OSError):
    """A response body that broke off mid-read (transient; :meth:`S3Storage.get` fetches again)."""


def _client_config(
    config_cls: Any,
    path_style: bool,
    connect_timeout_s: float,
    read_timeout_s: float,
    max_attempts: int,
    *,
    unsigned: bool = False,
) -> Any:
    from botocore import UNSIGNED

    options: dict[str, Any] = {
        "signature_version": UNSIGNED if unsigned else "s3v4",
        "s3": {"addressing_style": "path" if path_style else "auto"},
        # botocore's standard mode: connection errors, 5xx, throttling and RequestTimeout are
        # retried with capped, jittered exponential backoff (and a per-client retry quota, so
        # a store that is down does not multiply our traffic). Counts include the first try.
        "retries": {"mode": "standard", "total_max_attempts": max_attempts},
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
    retried by botocore's standard retry mode, ``max_attempts`` tries per request in all;
    after that ``StorageUnavailable`` is raised. botocore retries requests, not a response
    body that breaks off while being read, so ``get`` fetches such an object again itself, as
    many times. Credentials come from the arguments, else from
    ``GAUNTLET_S3_ACCESS_KEY_ID`` / ``GAUNTLET_S3_SECRET_ACCESS_KEY``, else from boto3's usual
    chain (``AWS_*`` variables, config files). R2 and MinIO usually need ``endpoint_url``;
    MinIO also ``path_style=True``.

    ``anonymous=True`` signs nothing and loads no credentials at all (public-read stores
    named by peers); ``request_guard(url)`` is called before every HTTP request and may
    raise a ``StorageError`` to stop it (the error reaches the caller unchanged, unretried).
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
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        anonymous: bool = False,
        request_guard: Callable[[str], None] | None = None,
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
        self._attempts = threading.local()  # tries of this thread's last request (errors name them)
        self._max_attempts = max_attempts
        access, secret = (None, None) if anonymous else _credentials(access_key, secret_key)
        config = _client_config(
            config_cls, path_style, connect_timeout_s, read_timeout_s, max_attempts, unsigned=anonymous
        )
        with _SESSION_LOCK:  # boto3 sessions are not thread-safe; clients are
            self._client = _shared_session(boto3).client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access,
                aws_secret_access_key=secret,
                config=config,
            )
        # botocore decides each retry on "needs-retry" and passes the attempt number; noting it
        # (and deciding nothing: None) lets an error say how many tries were made.
        self._client.meta.events.register("needs-retry.s3", self._note_attempt)
        if request_guard is not None:
            self._client.meta.events.register("before-send.s3", _guard_handler(request_guard))

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
                try:
                    return _read_capped(body.read, max_bytes, self.name, key)
                except Exception as exc:
                    if self._is_transient(exc):
                        raise _BodyBroken(str(exc)) from exc
                    raise
            finally:
                body.close()

        # botocore retries requests, not a body that breaks off while it is read: that one
        # (a miner's delta over a flaky link) is fetched again, up to the same number of tries.
        for attempt in range(1, self._max_attempts + 1):
            try:
                return self._call("get", key, fetch)
            except StorageUnavailable as exc:
                if attempt == self._max_attempts or not isinstance(exc.__cause__, _BodyBroken):
                    raise
        raise AssertionError("unreachable")

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

    def _note_attempt(self, attempts: int = 1, **_: Any) -> None:
        self._attempts.last = attempts

    def _call(self, op: str, key: str | None, fn: Callable[[], T]) -> T:
        """Run ``fn`` (botocore retries its requests) and translate what still fails."""
        self._attempts.last = 1
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:
            if self._is_transient(exc):
                raise StorageUnavailable(
                    self.name, key, f"{op} failed after {self._attempts.last} attempt(s): {exc}"
                ) from exc
            translated = self._translate(op, key, exc)
            if translated is exc:
                raise
            raise translated from exc

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
            if status in (401, 403):
                return AccessDenied(self.name, key, f"{op} failed: {code} (HTTP {status})")
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


def _guard_handler(guard: Callable[[str], None]) -> Callable[..., None]:
    """A botocore ``before-send`` handler that shows ``guard`` each request's final URL.

    Returning None lets botocore send the request; an exception raised by ``guard`` aborts
    it before any connection is made.
    """

    def before_send(request: Any, **_: Any) -> None:
        guard(str(request.url))

    return before_send
