"""Stores that peers name: the policy a validator applies before it follows a miner's URL.

A miner's on-chain commitment is attacker-chosen input. Following it naively makes the
validator a proxy into its own network (SSRF): a URL such as
``s3://b?endpoint=http://127.0.0.1:8080`` or ``...endpoint=http://169.254.169.254`` makes
the validator send requests to its loopback services or its cloud's metadata endpoint, and,
if those requests were signed, hands the validator's access key id to whoever listens. And
every error text a receipt carries tells the miner whether an internal port refused, timed
out or answered. The rules here close those holes; an operator reads them as:

* **Schemes.** Only ``s3://`` stores; ``file://`` only with the development flag
  (``GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE``). An ``endpoint=`` must be ``https://``;
  ``http://`` only with the flag.
* **Hosts.** An endpoint host must be a public IP literal or a DNS name (two or more
  labels, a top-level label starting with a letter: no ``localhost``, no bare names that a
  search domain would complete, no ``2130706433`` or ``0x7f.1`` spellings of loopback), and
  *every* address it resolves to must be globally routable: loopback, private, link-local
  (``169.254.169.254``), shared (CGNAT), multicast, reserved and unspecified addresses are
  refused, IPv6 included, and IPv6 forms that embed an IPv4 address (mapped, 6to4, NAT64)
  are judged by that address. With the flag, none of the host rules apply (local networks
  and tests run on loopback).
* **When.** Once when the store is opened and again before every request the S3 client
  sends (botocore ``before-send``), on the URL the client really computed: virtual-hosted
  bucket names, region endpoints and redirects included. A DNS answer that changes between
  check and connect (rebinding) is the remaining gap; nothing secret crosses it, see next.
* **No credentials.** Requests to peer stores are unsigned (``signature_version=UNSIGNED``):
  miners publish their deltas public-read. The validator's own keys are never loaded for a
  peer's store. (Miner-published read credentials are not supported.)
* **Fixed answers.** Every failure becomes one of a few fixed phrases
  (:func:`failure_category`) for the public receipt; the full error goes to the log only.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from protocol.storage import (
    AccessDenied,
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StorageError,
    StorageUnavailable,
    parse_s3_url,
)
from protocol.storage_open import open_storage

__all__ = [
    "ACCESS_DENIED",
    "NOT_FOUND",
    "REFUSED_HOST",
    "REFUSED_HTTP",
    "REFUSED_PRIVATE",
    "REFUSED_SCHEME",
    "REFUSED_URL",
    "STORE_ERROR",
    "TOO_LARGE",
    "UNREACHABLE",
    "EndpointPolicy",
    "StorageRefused",
    "failure_category",
    "is_public_address",
    "open_peer_storage",
    "system_resolver",
]

#: The fixed phrases a receipt may carry about a peer's store (never an exception's text).
REFUSED_SCHEME = "refused by policy: scheme"
REFUSED_HTTP = "refused by policy: not https"
REFUSED_PRIVATE = "refused by policy: private address"
REFUSED_HOST = "refused by policy: not a DNS name or public IP"
REFUSED_URL = "refused by policy: invalid URL"
UNREACHABLE = "unreachable"
NOT_FOUND = "not found"
TOO_LARGE = "too large"
ACCESS_DENIED = "access denied"
STORE_ERROR = "store error"

#: host -> the addresses it resolves to (an empty result means "does not resolve").
Resolver = Callable[[str], Iterable[str]]

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_TLD = re.compile(r"[a-z][a-z0-9-]*")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class StorageRefused(StorageError):
    """The policy refused a peer's store or request before anything was sent; ``category`` is fixed text."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__("policy", None, f"{category}: {detail}")
        self.category = category


