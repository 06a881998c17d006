"""S3Storage against a real S3-protocol server (moto's, in-process, on loopback).

The backend contract from ``tests/unit/test_storage.py`` runs here unchanged, over HTTP,
with the same signing, streaming and error paths a deployment against R2 or MinIO uses.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from protocol.storage import (
    AccessDenied,
    Storage,
    StorageError,
    StorageUnavailable,
    delta_key,
)
from protocol.storage_open import open_storage
from protocol.storage_s3 import S3Storage
from tests.unit.test_storage import HOTKEY, StorageContract

pytestmark = pytest.mark.integration

CREDENTIALS = {"access_key": "testing", "secret_key": "testing", "region": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _direct_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy configured on the host must not intercept the loopback server.

    The server is on loopback, so a *miner's* store here is readable only with the
    development flag, which this module sets as an operator would.
    """
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE", "1")


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"gauntlet-{uuid.uuid4().hex[:16]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    return name


def _s3(endpoint: str, bucket: str, prefix: str = "run-1") -> S3Storage:
    return S3Storage(bucket, prefix, endpoint_url=endpoint, path_style=True, **CREDENTIALS)


class TestS3StorageContract(StorageContract):
    @pytest.fixture
    def store(self, endpoint: str, bucket: str) -> Storage:
        return _s3(endpoint, bucket)


def test_prefixes_isolate_runs(endpoint: str, bucket: str) -> None:
    one, two, whole = (
        _s3(endpoint, bucket, "run-1"),
        _s3(endpoint, bucket, "run-2/"),
        _s3(endpoint, bucket, ""),
    )
    key = delta_key(4, HOTKEY)
    one.put(key, b"one")
    two.put(key, b"two")
    assert one.get(key, max_bytes=10) == b"one" and two.get(key, max_bytes=10) == b"two"
    assert [i.key for i in one.list("")] == [key]
    assert sorted(i.key for i in whole.list("")) == [f"run-1/{key}", f"run-2/{key}"]


def test_uploaded_at_is_the_stores_last_modified(endpoint: str, bucket: str) -> None:
    store = _s3(endpoint, bucket)
    info = store.put("k", b"abc")
    raw = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).head_object(Bucket=bucket, Key="run-1/k")
    assert info.uploaded_at == float(int(raw["LastModified"].timestamp()))
    assert store.stat("k") == info == store.list("")[0]


def test_open_storage_url_reaches_the_server(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GAUNTLET_S3_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("GAUNTLET_S3_SECRET_ACCESS_KEY", "testing")
    store = open_storage(f"s3://{bucket}/via/url?endpoint={endpoint}&region=us-east-1&path_style=1")
    store.put("x", b"payload")
    assert _s3(endpoint, bucket, "via/url").get("x", max_bytes=100) == b"payload"


def test_missing_bucket_is_a_storage_error(endpoint: str) -> None:
    store = _s3(endpoint, "gauntlet-no-such-bucket")
    with pytest.raises(StorageError, match="does not exist") as raised:
        store.put("k", b"x")
    assert type(raised.value) is StorageError


def test_unreachable_endpoint_is_storage_unavailable() -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Storage("bucket", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=3, **CREDENTIALS)
    connects: list[str] = []  # each try botocore makes, retries included, is one send
    store._client.meta.events.register("before-send.s3", lambda request, **_: connects.append(request.url))
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=rf"127\.0\.0\.1:{port}.*after 3 attempt") as raised:
        store.get("k", max_bytes=10)
    assert raised.value.key == "k" and len(connects) == 3
    assert time.monotonic() - started < 10


def test_a_miner_store_on_loopback_is_read_unsigned_only_with_the_dev_flag(endpoint: str, bucket: str) -> None:
    from protocol.peer_storage import EndpointPolicy, StorageRefused, open_peer_storage
    from protocol.settings import load_settings

    key = f"miner/{delta_key(4, HOTKEY)}"
    owner = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                         region_name="us-east-1")
    owner.put_object(Bucket=bucket, Key=key, Body=b"signed delta", ACL="public-read")  # miners publish public-read
    owner.put_object(Bucket=bucket, Key=f"miner/{delta_key(5, HOTKEY)}", Body=b"private")
    url = f"s3://{bucket}/miner?endpoint={endpoint}&region=us-east-1&path_style=1"
    policy = EndpointPolicy(allow_private=load_settings().allow_private_miner_storage)
    assert policy.allow_private
    store = open_peer_storage(url, policy)
    assert store.get(delta_key(4, HOTKEY), max_bytes=100) == b"signed delta"
    with pytest.raises(AccessDenied):  # unsigned: what only the owner's keys may read stays unread
        store.get(delta_key(5, HOTKEY), max_bytes=100)
    with pytest.raises(StorageRefused, match="private address"):
        open_peer_storage(url, EndpointPolicy())

