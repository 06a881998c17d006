"""``gauntlet validator run`` (the window loop) and ``gauntlet validator worker`` (Stage-2 jobs).

Settings come from ``protocol.settings`` (flags over ``GAUNTLET_*`` over btcli's ``BT_*``
environment over the ``--config`` TOML), hyper-parameters from ``protocol.hparams``. The
connection flags (``--chain``, ``--netuid``, ``--storage``, ``--wallet-*``) are the miner's,
with the same meaning, so one node's flags can be copied to another. Heavy imports happen
inside the commands so ``gauntlet --help`` stays instant.

    gauntlet validator run --wallet-name validator --hotkey default --windows 3 --allow-local-storage
    gauntlet validator run --chain ws://127.0.0.1:9944 --netuid 2 --storage s3://bucket/validator
    gauntlet validator worker --validator-hotkey 5F... --allow-local-storage
    gauntlet validator migrate            # schema to head, then exit (validator run also does it)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from protocol.settings import Settings

validator_app = typer.Typer(help="Score miners and set weights.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Attach the validator-side commands to the top-level app."""
    app.add_typer(validator_app, name="validator")


def _settings(config: Path | None, **overrides: object) -> Settings:
    """Load settings with the flags given (``None``: not given) on top; bad settings exit 2 in one line.

    One line and status 2, like ``gauntlet miner run``: a typo in ``--netuid`` or the TOML file is an
    operator error, not a crash worth a traceback.
    """
    from protocol.settings import SettingsError, load_settings

    try:
        settings = load_settings(config, **overrides)
    except SettingsError as exc:
        typer.echo(f"gauntlet validator: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings


def _allow_private(settings: Settings, flag: bool) -> bool:
    """The miner-store dev flag: explicit only (a flag or the setting), never inferred from the chain URL.

    A local chain used to imply it; an explicit switch keeps a copied config or a mistyped chain URL
    from opening the validator's private network to miners' URLs.
    """
    allow = flag or settings.allow_private_miner_storage
    if not allow and settings.chain_url.startswith("local:"):
        logging.getLogger(__name__).warning(
            "local chain without GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE=1 (--allow-local-storage): miners' file:// "
            "and loopback stores will be refused")
    return bool(allow)


@validator_app.command("run")
def run_cmd(
    config: Path | None = typer.Option(None, "--config", help="TOML settings file."),
    wallet_name: str | None = typer.Option(None, "--wallet-name", help="Wallet holding the validator hotkey."),
    hotkey: str | None = typer.Option(None, "--hotkey", help="Hotkey name inside the wallet."),
    wallet_path: Path | None = typer.Option(None, "--wallet-path", help="Wallet directory (overrides settings)."),
    chain: str | None = typer.Option(None, "--chain", help="Chain URL (overrides settings)."),
    storage: str | None = typer.Option(
        None, "--storage", help="Storage URL this validator publishes proposals, aggregates and checkpoints to "
        "(overrides settings)."),
    netuid: int | None = typer.Option(None, "--netuid", help="Subnet id (overrides settings)."),
    windows: int | None = typer.Option(None, "--windows", help="Stop after scoring this many windows."),
    allow_local_storage: bool = typer.Option(
        False, "--allow-local-storage", help="Follow miners' file://, http and private-address stores (dev/local "
        "network only; same as GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE=1)."),
    poll_s: float = typer.Option(2.0, "--poll-s", help="Seconds between chain polls when idle."),
    device: str | None = typer.Option(None, "--device", help="Stage-2 device: cpu, cuda or cuda:N (default cpu)."),
    dtype: str | None = typer.Option(None, "--dtype", help="Stage-2 precision: fp32 or bf16 autocast (default fp32)."),
) -> None:
    """Score every window as it closes, publish aggregates and checkpoints, set weights."""
    from validator import app, service

    settings = _settings(config, wallet_name=wallet_name, wallet_hotkey=hotkey, wallet_path=wallet_path,
                         chain=chain, storage=storage, netuid=netuid, device=device, dtype=dtype)
    local = _allow_private(settings, allow_local_storage)
    ctx = app.build_context(settings, options=app.RunOptions(allow_local_storage=local))
    app.serve_metrics(settings)
    logging.getLogger(__name__).info("validator %s on netuid %d, store %s", ctx.hotkey, ctx.netuid,
                                     settings.storage_url)
    scored = service.run(ctx, service.LoopConfig(max_windows=windows, poll_s=poll_s))
    typer.echo(f"scored {scored} window(s)")


@validator_app.command("worker")
def worker_cmd(
    config: Path | None = typer.Option(None, "--config", help="TOML settings file."),
    validator_hotkey: str | None = typer.Option(
        None, "--validator-hotkey", help="Whose published checkpoints/aggregates define theta (default: own wallet)."),
    wallet_name: str | None = typer.Option(None, "--wallet-name", help="Wallet holding the validator hotkey."),
    hotkey: str | None = typer.Option(None, "--hotkey", help="Hotkey name inside the wallet."),
    wallet_path: Path | None = typer.Option(None, "--wallet-path", help="Wallet directory (overrides settings)."),
    storage: str | None = typer.Option(
        None, "--storage", help="The validator's storage URL, read for the checkpoints and aggregates that define "
        "theta (overrides settings; the one its `validator run` publishes to)."),
    allow_local_storage: bool = typer.Option(
        False, "--allow-local-storage", help="Follow miners' file://, http and private-address stores (dev/local "
        "network only)."),
    max_jobs: int | None = typer.Option(None, "--max-jobs", help="Exit after this many jobs."),
    idle_exit_s: float | None = typer.Option(None, "--idle-exit-s", help="Exit after this long without jobs."),
    threads: int | None = typer.Option(None, "--threads", help="torch intra-op threads for this worker."),
    device: str | None = typer.Option(None, "--device", help="Stage-2 device: cpu, cuda or cuda:N (default cpu)."),
    dtype: str | None = typer.Option(None, "--dtype", help="Stage-2 precision: fp32 or bf16 autocast (default fp32)."),
) -> None:
    """Evaluate Stage-2 jobs from the Redis work queue (run several, on any machine)."""
    from validator import app
    from validator.worker import default_consumer

    # No --chain/--netuid: a worker never talks to the chain; jobs arrive on Redis.
    settings = _settings(config, wallet_name=wallet_name, wallet_hotkey=hotkey, wallet_path=wallet_path,
                         storage=storage, device=device, dtype=dtype)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if validator_hotkey is None:
        from chain.wallets import load_hotkey

        validator_hotkey = load_hotkey(settings.wallet_path, settings.wallet_name, settings.wallet_hotkey).ss58_address
    local = _allow_private(settings, allow_local_storage)
    worker = app.build_worker(settings, validator_hotkey=validator_hotkey, allow_local_storage=local,
                              consumer=default_consumer())
    app.serve_metrics(settings)  # gauntlet_worker_* on GAUNTLET_METRICS_PORT, scraped like the validator
    done = worker.run(max_jobs=max_jobs, idle_exit_s=idle_exit_s)
    typer.echo(f"worker done: {done} job(s)")


@validator_app.command("migrate")
def migrate_cmd(
    config: Path | None = typer.Option(None, "--config", help="TOML settings file."),
    database_url: str | None = typer.Option(None, "--database-url", help="SQLAlchemy URL (overrides settings)."),
) -> None:
    """Bring the validator database's schema to the newest revision, then exit.

    ``validator run`` does this itself on start; a deployment where several containers share one
    database runs this once first (Compose's ``migrate`` service) and starts the validator with
    ``GAUNTLET_MIGRATE_ON_START=false``, so no two processes run Alembic on a fresh database at once.
    """
    from validator.db.session import current_revision, migrate

    settings = _settings(config, database_url=database_url)
    migrate(settings.db_url)
    typer.echo(f"database at revision {current_revision(settings.db_url)}")
