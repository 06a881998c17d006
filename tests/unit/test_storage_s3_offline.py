"""S3Storage without a server: ranged reads that count bytes, retries with backoff, error mapping.

Reads that count bytes use a scripted fake in place of boto3's client. Retries and error
mapping use the real client with scripted HTTP responses (a ``before-send`` handler answers
instead of the network), so botocore's own retry mode is what runs. All in milliseconds; the
same backend against a real S3-protocol server is ``tests/integration/test_storage_s3.py``.
"""

from __future__ import annotations

import datetime as dt
import io
import sys
from collections.abc import Callable, Iterator
from typing import Any

import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError
from urllib3.exceptions import ProtocolError

from protocol.storage import (
    AccessDenied,
    ObjectInfo,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageUnavailable,
)
from protocol.storage_s3 import S3Storage


class FakeS3Client:
    """Stands in for boto3's client: replays scripted outcomes per operation and records calls."""

    def __init__(self, **script: list[Any]) -> None:
        self.script = script
        self.calls: list[str] = []

    def _next(self, op: str) -> Any:
        self.calls.append(op)
        outcome = self.script[op].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def head_object(self, **_: Any) -> Any:
        return self._next("head_object")

    def get_object(self, **_: Any) -> Any:
        return self._next("get_object")


class RecordingBody(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requested: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.requested.append(-1 if size is None else size)
        return super().read(size)


class _Raw:
    """An HTTP body as botocore reads it (``stream()`` for parsed replies, ``read()`` streamed)."""

    def __init__(self, data: bytes, *, break_after: int | None = None) -> None:
        self._body = io.BytesIO(data)
        self._break_after = break_after

    def stream(self, **_: Any) -> Any:
        yield self._body.read()

    def read(self, size: int | None = None) -> bytes:
        if self._break_after is not None and self._body.tell() >= self._break_after:
            raise ProtocolError("Connection broken: connection reset by peer")
        return self._body.read(size)

    def close(self) -> None:
        self._body.close()


def _reply(
    status: int, code: str = "", *, headers: dict[str, str] | None = None, body: bytes | _Raw = b""
) -> Any:
    if code:
        body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>msg</Message></Error>".encode()
    return status, headers or {}, body


HEAD_OK = _reply(200, headers={"Content-Length": "3", "Last-Modified": "Tue, 02 Jan 2024 03:04:05 GMT"})


class Wire:
    """Answers the real client's requests from a script of replies and exceptions; records them."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.sent: list[str] = []

    def __call__(self, request: Any, **_: Any) -> AWSResponse:
        self.sent.append(request.method)
        outcome = self.script.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome  # botocore treats it as the transport's error (a refused connection)
        status, headers, body = outcome
        raw = body if isinstance(body, _Raw) else _Raw(body)
        return AWSResponse(request.url, status, headers, raw)


S3With = Callable[[FakeS3Client, list[float]], S3Storage]


@pytest.fixture(scope="module")
def _real_client_s3() -> tuple[S3Storage, Wire]:
    # Building a boto3 client takes most of a second; the tests share one store and its wire.
    store = S3Storage("bucket", "pre", access_key="a", secret_key="b", region="us-east-1")
    wire = Wire()
    store._client.meta.events.register("before-send.s3", wire)
    return store, wire


@pytest.fixture
def wired(_real_client_s3: tuple[S3Storage, Wire], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``wired(*replies)`` -> (store, wire, sleeps): botocore's retry sleeps recorded, not slept."""
    store, wire = _real_client_s3
    sleeps: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", type("Clock", (), {"sleep": staticmethod(sleeps.append)}))

    def build(*replies: Any) -> tuple[S3Storage, Wire, list[float]]:
        wire.script, wire.sent = list(replies), []
        return store, wire, sleeps

    return build


@pytest.fixture
def s3_with(_real_client_s3: tuple[S3Storage, Wire]) -> Iterator[S3With]:
    store, _ = _real_client_s3
    real = store._client

    def build(client: FakeS3Client, sleeps: list[float]) -> S3Storage:
        store._client = client
        return store

    yield build
    store._client = real


HEAD = {"ContentLength": 3, "LastModified": dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)}


def test_s3_get_counts_bytes_despite_a_lying_length(s3_with: S3With) -> None:
    body = RecordingBody(b"x" * 100)
    store = s3_with(FakeS3Client(get_object=[{"ContentLength": 3, "Body": body}]), [])
    with pytest.raises(ObjectTooLarge):
        store.get("k", max_bytes=10)
    assert sum(body.requested) <= 11 and body.closed


