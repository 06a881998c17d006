"""Open a chain backend from a settings URL.

Kept apart from ``chain.base`` (the interface both backends import), so that the interface
never imports an implementation: no import circle.
"""

from __future__ import annotations

from typing import Any

from chain.base import Chain, ChainError

__all__ = ["open_chain"]


def open_chain(url: str, *, block_time_s: float = 12.0, **kwargs: Any) -> Chain:
    """Open a chain from a settings URL.

    ``local:<path>`` opens (creating on first use) the embedded SQLite chain;
    ``ws://``/``wss://`` URLs, ``test``, ``finney`` and ``local`` (the SDK's name
    for ws://127.0.0.1:9944) go to the Bittensor backend.
    """
    if url.startswith("local:"):
        from chain.local import LocalChain

        path = url.removeprefix("local:")
        if not path:
            raise ChainError("chain URL 'local:' needs a file path, e.g. local:/tmp/chain.db")
        return LocalChain.open_or_create(path, block_time_s=block_time_s, **kwargs)
    if url.startswith(("ws://", "wss://")) or url in {"test", "finney", "local", "archive", "latent-lite"}:
        from chain.bittensor_chain import BittensorChain

        return BittensorChain(url, **kwargs)
    raise ChainError(
        f"unrecognised chain URL {url!r}: use 'local:<path>', 'ws://host:port', 'test' or 'finney'"
    )
