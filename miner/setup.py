"""Miner start-up: wallet, chain, storage, registration, commitment, and whom to follow.

Each step fails with a :class:`MinerSetupError` whose message says what is wrong and how to
fix it (wrong wallet, unreachable chain or storage, not registered), so an operator never
has to read a traceback to get a miner running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from chain.base import Chain, ChainError, Metagraph
from protocol.storage import ObjectNotFound, Storage, StorageError, open_storage

log = logging.getLogger(__name__)

_PROBE_KEY = "aggregates/0000000000.gagg"


class MinerSetupError(RuntimeError):
    """The miner cannot start; the message is meant for the operator."""


def load_keypair(wallet_path: Any, name: str, hotkey: str) -> Any:
    from chain.wallets import load_hotkey

    try:
        return load_hotkey(wallet_path, name, hotkey)
    except ChainError as exc:
        raise MinerSetupError(f"wallet: {exc}") from None


def connect_chain(url: str) -> Chain:
    from chain.base import open_chain

    try:
        chain = open_chain(url)
        chain.block()
    except ChainError as exc:
        raise MinerSetupError(f"chain {url!r} is unreachable: {exc}") from None
    return chain


def connect_storage(url: str) -> Storage:
    """Open a store and prove it answers (a missing probe object is fine, an unreachable store is not)."""
    try:
        storage = open_storage(url)
    except (ValueError, ImportError) as exc:
        raise MinerSetupError(f"storage: {exc}") from None
    try:
        storage.stat(_PROBE_KEY)
    except ObjectNotFound:
        pass
    except StorageError as exc:
        raise MinerSetupError(f"storage {url!r} is unreachable: {exc}") from None
    return storage


def ensure_registered(chain: Chain, keypair: Any, netuid: int, register: bool) -> int:
    """This hotkey's uid, registering it first when asked."""
    hotkey = keypair.ss58_address
    try:
        if register:
            uid = chain.register(keypair, netuid)
            log.info("registered %s on subnet %d as uid %d", hotkey, netuid, uid)
            return uid
        uid = chain.metagraph(netuid).uid_of(hotkey)
    except ChainError as exc:
        raise MinerSetupError(f"chain: {exc}") from None
    if uid is None:
        raise MinerSetupError(
            f"hotkey {hotkey} is not registered on subnet {netuid}; register it (or pass --register on a local chain)"
        )
    return uid


def publish_commitment(chain: Chain, keypair: Any, netuid: int, storage_url: str) -> None:
    """Announce where this miner's deltas live (skipped when the chain already says so)."""
    try:
        if chain.commitments(netuid).get(keypair.ss58_address) != storage_url:
            chain.commit(keypair, netuid, storage_url)
            log.info("committed storage URL %s", storage_url)
    except ChainError as exc:
        raise MinerSetupError(f"could not publish the storage commitment: {exc}") from None


@dataclass(frozen=True)
class Publisher:
    """The validator whose aggregates and checkpoints this miner follows."""

    hotkey: str | None  # None: accept any signer (only when nothing is committed, e.g. a bare localnet)
    storage_url: str


def choose_publisher(metagraph: Metagraph, commitments: dict[str, str], *, follow: str | None,
                     fallback_url: str) -> Publisher:
    """The followed validator: ``follow`` if given, else the highest-stake permit holder with a commitment."""
    if follow is not None:
        url = commitments.get(follow)
        if url is None:
            raise MinerSetupError(f"validator {follow} has no storage commitment on the subnet")
        return Publisher(follow, url)
    candidates = [
        (metagraph.stakes[i], hk) for i, hk in enumerate(metagraph.hotkeys)
        if metagraph.validator_permit[i] and commitments.get(hk)
    ]
    if not candidates:
        log.warning("no validator with a permit has committed a storage URL; reading %s unpinned", fallback_url)
        return Publisher(None, fallback_url)
    _stake, hotkey = max(candidates)
    return Publisher(hotkey, commitments[hotkey])
