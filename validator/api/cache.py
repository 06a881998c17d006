"""Redis response cache of the score API, and the invalidation the validator calls.

What is cached: successful (200) GET responses of the API and dashboard pages, keyed by
path and query string. Every key also carries two versions, so an entry can never outlive
the data it was rendered from:

* the *generation* ``gauntlet:api:gen``, a counter the validator bumps with
  :func:`invalidate` right after it commits a window (one INCR; old keys then expire by TTL);
* the *last scored window* read from the database (memoised for ``last_window_ttl_s``, one
  indexed ``max()``), so the cache turns over when a window is scored even if nobody bumps.

Redis is optional. Without a URL nothing is cached; when Redis fails, requests are served
uncached, ``/api/v1/health`` reports ``degraded``, and Redis is tried again after
``retry_after_s``. The cache is an ASGI middleware (not a FastAPI dependency) so a hit skips
routing, validation and the database entirely.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

GEN_KEY = "gauntlet:api:gen"
KEY_PREFIX = "gauntlet:api:cache"
#: Paths never cached: live status, the metrics themselves, docs and static files.
UNCACHED_PATHS = frozenset({"/api/v1/health", "/metrics", "/openapi.json", "/docs", "/redoc"})
UNCACHED_PREFIXES = ("/static/", "/docs/")


#: KEYS[1] = generation key; ARGV = (key prefix, rest of the key). Returns (key, value or nil).
_LOOKUP_LUA = """
local gen = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. ':' .. gen .. ':' .. ARGV[2]
return {key, redis.call('GET', key)}
"""


def invalidate(client: redis.Redis) -> int:
    """Start a new cache generation (call after committing a window); returns the generation."""
    return int(client.incr(GEN_KEY))


class ResponseCache:
    """Get and store rendered responses; tracks whether Redis is reachable."""

    def __init__(
        self,
        redis_url: str | None,
        last_scored: Callable[[], int | None],
        *,
        ttl_s: int = 300,
        last_window_ttl_s: float = 1.0,
        retry_after_s: float = 5.0,
        timeout_s: float = 0.25,
    ):
        self.redis_url = redis_url
        self.ttl_s = ttl_s
        self.last_window_ttl_s = last_window_ttl_s
        self.retry_after_s = retry_after_s
        self.timeout_s = timeout_s
        self._last_scored = last_scored
        self._memo: tuple[float, int | None] | None = None
        self._down_until = 0.0
        self._client: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lookup_script: Any = None

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None

    @property
    def state(self) -> str:
        """``disabled``, ``ok`` or ``down`` (last known, no network call)."""
        if not self.enabled:
            return "disabled"
        return "down" if time.monotonic() < self._down_until else "ok"

    def client(self) -> aioredis.Redis:
        """The async client of the running event loop (a client cannot cross loops)."""
        assert self.redis_url is not None
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
            )
            self._loop = loop
        return self._client

    def _failed(self, exc: Exception) -> None:
        if self.state == "ok":
            log.warning("API cache: Redis unavailable (%s); serving uncached", exc)
        self._down_until = time.monotonic() + self.retry_after_s

    async def ping(self) -> str:
        """Check Redis now (for health); returns the new :attr:`state`."""
        if not self.enabled:
            return "disabled"
        try:
            await self.client().ping()
            self._down_until = 0.0
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
        return self.state

    async def last_scored_window(self) -> int | None:
        now = time.monotonic()
        if self._memo is None or now - self._memo[0] >= self.last_window_ttl_s:
            self._memo = (now, await run_in_threadpool(self._last_scored))
        return self._memo[1]

    async def lookup(self, path: str, query: str) -> tuple[str | None, bytes | None]:
        """(cache key, cached value) of a request in one round trip; (None, None) when Redis is down.

        A Lua script reads the generation and the entry together, so a hit costs one
        round trip to Redis and no database query (the last scored window is memoised).
        """
        if self.state != "ok":
            return None, None
        last = await self.last_scored_window()
        try:
            key, value = await self._script()(keys=[GEN_KEY], args=[KEY_PREFIX, f"{last}:{path}?{query}"])
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return None, None
        return key.decode(), value

    def _script(self) -> Any:
        client = self.client()
        if self._lookup_script is None or self._lookup_script.registered_client is not client:
            self._lookup_script = client.register_script(_LOOKUP_LUA)
        return self._lookup_script

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self.client().set(key, value, ex=self.ttl_s)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)


def _encode(content_type: str, body: bytes) -> bytes:
    return content_type.encode("latin-1") + b"\n" + body


def _decode(value: bytes) -> tuple[str, bytes]:
    content_type, body = value.split(b"\n", 1)
    return content_type.decode("latin-1"), body


def cacheable(scope: Scope) -> bool:
    if scope["type"] != "http":
        return False
    path: str = scope["path"]
    return (
        scope["method"] == "GET"
        and path not in UNCACHED_PATHS
        and not path.startswith(UNCACHED_PREFIXES)
    )


class CacheMiddleware:
    """Serve cached 200 responses (``x-cache: HIT``); store fresh ones (``MISS``)."""

    def __init__(self, app: ASGIApp, cache: ResponseCache):
        self.app = app
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.cache.enabled or not cacheable(scope):
            await self.app(scope, receive, send)
            return
        key, hit = await self.cache.lookup(scope["path"], scope.get("query_string", b"").decode("latin-1"))
        if key is None:
            await self.app(scope, receive, send)
            return
        if hit is not None:
            content_type, body = _decode(hit)
            await _send_body(send, content_type, body)
            return
        await self._miss(scope, receive, send, key)

    async def _miss(self, scope: Scope, receive: Receive, send: Send, key: str) -> None:
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                message["headers"] = [*message.get("headers", []), (b"x-cache", b"MISS")]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, capture)
        if start.get("status") != 200:
            return
        headers = dict(start.get("headers", []))
        content_type = headers.get(b"content-type", b"application/json").decode("latin-1")
        await self.cache.put(key, _encode(content_type, b"".join(chunks)))


async def _send_body(send: Send, content_type: str, body: bytes) -> None:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
        (b"x-cache", b"HIT"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
