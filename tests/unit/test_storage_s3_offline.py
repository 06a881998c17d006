"""S3Storage without a server: ranged reads that count bytes, retries with backoff, error mapping.

A scripted fake stands in for boto3's client, so these run in milliseconds; the same backend
against a real S3-protocol server is ``tests/integration/test_storage_s3.py``.
"""

from __future__ import annotations

import datetime as dt
import io
import sys
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

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


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


S3With = Callable[[FakeS3Client, list[float]], S3Storage]


@pytest.fixture(scope="module")
def _offline_s3() -> S3Storage:
    # Building a boto3 client takes most of a second; the fake-client tests share one store.
    return S3Storage("bucket", "pre", access_key="a", secret_key="b", region="us-east-1")


@pytest.fixture
def s3_with(_offline_s3: S3Storage) -> S3With:
    def build(client: FakeS3Client, sleeps: list[float]) -> S3Storage:
        _offline_s3._client = client
        _offline_s3._sleep = sleeps.append
        return _offline_s3

    return build


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


def test_s3_retries_transient_errors_with_backoff(s3_with: S3With) -> None:
    sleeps: list[float] = []
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    client = FakeS3Client(head_object=[refused, _client_error("SlowDown", 503), HEAD])
    info = s3_with(client, sleeps).stat("k")
    assert info == ObjectInfo("k", 3, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp())
    assert client.calls == ["head_object"] * 3
    assert len(sleeps) == 2 and 0.125 <= sleeps[0] <= 0.25 and 0.25 <= sleeps[1] <= 0.5


def test_s3_gives_up_with_storage_unavailable(s3_with: S3With) -> None:
    sleeps: list[float] = []
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    client = FakeS3Client(head_object=[refused] * 4)
    with pytest.raises(
        StorageUnavailable, match=r"s3://bucket/pre/ key 'k': stat failed after 4 attempt"
    ) as raised:
        s3_with(client, sleeps).stat("k")
    assert isinstance(raised.value.__cause__, EndpointConnectionError)
    assert len(client.calls) == 4 and len(sleeps) == 3


@pytest.mark.parametrize(
    ("error", "expected", "message"),
    [
        (_client_error("404", 404), ObjectNotFound, "no such object"),
        (_client_error("NoSuchKey", 404), ObjectNotFound, "no such object"),
        (_client_error("NoSuchBucket", 404), StorageError, "bucket 'bucket' does not exist"),
        (_client_error("AccessDenied", 403), AccessDenied, "AccessDenied"),  # a StorageError
    ],
)
def test_s3_permanent_errors_are_not_retried(
    s3_with: S3With, error: ClientError, expected: type, message: str
) -> None:
    sleeps: list[float] = []
    client = FakeS3Client(head_object=[error])
    with pytest.raises(expected, match=message) as raised:
        s3_with(client, sleeps).stat("k")
    assert type(raised.value) is expected
    assert client.calls == ["head_object"] and sleeps == []


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
