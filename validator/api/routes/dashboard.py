"""The dashboard: server-rendered pages over the same database (no JavaScript needed).

``/`` leaderboard, ``/peer/{hotkey}`` a peer's charts and receipts, ``/windows`` the window
timeline with rejections by reason, ``/window/{window}`` one window's receipts. Charts are
SVG rendered here (``validator.api.charts``); static files come from ``/static``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from validator.api import charts, queries
from validator.api.deps import HotkeyPath, SessionDep, WindowPath
from validator.api.schemas import peer_public, receipt, window_public
from validator.db import repo, weight_repo

router = APIRouter(tags=["dashboard"], default_response_class=HTMLResponse)
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[1] / "templates")
HISTORY_WINDOWS = 500
TIMELINE_WINDOWS = 200
HTML = {200: {"content": {"text/html": {}}, "description": "HTML page."}}
NOT_FOUND = {**HTML, 404: {"content": {"text/html": {}}, "description": "Not found (an HTML page)."}}


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _not_found(request: Request, message: str) -> HTMLResponse:
    return _render(request, "404.html", status_code=404, message=message)


@router.get("/", response_class=HTMLResponse, responses=HTML)
def index(request: Request, session: SessionDep) -> HTMLResponse:
    last = repo.last_scored_window(session)
    peers = [peer_public(p, last) for p in repo.leaderboard(session, limit=256)]
    lo = None if last is None else max(0, last - 99)
    reasons = repo.rejections_by_reason(session, from_window=lo, to_window=last)
    weights = weight_repo.latest_weight_set(session)
    return _render(
        request, "index.html", peers=peers, last_scored=last, weights=weights,
        total=repo.count_peers(session), rejections=charts.bar_chart(
            "Rejections by reason, last 100 windows", list(reasons.items())),
    )


@router.get("/peer/{hotkey}", response_class=HTMLResponse, responses=NOT_FOUND)
def peer_page(request: Request, session: SessionDep, hotkey: HotkeyPath) -> HTMLResponse:
    row = repo.peer(session, hotkey=hotkey)
    if row is None:
        return _not_found(request, f"unknown peer {hotkey}")
    rows = repo.peer_history(session, hotkey=hotkey, limit=HISTORY_WINDOWS)
    statuses = queries.window_statuses(session, windows=(r.window for r in rows))
    receipts = [receipt(r, window_status=statuses.get(r.window, "open")) for r in rows]
    series = list(reversed(receipts))
    mu = [(r.window, r.rating_mu_after) for r in series]
    band = [(r.window, r.rating_mu_after - r.rating_sigma_after, r.rating_mu_after + r.rating_sigma_after)
            for r in series if r.rating_mu_after is not None and r.rating_sigma_after is not None]
    plots = [
        charts.line_chart("Final score", [charts.Series("score", [(r.window, r.final_score) for r in series])]),
        charts.line_chart("Loss improvement (before - after)", [
            charts.Series("assigned pages", [(r.window, r.loss_improvement_assigned) for r in series]),
            charts.Series("random pages", [(r.window, r.loss_improvement_random) for r in series],
                          color=charts.PALETTE[2]),
        ]),
        charts.line_chart("Rating \u03bc \u00b1 \u03c3", [charts.Series("rating", mu, color=charts.PALETTE[3], band=band)]),
        charts.line_chart("Weight", [charts.Series("weight", [(r.window, r.weight) for r in series],
                                                   color=charts.PALETTE[4])]),
    ]
    reasons = queries.peer_rejections(session, hotkey=hotkey)
    return _render(
        request, "peer.html", peer=peer_public(row, repo.last_scored_window(session)), plots=plots,
        receipts=receipts[:30], rejections=charts.bar_chart("Rejections by reason", list(reasons.items())),
    )


@router.get("/windows", response_class=HTMLResponse, responses=HTML)
def windows_page(request: Request, session: SessionDep) -> HTMLResponse:
    rows = repo.windows(session, limit=TIMELINE_WINDOWS)
    counts = {}
    if rows:
        counts = queries.counts_by_window(session, from_window=rows[-1].window, to_window=rows[0].window)
    columns = [(w.window, counts.get(w.window, {})) for w in reversed(rows)]
    reasons = repo.rejections_by_reason(
        session, from_window=rows[-1].window if rows else None, to_window=rows[0].window if rows else None
    )
    return _render(
        request, "windows.html", windows=[window_public(w) for w in rows[:50]], counts=counts,
        timeline=charts.stacked_columns(f"Receipts per window (last {len(rows)})", columns),
        rejections=charts.bar_chart("Rejections by reason", list(reasons.items())),
    )


@router.get("/window/{window}", response_class=HTMLResponse, responses=NOT_FOUND)
def window_page(request: Request, session: SessionDep, window: WindowPath) -> HTMLResponse:
    row = repo.get_window(session, window=window)
    if row is None:
        return _not_found(request, f"unknown window {window}")
    rows = repo.window_evaluations(session, window=window, limit=1000)
    return _render(
        request, "window.html", window=window_public(row), counts=repo.window_counts(session, window=window),
        receipts=[receipt(r, window_status=row.status) for r in rows],
    )