def test_s3_get_rejects_a_declared_length_before_reading(s3_with: S3With) -> None:
    body = RecordingBody(b"x" * 100)
    store = s3_with(FakeS3Client(get_object=[{"ContentLength": 100, "Body": body}]), [])
    with pytest.raises(ObjectTooLarge):
        store.get("k", max_bytes=10)
    assert body.requested == [] and body.closed


def test_s3_retries_transient_errors_with_botocore_backoff(wired: Callable[..., Any]) -> None:
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    store, wire, sleeps = wired(refused, _reply(503, "SlowDown"), _reply(500, "InternalError"), HEAD_OK)
    info = store.stat("k")
    assert info == ObjectInfo("k", 3, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp())
    assert wire.sent == ["HEAD"] * 4 and len(sleeps) == 3
    # botocore's standard mode: rand * base * 2**i, base 50 ms, or 1 s when throttled (SlowDown).
    assert 0 <= sleeps[0] <= 0.05 and 0 <= sleeps[1] <= 2 and 0 <= sleeps[2] <= 0.2


def test_s3_gives_up_with_storage_unavailable(wired: Callable[..., Any]) -> None:
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    store, wire, sleeps = wired(*[refused] * 4)
    with pytest.raises(
        StorageUnavailable, match=r"s3://bucket/pre/ key 'k': stat failed after 4 attempt"
    ) as raised:
        store.stat("k")
    assert isinstance(raised.value.__cause__, EndpointConnectionError)
    assert len(wire.sent) == 4 and len(sleeps) == 3


def test_s3_a_body_that_breaks_off_is_fetched_again(wired: Callable[..., Any]) -> None:
    broken = _Raw(b"x" * 100, break_after=10)
    store, wire, _sleeps = wired(_reply(200, headers={"Content-Length": "100"}, body=broken),
                                 _reply(200, headers={"Content-Length": "100"}, body=b"y" * 100))
    assert store.get("k", max_bytes=1000) == b"y" * 100
    assert wire.sent == ["GET", "GET"]


def test_s3_a_body_that_keeps_breaking_off_is_unavailable(wired: Callable[..., Any]) -> None:
    replies = [_reply(200, headers={"Content-Length": "100"}, body=_Raw(b"x" * 100, break_after=10))
               for _ in range(4)]
    store, wire, _sleeps = wired(*replies)
    with pytest.raises(StorageUnavailable, match="get failed"):
        store.get("k", max_bytes=1000)
    assert wire.sent == ["GET"] * 4  # max_attempts fetches in all


@pytest.mark.parametrize(
    ("op", "status", "code", "expected", "message"),
    [
        ("stat", 404, "", ObjectNotFound, "no such object"),  # HEAD: a status, no error body
        ("get", 404, "NoSuchKey", ObjectNotFound, "no such object"),
        ("get", 404, "NoSuchBucket", StorageError, "bucket 'bucket' does not exist"),
        ("get", 403, "AccessDenied", AccessDenied, "AccessDenied"),  # a StorageError
    ],
)
def test_s3_permanent_errors_are_not_retried(
    wired: Callable[..., Any], op: str, status: int, code: str, expected: type, message: str
) -> None:
    store, wire, sleeps = wired(_reply(status, code))
    with pytest.raises(expected, match=message) as raised:
        store.stat("k") if op == "stat" else store.get("k", max_bytes=10)
    assert type(raised.value) is expected
    assert len(wire.sent) == 1 and sleeps == []


def test_s3_guard_refusal_is_neither_retried_nor_wrapped(wired: Callable[..., Any]) -> None:
    refusal = StorageError("policy", None, "refused: private address")
    store, wire, sleeps = wired(refusal)
    with pytest.raises(StorageError) as raised:
        store.stat("k")
    assert raised.value is refusal and len(wire.sent) == 1 and sleeps == []


def test_s3_credentials_come_in_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GAUNTLET_S3_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("GAUNTLET_S3_ACCESS_KEY_ID", "only-the-id")
    with pytest.raises(ValueError, match="both an access key and a secret key"):
        S3Storage("bucket")
    monkeypatch.setenv("GAUNTLET_S3_SECRET_ACCESS_KEY", "secret")
    store = S3Storage("bucket")
    creds = store._client._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("only-the-id", "secret")
    assert "secret" not in repr(store) and "secret" not in store.name


def test_s3_without_boto3_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ImportError, match=r"gauntlet\[s3\]"):
        S3Storage("bucket")
