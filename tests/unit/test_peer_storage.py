"""The policy for stores that miners name: schemes, hosts, every resolved address, the dev flag.

No network: host names are judged with an injected resolver.

Run: ``pytest tests/unit/test_peer_storage.py -q``
"""

from __future__ import annotations

import pytest

from protocol.peer_storage import (
    ACCESS_DENIED,
    NOT_FOUND,
    REFUSED_HOST,
    REFUSED_HTTP,
    REFUSED_PRIVATE,
    REFUSED_SCHEME,
    REFUSED_URL,
    STORE_ERROR,
    TOO_LARGE,
    UNREACHABLE,
    EndpointPolicy,
    StorageRefused,
    failure_category,
    open_peer_storage,
)
from protocol.storage import (
    AccessDenied,
    LocalStorage,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageUnavailable,
)

DNS = {
    "s3.example-store.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    "rebind.example.com": ["93.184.216.34", "10.1.2.3"],  # one private answer is enough to refuse
    "metadata.example.com": ["169.254.169.254"],
    "v6loop.example.com": ["::1"],
}


def resolve(host: str) -> list[str]:
    return DNS.get(host, [])


STRICT = EndpointPolicy(resolver=resolve)
DEV = EndpointPolicy(allow_private=True, resolver=resolve)


def _refusal(policy: EndpointPolicy, url: str) -> str | None:
    try:
        policy.check_store_url(url)
    except StorageRefused as exc:
        return exc.category
    return None


@pytest.mark.parametrize(
    ("url", "category"),
    [
        ("s3://bucket/p", None),  # AWS itself: the request guard judges the host the client computes
        ("s3://bucket?endpoint=https://s3.example-store.com", None),
        ("s3://bucket?endpoint=https://93.184.216.34:8443", None),
        ("s3://bucket?endpoint=https://10.0.0.7", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://169.254.169.254", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://[::1]:9000", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://[::ffff:127.0.0.1]", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://[fd00::1]", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://100.64.0.1", REFUSED_PRIVATE),  # shared (CGNAT) space
        ("s3://bucket?endpoint=https://0.0.0.0", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://224.0.0.251", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=http://127.0.0.1:9000", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://metadata.example.com", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://rebind.example.com", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://v6loop.example.com", REFUSED_PRIVATE),
        ("s3://bucket?endpoint=https://localhost:9000", REFUSED_HOST),
        ("s3://bucket?endpoint=https://2130706433", REFUSED_HOST),  # 127.0.0.1 spelled as one number
        ("s3://bucket?endpoint=https://0x7f.1", REFUSED_HOST),
        ("s3://bucket?endpoint=https://minio", REFUSED_HOST),  # a search domain would complete it
        ("s3://bucket?endpoint=http://s3.example-store.com", REFUSED_HTTP),
        ("s3://bucket?endpoint=ftp://s3.example-store.com", REFUSED_SCHEME),
        ("s3://bucket?endpoint=https://s3.example-store.com:99999", REFUSED_URL),
        ("s3://bucket?endpont=https://x.com", REFUSED_URL),
        ("file:///etc", REFUSED_SCHEME),
        ("http://s3.example-store.com/bucket", REFUSED_SCHEME),
        ("/etc/passwd", REFUSED_SCHEME),
    ],
)
def test_strict_policy(url: str, category: str | None) -> None:
    assert _refusal(STRICT, url) == category


def test_a_name_that_does_not_resolve_is_unreachable_not_refused() -> None:
    with pytest.raises(StorageUnavailable) as raised:
        STRICT.check_store_url("s3://bucket?endpoint=https://nowhere.example.org")
    assert failure_category(raised.value) == UNREACHABLE


@pytest.mark.parametrize("url", ["s3://bkt?endpoint=http://127.0.0.1:9000", "s3://bkt?endpoint=http://localhost:1",
                                 "s3://bkt?endpoint=https://[::1]", "file:///tmp/store"])
def test_dev_flag_allows_what_local_networks_use(url: str) -> None:
    assert _refusal(DEV, url) is None


def test_dev_flag_still_refuses_unknown_schemes() -> None:
    assert _refusal(DEV, "gs://bucket") == REFUSED_SCHEME
    assert _refusal(DEV, "s3://bkt?endpoint=ftp://127.0.0.1") == REFUSED_SCHEME


def test_request_guard_judges_the_url_the_client_computed() -> None:
    """A virtual-hosted bucket name or redirect can change the host; each request is checked again."""
    policy = EndpointPolicy(resolver=lambda host: ["10.9.9.9"] if host.startswith("evil.") else ["93.184.216.34"])
    policy.check_request_url("https://good.s3.amazonaws.com/key")
    with pytest.raises(StorageRefused) as raised:
        policy.check_request_url("https://evil.s3.amazonaws.com/key")
    assert raised.value.category == REFUSED_PRIVATE


def test_peer_s3_stores_are_unsigned_and_guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore import UNSIGNED

    monkeypatch.setenv("GAUNTLET_S3_ACCESS_KEY_ID", "validator-own-key")
    monkeypatch.setenv("GAUNTLET_S3_SECRET_ACCESS_KEY", "validator-own-secret")
    store = open_peer_storage("s3://bucket/p?endpoint=https://s3.example-store.com&region=auto", STRICT)
    assert store._client.meta.config.signature_version is UNSIGNED  # type: ignore[attr-defined]
    assert store._client._request_signer._credentials is None  # type: ignore[attr-defined]


def test_file_stores_open_only_with_the_dev_flag(tmp_path: object) -> None:
    with pytest.raises(StorageRefused):
        open_peer_storage(f"file://{tmp_path}", STRICT)
    assert isinstance(open_peer_storage(f"file://{tmp_path}", DEV), LocalStorage)


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (StorageRefused(REFUSED_PRIVATE, "host '10.0.0.1'"), REFUSED_PRIVATE),
        (ObjectNotFound("s3://b at http://10.0.0.1:22", "k"), NOT_FOUND),
        (ObjectTooLarge("b", "k", 10), TOO_LARGE),
        (AccessDenied("b", "k", "get failed: AccessDenied (HTTP 403)"), ACCESS_DENIED),
        (StorageUnavailable("b", "k", "Connection refused by 10.0.0.1:6379"), UNREACHABLE),
        (StorageError("b", "k", "InvalidArgument (HTTP 400) internal banner"), STORE_ERROR),
        (ConnectionRefusedError("[Errno 111] Connection refused"), UNREACHABLE),
        (ValueError("Invalid endpoint: http://x"), STORE_ERROR),
    ],
)
def test_failures_become_fixed_phrases(exc: BaseException, category: str) -> None:
    assert failure_category(exc) == category
