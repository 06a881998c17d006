"""Miner start-up: wallet, chain, storage, registration and commitment (whom to follow: ``protocol.follow``).

Each step fails with a :class:`MinerSetupError` whose message says what is wrong and how to
fix it (wrong wallet, unreachable chain or storage, not registered), so an operator never
has to read a traceback to get a miner running.
"""

from __future__ import annotations

import logging
from typing import Any

from chain.base import Chain, ChainError
from protocol.storage import ObjectNotFound, Storage, StorageError
from protocol.storage_open import open_storage

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


def load_registering_wallet(wallet_path: Any, name: str, hotkey: str) -> Any:
    """The whole SDK ``Wallet``: registering is paid and signed by its coldkey, not by the hotkey."""
    from chain.wallets import load_wallet

    try:
        return load_wallet(wallet_path, name, hotkey)
    except ChainError as exc:
        raise MinerSetupError(f"wallet: {exc}") from None


def connect_chain(url: str) -> Chain:
    from chain.connect import open_chain

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


def ensure_registered(chain: Chain, keypair: Any, netuid: int, register: bool, wallet: Any = None) -> int:
    """This hotkey's uid, registering it first when asked.

    Registration goes through ``wallet`` (hotkey and coldkey) when given: on subtensor the
    coldkey pays the burn and signs ``burned_register``, with the hotkey as its argument, so a
    bare hotkey keypair can only register on the local chain.
    """
    hotkey = keypair.ss58_address
    try:
        if register:
            uid = chain.register(wallet if wallet is not None else keypair, netuid)
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
