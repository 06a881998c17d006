"""``gauntlet miner ...``: run a SparseLoCo miner (also under ``torchrun`` for data parallelism).

Heavy imports (torch, the SDK) happen inside the command so ``gauntlet --help`` stays instant.
Start-up failures (wallet, chain, storage, registration) print one clear line and exit 2.

The command builds the honest :class:`miner.loop.Miner`. Its one extension point is the
miner factory: a harness that calls the command line in its own process may pass another
:data:`MinerFactory` as the Click context object (``app(args, obj=factory)``); the test
harness does so to run its adversaries (``testing.run --mode``) through this same code path,
while nothing here knows of, or imports, any mode other than the honest one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from miner.loop import Miner

#: What builds the miner: ``Miner`` itself, or anything with its constructor's signature
#: (``hp, chain, keypair, options, *, pages, storage, metrics, dist``) returning a ``Miner``.
MinerFactory = Callable[..., "Miner"]

app = typer.Typer(help="Train and upload SparseLoCo deltas.", no_args_is_help=True)


@app.command("run")
def run(
    ctx: typer.Context,
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
    inner_steps: int | None = typer.Option(None, "--inner-steps", help="This miner's effort (default: hparams)."),
) -> None:
    """Train every window and upload a signed, compressed pseudo-gradient before its deadline."""
    import logging

    from miner import distributed as mdist
    from miner.setup import MinerSetupError

    request = MinerRequest(config=config, hparams=hparams, wallet_name=wallet_name, hotkey=hotkey,
                           wallet_path=wallet_path, chain=chain, storage=storage, netuid=netuid, register=register,
                           device=device, windows=windows, metrics_port=metrics_port, state_dir=state_dir,
                           inner_steps=inner_steps)
    try:
        miner, info = _build(request, _factory(ctx))
    except MinerSetupError as exc:
        typer.echo(f"gauntlet miner: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        miner.run()
    except KeyboardInterrupt:
        logging.getLogger("miner").info("interrupted; state is saved after every window")
    finally:
        mdist.shutdown(info)


def _factory(ctx: typer.Context) -> MinerFactory | None:
    """The miner factory the caller passed as the context object (see the module doc); None: the honest one."""
    if ctx.obj is not None and not callable(ctx.obj):
        raise TypeError(f"gauntlet miner run: the context object must be a miner factory, got {ctx.obj!r}")
    return ctx.obj


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
    inner_steps: int | None = None


def _configure(req: MinerRequest) -> tuple[Any, Any]:
    """Settings and hyper-parameters for ``req``; any problem is a :class:`MinerSetupError`."""
    import logging

    from miner.setup import MinerSetupError
    from protocol.hparams import HParamsError, load_hparams
    from protocol.settings import SettingsError, load_settings

    try:
        settings = load_settings(req.config, hparams=req.hparams, wallet_name=req.wallet_name,
                                 wallet_hotkey=req.hotkey, wallet_path=req.wallet_path, chain=req.chain,
                                 storage=req.storage, netuid=req.netuid, metrics_port=req.metrics_port)
        hp = load_hparams(settings.hparams)
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


def _build(req: MinerRequest, factory: MinerFactory | None = None) -> tuple[Any, Any]:
    """The miner and its distributed info: configure, connect, register (main rank only), assemble.

    ``factory`` builds the miner (default: the honest :class:`miner.loop.Miner`)."""
    from miner import distributed as mdist
    from miner.loop import Miner, MinerOptions
    from miner.metrics import MinerMetrics
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
    try:  # a factory refuses what it cannot build with ValueError (e.g. a missing target)
        miner = (factory or Miner)(hp, chain_, keypair, options, pages=default_store(settings.home, hp.data),
                                   storage=storage_, metrics=metrics, dist=info)
    except ValueError as exc:
        raise MinerSetupError(str(exc)) from None
    return miner, info
