"""``gauntlet chain ...`` and ``gauntlet wallet ...``.

Heavy imports (the SDK, numpy) happen inside the commands so ``gauntlet --help`` stays
instant; every chain or wallet failure is printed as one line and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path

import typer

chain_app = typer.Typer(help="Run or inspect a chain.", no_args_is_help=True)
wallet_app = typer.Typer(help="Create and list development wallets.", no_args_is_help=True)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@chain_app.command("local")
def chain_local(
    path: Path | None = typer.Option(None, "--path", help="Chain file (default: <home>/chain.db)."),
    block_time: float = typer.Option(12.0, "--block-time", help="Seconds per block (new files only)."),
    tempo: int = typer.Option(360, "--tempo", help="Blocks between Yuma epochs (new files only)."),
    max_uids: int = typer.Option(256, "--max-uids", help="Subnet size (new files only)."),
    weights_rate_limit: int = typer.Option(100, "--weights-rate-limit", help="Blocks between set_weights."),
    immunity_period: int = typer.Option(4096, "--immunity-period", help="Blocks a new uid cannot be pruned."),
    once: bool = typer.Option(False, "--once", help="Create/open, print the block and exit."),
) -> None:
    """Create (or open) the embedded local chain and print blocks as they advance until Ctrl-C."""
    from chain.base import ChainError
    from chain.local import LocalChain
    from protocol.settings import load_settings

    target = path or load_settings().home / "chain.db"
    try:
        chain = LocalChain.open_or_create(target, block_time_s=block_time, tempo=tempo, max_uids=max_uids,
                                          weights_rate_limit=weights_rate_limit, immunity_period=immunity_period)
    except (ChainError, OSError) as exc:
        _fail(str(exc))
    p = chain.params
    typer.echo(f"local chain {target} (chain URL local:{target}): block time {p.block_time_s}s, tempo {p.tempo}, "
               f"max uids {p.max_uids}, subnets {chain.subnets()}")
    block = chain.block()
    typer.echo(f"block {block}")
    if once:
        return
    try:
        while True:
            block = chain.wait_for_block(block + 1, timeout_s=p.block_time_s * 4 + 5)
            chain.subnets()  # touching the chain runs any due epoch
            typer.echo(f"block {block}")
    except KeyboardInterrupt:
        typer.echo("stopped")


@chain_app.command("status")
def chain_status(
    netuid: int | None = typer.Option(None, "--netuid", help="Subnet (default: settings)."),
    chain_url: str | None = typer.Option(None, "--chain", help="Chain URL (default: settings)."),
) -> None:
    """Block, window, the subnet's weight hyper-parameters and the metagraph table of a subnet."""
    from chain.base import ChainError
    from chain.connect import open_chain
    from protocol.hparams import load_hparams
    from protocol.settings import load_settings
    from protocol.windows import window_of

    settings = load_settings()
    url = chain_url or settings.chain_url
    net = settings.netuid if netuid is None else netuid
    if url.startswith("local:") and not Path(url.removeprefix("local:")).is_file():
        _fail(f"no local chain at {url.removeprefix('local:')}: start one with `gauntlet chain local`")
    try:
        chain = open_chain(url)
        block = chain.block()
        mg = chain.metagraph(net)
        sp = chain.subnet_params(net)
    except ChainError as exc:
        _fail(str(exc))
    hp = load_hparams(settings.hparams)
    typer.echo(f"chain {url}  block {block}  window {window_of(block, hp.windows)}  netuid {net}  uids {mg.n}")
    reveal = f"on (revealed after {sp.commit_reveal_period} epochs)" if sp.commit_reveal_enabled else "off"
    typer.echo(f"tempo {sp.tempo}  weights rate limit {sp.weights_rate_limit} blocks  weights version "
               f"{sp.weights_version}  commit-reveal {reveal}  max weight {sp.max_weight_fraction:.4f} of a row  "
               f"min weights {sp.min_allowed_weights}")
    typer.echo(f"{'uid':>4} {'hotkey':<48} {'stake':>10} {'vp':>2} {'updated':>8} "
               f"{'incentive':>9} {'dividends':>9} {'emission':>9}")
    for i, uid in enumerate(mg.uids):
        typer.echo(f"{uid:>4} {mg.hotkeys[i]:<48} {mg.stakes[i]:>10.3f} {'Y' if mg.validator_permit[i] else '-':>2} "
                   f"{mg.last_update[i]:>8} {mg.incentive[i]:>9.4f} {mg.dividends[i]:>9.4f} {mg.emission[i]:>9.4f}")


@wallet_app.command("create")
def wallet_create(
    name: str = typer.Option(..., "--name", help="Wallet (coldkey) name."),
    hotkey: str = typer.Option(..., "--hotkey", help="Hotkey name."),
    path: Path | None = typer.Option(None, "--path", help="Wallet directory (default ~/.bittensor/wallets)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing keys."),
) -> None:
    """Create an unencrypted development coldkey (if missing) and a hotkey, in the SDK layout."""
    from chain.base import ChainError
    from chain.wallets import create_wallet

    try:
        wallet = create_wallet(name, hotkey, path, overwrite=overwrite)
    except (ChainError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"wallet {name}/{hotkey} in {wallet.path}")
    typer.echo(f"coldkey {wallet.coldkeypub.ss58_address}")
    typer.echo(f"hotkey  {wallet.hotkey.ss58_address}")


@wallet_app.command("list")
def wallet_list(path: Path | None = typer.Option(None, "--path", help="Wallet directory.")) -> None:
    """Wallets and their hotkeys."""
    from chain.wallets import list_wallets

    for name, hotkeys in list_wallets(path).items():
        typer.echo(f"{name}: {', '.join(hotkeys) or '(no hotkeys)'}")