def system_resolver(host: str) -> list[str]:
    """Every address the system resolver returns for ``host`` (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise StorageUnavailable("policy", None, f"cannot resolve {host!r}: {exc}") from None
    return sorted({str(info[4][0]) for info in infos})


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is globally routable, judging IPv6 forms that embed an IPv4 by that IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
        if ip.scope_id:
            return False
    refused = (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
               or ip.is_unspecified)
    return ip.is_global and not refused


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_dns_name(host: str) -> bool:
    """Two or more LDH labels with a letter-led top label: what a public S3 endpoint is called."""
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    return (len(name) <= 253 and len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)
            and _TLD.fullmatch(labels[-1]) is not None)


@dataclass(frozen=True)
class EndpointPolicy:
    """Which peer-named stores and endpoints may be contacted (see the module docstring).

    ``allow_private`` is the development flag: file:// stores, plain http and private or
    loopback hosts. ``resolver`` is injectable so tests judge host names without a network.
    """

    allow_private: bool = False
    resolver: Resolver = field(default=system_resolver, repr=False)

    def check_store_url(self, url: str) -> None:
        """Refuse a committed store URL whose scheme or endpoint the policy does not allow."""
        scheme = url.partition("://")[0].lower() if isinstance(url, str) and "://" in url else ""
        if scheme == "file":
            if not self.allow_private:
                raise StorageRefused(REFUSED_SCHEME, "file:// stores are followed only with the dev flag")
            return
        if scheme != "s3":
            raise StorageRefused(REFUSED_SCHEME, f"scheme {scheme[:16]!r}")
        try:
            endpoint = parse_s3_url(url).endpoint
        except ValueError as exc:
            raise StorageRefused(REFUSED_URL, str(exc)) from None
        if endpoint is not None:
            self.check_request_url(endpoint)

    def check_request_url(self, url: str) -> None:
        """Refuse an http(s) URL the policy does not allow: every address of its host, then plain http."""
        try:
            parts = urlsplit(url)
            host, _port = parts.hostname, parts.port  # .port raises for a bad port
        except ValueError as exc:
            raise StorageRefused(REFUSED_URL, str(exc)) from None
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http"):
            raise StorageRefused(REFUSED_SCHEME, f"endpoint scheme {scheme[:16]!r}")
        if self.allow_private:
            return
        if not host or "@" in parts.netloc:
            raise StorageRefused(REFUSED_URL, "endpoint has no host, or carries credentials")
        self.check_host(host)  # first: a private host is the finding that matters, whatever the scheme
        if scheme != "https":
            raise StorageRefused(REFUSED_HTTP, f"endpoint {url[:100]!r}")

    def check_host(self, host: str) -> None:
        """Refuse ``host`` unless it is a public IP, or a DNS name whose every address is public."""
        literal = _ip_literal(host)
        if literal is not None:
            addresses = [literal]
        elif _is_dns_name(host):
            addresses = [ip for ip in map(_ip_literal, self.resolver(host)) if ip is not None]
            if not addresses:
                raise StorageUnavailable("policy", None, f"{host!r} does not resolve")
        else:
            raise StorageRefused(REFUSED_HOST, f"host {host[:100]!r}")
        private = [str(ip) for ip in addresses if not is_public_address(ip)]
        if private:
            raise StorageRefused(REFUSED_PRIVATE, f"host {host[:100]!r} resolves to {', '.join(private[:4])}")


def open_peer_storage(url: str, policy: EndpointPolicy) -> Storage:
    """The store a peer committed, opened only if ``policy`` allows it; S3 requests are unsigned and guarded."""
    policy.check_store_url(url)
    if url.partition("://")[0].lower() == "file":
        try:
            return open_storage(url)
        except ValueError as exc:
            raise StorageRefused(REFUSED_URL, str(exc)) from None
    from protocol.storage_s3 import S3Storage

    loc = parse_s3_url(url)
    try:
        return S3Storage(loc.bucket, loc.prefix, endpoint_url=loc.endpoint, region=loc.region,
                         path_style=loc.path_style, anonymous=True, request_guard=policy.check_request_url)
    except ValueError as exc:  # botocore's own endpoint or region validation
        raise StorageRefused(REFUSED_URL, str(exc)) from None


def failure_category(exc: BaseException) -> str:
    """The fixed receipt phrase for a failure reading a peer's store (the exception's text stays in the log)."""
    if isinstance(exc, StorageRefused):
        return exc.category
    if isinstance(exc, ObjectNotFound):
        return NOT_FOUND
    if isinstance(exc, ObjectTooLarge):
        return TOO_LARGE
    if isinstance(exc, AccessDenied):
        return ACCESS_DENIED
    if isinstance(exc, StorageUnavailable | OSError | TimeoutError):
        return UNREACHABLE
    return STORE_ERROR
