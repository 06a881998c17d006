"""``gauntlet api`` (serve the score API and dashboard) and ``gauntlet scores`` (print the leaderboard).

Wired into the top-level CLI by ``validator.cli.register`` calling :func:`register`.
``gauntlet api`` reads the database and Redis URLs from the node settings
(``protocol.settings``: ``--config``, ``GAUNTLET_*``) unless given as flags; ``gauntlet
scores`` only talks HTTP, so it works from any machine that can reach the API.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer

DEFAULT_TIMEOUT_S = 5.0


def register(app: typer.Typer) -> None:
    """Attach ``api`` and ``scores`` to the top-level app."""
    app.command("api", help="Serve the read-only score API and dashboard.")(serve)
    app.command("scores", help="Print the leaderboard from a running score API.")(scores)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (settings: api_host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (settings: api_port).")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (settings: database_url).")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL for the response cache.")] = None,
    config: Annotated[str | None, typer.Option(help="Settings TOML file.")] = None,
) -> None:
    import uvicorn

    from protocol.settings import load_settings
    from validator.api.app import create_app

    settings = load_settings(config, api_host=host, api_port=port, database_url=database_url, redis_url=redis_url)
    app = create_app(settings.db_url, settings.redis_url)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level=settings.log_level.lower(),
                access_log=False)


def fetch_leaderboard(api: str, limit: int, client: httpx.Client | None = None) -> dict[str, Any]:
    """GET ``/api/v1/leaderboard`` from ``api``; raises ``RuntimeError`` with a readable reason."""
    url = api.rstrip("/") + "/api/v1/leaderboard"
    owned = client is None
    client = client or httpx.Client(timeout=DEFAULT_TIMEOUT_S)
    try:
        response = client.get(url, params={"limit": limit})
    except httpx.HTTPError as exc:
        raise RuntimeError(f"cannot reach the score API at {api}: {exc}") from None
    finally:
        if owned:
            client.close()
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return response.json()  # type: ignore[no-any-return]


def format_leaderboard(board: dict[str, Any]) -> str:
    """The leaderboard as a fixed-width text table."""
    header = f"{'#':>4} {'uid':>5}  {'hotkey':<16} {'score':>10} {'rating mu ± sigma':>19} {'weight':>8} {'last':>7}  status"
    lines = [f"last scored window: {board.get('last_scored_window')}  ·  peers: {board.get('total')}", header]
    for p in board["items"]:
        hk = p["hotkey"]
        short = hk if len(hk) <= 16 else f"{hk[:7]}…{hk[-7:]}"
        uid = "-" if p["uid"] is None else p["uid"]
        last = "-" if p["last_seen_window"] is None else p["last_seen_window"]
        rating = f"{p['rating_mu']:.2f} ± {p['rating_sigma']:.2f}"
        lines.append(f"{p['rank']:>4} {uid:>5}  {short:<16} {p['score']:>10.4f} {rating:>19} "
                     f"{p['weight']:>8.4f} {last:>7}  {p['status']}")
    if not board["items"]:
        lines.append("(no peers scored yet)")
    return "\n".join(lines)


def scores(
    api: Annotated[str | None, typer.Option(help="Base URL of the score API (default: settings api_host:api_port).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows to show.")] = 50,
) -> None:
    if api is None:
        from protocol.settings import load_settings

        settings = load_settings()
        api = f"http://{settings.api_host}:{settings.api_port}"
    try:
        board = fetch_leaderboard(api, limit)
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_leaderboard(board))
