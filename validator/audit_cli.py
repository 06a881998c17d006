"""``gauntlet audit``: check a validator's score receipts against a recomputation from public data.

    gauntlet audit --api http://validator:8000 --window 1234 --hotkey 5F...
    gauntlet audit --api http://validator:8000 --window 1234 --all --json report.json

It needs the score API (receipts, the revealed seed), the chain (commitments, block times,
validator ranking) and the stores those name; nothing of the validator's own state. Exit status:
0 every recomputed field matches, 1 a mismatch, 2 the audit could not run (one line on stderr:
window not scored yet, upload gone, model not reachable, other hyper-parameters, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from protocol.hparams import HParams
    from protocol.settings import Settings
    from validator.audit import AuditReport
    from validator.audit_api import ScoreApi


def register(app: typer.Typer) -> None:
    """Attach ``audit`` to the top-level app."""
    app.command("audit", help="Recompute a window's score receipts from public data and compare.")(audit_cmd)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"gauntlet audit: {message}", err=True)
    return typer.Exit(2)


def audit_cmd(
    api: str = typer.Option(..., "--api", help="Base URL of the validator's score API."),
    window: int = typer.Option(..., "--window", min=0, help="The scored window to audit."),
    hotkey: str | None = typer.Option(None, "--hotkey", help="Audit this peer's receipt."),
    all_: bool = typer.Option(False, "--all", help="Audit every receipt of the window (recomputes the ranking too)."),
    config: Path | None = typer.Option(None, "--config", help="TOML settings file."),
    chain: str | None = typer.Option(None, "--chain", help="Chain URL (overrides settings)."),
    netuid: int | None = typer.Option(None, "--netuid", help="Subnet id (overrides settings)."),
    hparams: Path | None = typer.Option(None, "--hparams", help="The subnet's hyper-parameter file."),
    home: Path | None = typer.Option(None, "--home", help="Local state (the page store is built here)."),
    allow_local_storage: bool = typer.Option(
        False, "--allow-local-storage", help="Read file://, http and private-address stores (local networks only)."),
    loss_tolerance: float | None = typer.Option(
        None, "--loss-tolerance", min=0.0, help="Absolute loss tolerance (default: from the receipts' device/dtype)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    mismatches_only: bool = typer.Option(False, "--mismatches-only", help="Print only fields that do not match."),
) -> None:
    """Recompute Stage 1, Stage 2, the rating update and the final score of a window's receipts."""
    if all_ == (hotkey is not None):
        raise _fail("give exactly one of --hotkey HK or --all")
    from chain.base import ChainError
    from protocol.hparams import HParamsError, load_hparams
    from protocol.pages import PageStoreError
    from protocol.settings import SettingsError, load_settings
    from validator.audit_api import AuditError, ScoreApi

    try:
        settings = load_settings(config, chain=chain, netuid=netuid, hparams=hparams, home=home)
        hp = load_hparams(settings.hparams)
    except (SettingsError, HParamsError) as exc:
        raise _fail(str(exc)) from None
    client = ScoreApi(api)
    try:
        report = _run(client, settings, hp, window, hotkey, allow_local_storage or settings.allow_private_miner_storage,
                      loss_tolerance)
    except (AuditError, ChainError, PageStoreError) as exc:
        raise _fail(str(exc)) from None
    finally:
        client.close()
    _print(report, api, mismatches_only)
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_dict(), indent=1, default=str))
    if not report.ok:
        raise typer.Exit(1)


def _run(client: ScoreApi, settings: Settings, hp: HParams, window: int, hotkey: str | None, allow_local: bool,
         loss_tolerance: float | None) -> AuditReport:
    from chain.base import ChainError
    from chain.connect import open_chain
    from protocol.codec import CodecConfig
    from protocol.pages import default_store
    from validator.audit import AuditInputs, audit

    client.window(window)  # fail fast (window unknown or not scored) before building the page store
    url = settings.chain_url
    if url.startswith("local:") and not Path(url.removeprefix("local:")).is_file():
        raise ChainError(f"no local chain at {url.removeprefix('local:')} (pass --chain)")
    inputs = AuditInputs(hp=hp, chain=open_chain(url), netuid=settings.netuid, pages=default_store(settings.home, hp.data),
                         codec_cfg=CodecConfig.from_params(hp.codec), allow_local_storage=allow_local,
                         loss_tolerance=loss_tolerance)
    return audit(client, inputs, window, hotkey)


def _print(report: AuditReport, api: str, mismatches_only: bool) -> None:
    from validator.audit_compare import format_checks, summarise

    typer.echo(f"audit of window {report.window} from {api}: {len(report.hotkeys)} receipt(s)")
    for note in report.notes:
        typer.echo(f"  · {note}")
    for hk in report.hotkeys:
        mine = [c for c in report.checks if c.hotkey == hk]
        counts = summarise(mine)
        status = next((c.published for c in mine if c.field == "status"), "?")
        typer.echo(f"── {hk} ({status}): {counts['match']} match, {counts['mismatch']} mismatch, "
                   f"{counts['not recomputed']} not recomputed")
        text = format_checks(mine, verbose=not mismatches_only)
        if text:
            typer.echo(text)
    total = summarise(report.checks)
    verdict = "every recomputed field matches" if report.ok else "MISMATCH"
    typer.echo(f"window {report.window}: {total['match']} match, {total['mismatch']} mismatch, "
               f"{total['not recomputed']} not recomputed: {verdict}")
