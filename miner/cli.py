"""``gauntlet miner ...``: run a SparseLoCo miner (also under ``torchrun`` for data parallelism).

Heavy imports (torch, the SDK) happen inside the command so ``gauntlet --help`` stays instant.
Start-up failures (wallet, chain, storage, registration) print one clear line and exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Train and upload SparseLoCo deltas.", no_args_is_help=True)


@app.command("run")
def run(
    config: Path | None = typer.Option(None, "--config", help="Settings TOML file."),
    hparams: Path | None = typer.Option(None, "--hparams", help="Hyper-parameter JSON (default: packaged)."),
    wallet_name: str | None = typer.Option(None, "--wallet-name"),
    hotkey: str | None = typer.Option(None, "--hotkey"),
    wallet_path: Path | None = typer.Option(None, "--wallet-path"),
    chain: str | None = typer.Option(None, "--chain", help="Chain URL (overrides settings)."),
    storage: str | None = typer.Option(None, "--storage", help="Storage URL for this miner's uploads."),
    netuid: int | None = typer.Option(None, "--netuid"),
    register: bool = typer.Option(
        False, "--register", help="Register the hotkey first: burned registration, paid and signed by the "
        "wallet's coldkey (an encrypted coldkey is unlocked with BT_WALLET_PASSWORD)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (under torchrun: one GPU per rank)."),
    windows: int | None = typer.Option(None, "--windows", help="Stop after N windows (default: forever)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port"),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Default: <home>/miner/<hotkey>."),
    mode: str = typer.Option("honest", "--mode", help="honest, or a registered mode (miner.modes)."),
    target: list[str] | None = typer.Option(
        None, "--target", help="Victim hotkey(s) of copying modes; repeat or comma-separate (copiers use the first)."),
    inner_steps: int | None = typer.Option(None, "--inner-steps", help="This miner's effort (default: hparams)."),
) -> None:
    """Train every window and upload a signed, compressed pseudo-gradient before its deadline."""
    import logging

    from miner import distributed as mdist
    from miner.setup import MinerSetupError

    request = MinerRequest(config=config, hparams=hparams, wallet_name=wallet_name, hotkey=hotkey,
                           wallet_path=wallet_path, chain=chain, storage=storage, netuid=netuid, register=register,
                           device=device, windows=windows, metrics_port=metrics_port, state_dir=state_dir,
                           mode=mode, targets=split_targets(target), inner_steps=inner_steps)
    try:
        miner, info = _build(request)
    except MinerSetupError as exc:
        typer.echo(f"gauntlet miner: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        miner.run()
    except KeyboardInterrupt:
        logging.getLogger("miner").info("interrupted; state is saved after every window")
    finally:
        mdist.shutdown(info)


def split_targets(values: list[str] | None) -> list[str]:
    """``--target A --target B,C`` -> ``[A, B, C]``: both spellings, order kept, blanks dropped."""
    return [t.strip() for v in values or () for t in v.split(",") if t.strip()]


@dataclass(frozen=True)
class MinerRequest:
    """What ``gauntlet miner run`` was asked for: flags as given (``None``: take the settings)."""

    config: Path | None = None
    hparams: Path | None = None
    wallet_name: str | None = None
    hotkey: str | None = None
    wallet_path: Path | None = None
    chain: str | None = None
    storage: str | None = None
    netuid: int | None = None
    register: bool = False
    device: str = "cpu"
    windows: int | None = None
    metrics_port: int | None = None
    state_dir: Path | None = None
    mode: str = "honest"
    targets: list[str] = field(default_factory=list)
    inner_steps: int | None = None


def _configure(req: MinerRequest) -> tuple[Any, Any]:
    """Settings and hyper-parameters for ``req``; any problem is a :class:`MinerSetupError`."""
    import logging

    from miner.modes import resolve
    from miner.setup import MinerSetupError
    from protocol.hparams import HParamsError, load_hparams
    from protocol.settings import SettingsError, load_settings

    try:
        settings = load_settings(req.config, hparams=req.hparams, wallet_name=req.wallet_name,
                                 wallet_hotkey=req.hotkey, wallet_path=req.wallet_path, chain=req.chain,
                                 storage=req.storage, netuid=req.netuid, metrics_port=req.metrics_port)
        hp = load_hparams(settings.hparams)
        resolve(req.mode)
        if req.inner_steps is not None:
            hp = hp.override(**{"inner.steps": req.inner_steps})
    except (SettingsError, HParamsError, ValueError) as exc:
        raise MinerSetupError(str(exc)) from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if req.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MinerSetupError("--device cuda requested but no CUDA device is available")
    return settings, hp


def _build(req: MinerRequest) -> tuple[Any, Any]:
    """The miner and its distributed info: configure, connect, register (main rank only), assemble."""
    from miner import distributed as mdist
    from miner.loop import MinerOptions
    from miner.metrics import MinerMetrics
    from miner.modes import build_miner
    from miner.setup import (
        MinerSetupError,
        connect_chain,
        connect_storage,
        ensure_registered,
        load_keypair,
        load_registering_wallet,
        publish_commitment,
    )
    from protocol.pages import default_store

    settings, hp = _configure(req)
    info = mdist.init_from_env(req.device)
    keypair = load_keypair(settings.wallet_path, settings.wallet_name, settings.wallet_hotkey)
    chain_ = connect_chain(settings.chain_url)
    storage_ = connect_storage(settings.storage_url)
    metrics = MinerMetrics()
    if info.is_main:
        wallet = (load_registering_wallet(settings.wallet_path, settings.wallet_name, settings.wallet_hotkey)
                  if req.register else None)
        ensure_registered(chain_, keypair, settings.netuid, req.register, wallet=wallet)
        publish_commitment(chain_, keypair, settings.netuid, settings.storage_url)
        metrics.serve(settings.metrics_port)
    mdist.barrier(info)
    options = MinerOptions(
        netuid=settings.netuid, storage_url=settings.storage_url, device=req.device, max_windows=req.windows,
        state_dir=req.state_dir or settings.home / "miner" / keypair.ss58_address,
    )
    try:
        miner = build_miner(req.mode, hp, chain_, keypair, options, pages=default_store(settings.home, hp.data),
                            storage=storage_, metrics=metrics, dist=info, targets=req.targets)
    except ValueError as exc:
        raise MinerSetupError(str(exc)) from None
    return miner, info
