"""Development wallets in the SDK's own layout, and loading a node's hotkey.

Keys are created with the SDK's ``Wallet``/``Keypair`` (sr25519), so a wallet made here
is usable by ``btcli`` and the SDK unchanged: ``<path>/<name>/coldkey``,
``coldkeypub.txt``, ``hotkeys/<hotkey>`` and ``hotkeys/<hotkey>pub.txt``. Development
coldkeys are written unencrypted (they guard nothing of value); never use
``gauntlet wallet create`` for keys that will hold real TAO.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from chain.base import WalletError

__all__ = [
    "create_wallet",
    "default_wallet_path",
    "list_wallets",
    "load_hotkey",
    "load_wallet",
    "unlock_coldkey",
]


def default_wallet_path() -> Path:
    return Path.home() / ".bittensor" / "wallets"


def create_wallet(name: str, hotkey: str, path: str | Path | None = None, *, overwrite: bool = False) -> Any:
    """Create (or complete) wallet ``name`` with hotkey ``hotkey``; returns the SDK ``Wallet``.

    An existing coldkey is kept, so several hotkeys can share one dev coldkey.
    """
    from bittensor import Wallet

    if not name or not hotkey or "/" in name or "/" in hotkey:
        raise WalletError("wallet and hotkey names must be non-empty and contain no '/'")
    root = Path(path).expanduser() if path else default_wallet_path()
    wallet = Wallet(name=name, hotkey=hotkey, path=str(root))
    if overwrite or not wallet.coldkeypub_file.exists_on_device():
        wallet.create_new_coldkey(use_password=False, overwrite=overwrite, suppress=True)
    if wallet.hotkey_file.exists_on_device() and not overwrite:
        raise WalletError(f"hotkey {hotkey!r} already exists in wallet {name!r} at {root} (use --overwrite)")
    wallet.create_new_hotkey(use_password=False, overwrite=overwrite, suppress=True)
    return wallet


def load_wallet(wallet_path: str | Path, name: str, hotkey: str) -> Any:
    """The SDK ``Wallet`` for ``name``/``hotkey`` after checking its files exist."""
    from bittensor import Wallet

    root = Path(wallet_path).expanduser()
    wdir = root / name
    if not wdir.is_dir():
        raise WalletError(f"wallet {name!r} not found in {root} (create it with "
                          f"`gauntlet wallet create --name {name} --hotkey {hotkey}`)")
    if not (wdir / "hotkeys" / hotkey).is_file():
        found = sorted(p.name for p in (wdir / "hotkeys").glob("*") if not p.name.endswith("pub.txt"))
        raise WalletError(f"hotkey {hotkey!r} not found in wallet {name!r} at {wdir} (hotkeys: {found or 'none'})")
    return Wallet(name=name, hotkey=hotkey, path=str(root))


def load_hotkey(wallet_path: str | Path, name: str, hotkey: str) -> Any:
    """The hotkey ``Keypair`` of a wallet, with clear errors for missing or unreadable files."""
    wallet = load_wallet(wallet_path, name, hotkey)
    try:
        return wallet.hotkey
    except Exception as exc:
        raise WalletError(f"cannot read hotkey {hotkey!r} of wallet {name!r}: {exc}") from exc


def unlock_coldkey(wallet: Any) -> Any:
    """The wallet's private coldkey ``Keypair``, which pays for and signs a registration.

    Unlocked here, up front, rather than lazily inside the SDK's submit: a miner started by a
    supervisor has no terminal, and a password prompt there would hang (or die on EOF) in the
    middle of an extrinsic. The password comes from the SDK's own sources
    (``BT_WALLET_PASSWORD``, the per-wallet ``BT_PW_...`` variable, ``BT_WALLET_PASSWORD_FILE``);
    without one, an encrypted coldkey is only unlocked where someone can type the password.
    """
    from bittensor.wallets import resolve_wallet_password, signing_keypair
    from bittensor_core import KeyfileError

    if not hasattr(wallet, "coldkey_file"):  # a wallet-shaped object that already holds its keys
        return wallet.coldkey
    name = getattr(wallet, "name", "?")
    cold = wallet.coldkey_file
    if not cold.exists_on_device():
        raise WalletError(f"wallet {name!r} has no coldkey file at {cold.path} (only its public key?); "
                          "registration is paid and signed by the coldkey")
    try:
        if cold.is_encrypted() and resolve_wallet_password(wallet) is None and not sys.stdin.isatty():
            raise WalletError(
                f"the coldkey of wallet {name!r} is encrypted and there is no terminal to ask for its "
                "password: set BT_WALLET_PASSWORD (or BT_WALLET_PASSWORD_FILE to a file holding it)")
        return signing_keypair(wallet, "coldkey")
    except (ValueError, OSError, KeyfileError) as exc:
        raise WalletError(f"cannot unlock the coldkey of wallet {name!r}: {exc}") from exc


def list_wallets(wallet_path: str | Path | None = None) -> dict[str, list[str]]:
    """Wallet name -> hotkey names found under ``wallet_path``."""
    root = Path(wallet_path).expanduser() if wallet_path else default_wallet_path()
    out: dict[str, list[str]] = {}
    for wdir in sorted(p for p in root.glob("*") if p.is_dir()):
        out[wdir.name] = sorted(p.name for p in (wdir / "hotkeys").glob("*") if not p.name.endswith("pub.txt"))
    return out
