"""The dashboard: server-rendered pages over the same database (no JavaScript needed).

``/`` what a subnet owner looks at first: the global model's loss over windows, receipts per
window by outcome, whom this validator follows, then the leaderboard; ``/peer/{hotkey}`` a peer's
score, weight and rating history and its receipts; ``/windows`` the window timeline with
rejections by reason; ``/window/{window}`` one window's receipts. Every chart spans the last
``?last=N`` windows (default 200, at most 1,000) so a page costs the same at 1,000 windows as at
10. Charts are SVG rendered here (``validator.api.charts``); static files come from ``/static``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from validator.api import charts, queries
from validator.api.deps import DEFAULT_LAST, HotkeyPath, Last, SessionDep, WindowPath
from validator.api.routes import validators
from validator.api.schemas import FollowPublic, follow_public, peer_public, receipt, window_public
from validator.db import repo, weight_repo

router = APIRouter(tags=["dashboard"], default_response_class=HTMLResponse)
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[1] / "templates")
#: Receipts listed in a peer's table and windows in the windows table (the charts span ``last``).
RECEIPT_ROWS = 30
WINDOW_ROWS = 50
FRONT_REJECTION_WINDOWS = 100
HTML = {200: {"content": {"text/html": {}}, "description": "HTML page."}}
NOT_FOUND = {**HTML, 404: {"content": {"text/html": {}}, "description": "Not found (an HTML page)."}}


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _not_found(request: Request, message: str) -> HTMLResponse:
    return _render(request, "404.html", status_code=404, message=message)


@dataclass
class FollowView:
    """Whom this validator follows, and what its own window rows say about the shared history.

    From this validator's own window rows: the publisher whose aggregate it applied per window,
    null windows, and whether its hash chain is unbroken (theta_{W+1} it computed for W is the
    model it scored in W+1). Agreement with the other validators' weights is measured on chain by
    the validator after each window (``validator.agreement``) and shown beside it.
    """

    follow: FollowPublic | None
    own_hotkey: str | None
    windows: int
    publishers: list[tuple[str, int]] = field(default_factory=list)
    null_windows: int = 0
    undecided: int = 0
    chain_breaks: list[int] = field(default_factory=list)


def follow_view(rows: Sequence[Any], follow: FollowPublic | None, own_hotkey: str | None) -> FollowView:
    """Summarise ``queries.model_loss`` rows (oldest first) into a :class:`FollowView`."""
    applied = Counter(r.publisher for r in rows if r.next_model_hash is not None and r.publisher is not None)
    view = FollowView(follow=follow, own_hotkey=own_hotkey, windows=len(rows), publishers=applied.most_common(),
                      null_windows=sum(1 for r in rows if r.next_model_hash is not None and r.publisher is None),
                      undecided=sum(1 for r in rows if r.next_model_hash is None))
    for prev, nxt in pairwise(rows):
        if (nxt.window == prev.window + 1 and prev.next_model_hash and nxt.base_model_hash
                and prev.next_model_hash != nxt.base_model_hash):
            view.chain_breaks.append(prev.window)
    return view


def _loss_summary(rows: Sequence[Any]) -> dict[str, Any] | None:
    """Latest loss and its change over the charted windows (None without a measured window)."""
    measured = [r for r in rows if r.loss_before_random is not None]
    if not measured:
        return None
    first, latest = measured[0], measured[-1]
    return {"window": latest.window, "loss": latest.loss_before_random, "since": first.window,
            "change": latest.loss_before_random - first.loss_before_random}


@router.get("/", response_class=HTMLResponse, responses=HTML)
def index(request: Request, session: SessionDep, last: Last = DEFAULT_LAST) -> HTMLResponse:
    last_scored = repo.last_scored_window(session)
    peers = [peer_public(p, last_scored) for p in repo.leaderboard(session, limit=256)]
    losses = queries.model_loss(session, last=last)
    outcomes = queries.window_outcomes(session, last=last)
    # Rejections here are a glance (the windows page has them over ``last``): at most 100 windows,
    # since counting reasons reads every rejected row and was the costliest query of this page.
    recent = outcomes[-FRONT_REJECTION_WINDOWS:]
    lo = recent[0][0] if recent else None
    reasons = repo.rejections_by_reason(session, from_window=lo, to_window=last_scored)
    follow_row, run = repo.follow_state(session), repo.latest_run_config(session)
    follow = follow_view(losses, follow_public(follow_row) if follow_row is not None else None,
                         run.hotkey if run is not None else None)
    loss_chart = charts.line_chart("Global model loss on each window's random pages (\u03b8_W, before)", [
        charts.Series("loss", [(r.window, r.loss_before_random) for r in losses])])
    return _render(
        request, "index.html", peers=peers, last_scored=last_scored, weights=weight_repo.latest_weight_set(session),
        agreement=validators.agreement(session),
        total=repo.count_peers(session), last=last, spanned=len(losses), follow=follow,
        loss=_loss_summary(losses), loss_chart=loss_chart,
        outcomes=charts.stacked_columns("Receipts per window", [(w, c) for w, _, c in outcomes],
                                        width=560, height=200),
        rejections=charts.bar_chart(f"Rejections by reason, last {len(recent)} windows", list(reasons.items())),
    )


@router.get("/peer/{hotkey}", response_class=HTMLResponse, responses=NOT_FOUND)
def peer_page(request: Request, session: SessionDep, hotkey: HotkeyPath, last: Last = DEFAULT_LAST) -> HTMLResponse:
    row = repo.peer(session, hotkey=hotkey)
    if row is None:
        return _not_found(request, f"unknown peer {hotkey}")
    series = queries.peer_scores(session, hotkey=hotkey, last=last)
    rows = repo.peer_history(session, hotkey=hotkey, limit=RECEIPT_ROWS)
    statuses = queries.window_statuses(session, windows=(r.window for r in rows))
    receipts = [receipt(r, window_status=statuses.get(r.window, "open")) for r in rows]
    mu = [(r.window, r.rating_mu_after) for r in series]
    band = [(r.window, r.rating_mu_after - r.rating_sigma_after, r.rating_mu_after + r.rating_sigma_after)
            for r in series if r.rating_mu_after is not None and r.rating_sigma_after is not None]
    plots = [
        charts.line_chart("Final score", [charts.Series("score", [(r.window, r.final_score) for r in series])]),
        charts.line_chart("Weight", [charts.Series("weight", [(r.window, r.weight) for r in series],
                                                   color=charts.PALETTE[4])]),
        charts.line_chart("Loss improvement (before - after)", [
            charts.Series("assigned pages", [(r.window, r.loss_improvement_assigned) for r in series]),
            charts.Series("random pages", [(r.window, r.loss_improvement_random) for r in series],
                          color=charts.PALETTE[2]),
        ]),
        charts.line_chart("Rating \u03bc \u00b1 \u03c3", [charts.Series("rating", mu, color=charts.PALETTE[3], band=band)]),
    ]
    reasons = queries.peer_rejections(session, hotkey=hotkey)
    return _render(
        request, "peer.html", peer=peer_public(row, repo.last_scored_window(session)), plots=plots,
        last=last, spanned=len(series), receipts=receipts,
        rejections=charts.bar_chart("Rejections by reason", list(reasons.items())),
    )


@router.get("/windows", response_class=HTMLResponse, responses=HTML)
def windows_page(request: Request, session: SessionDep, last: Last = DEFAULT_LAST) -> HTMLResponse:
    outcomes = queries.window_outcomes(session, last=last)
    counts = {w: c for w, _, c in outcomes}
    rows = repo.windows(session, limit=min(WINDOW_ROWS, last))
    reasons = repo.rejections_by_reason(
        session, from_window=outcomes[0][0] if outcomes else None, to_window=outcomes[-1][0] if outcomes else None
    )
    return _render(
        request, "windows.html", windows=[window_public(w) for w in rows], counts=counts, last=last,
        timeline=charts.stacked_columns(f"Receipts per window (last {len(outcomes)})",
                                        [(w, c) for w, _, c in outcomes]),
        rejections=charts.bar_chart(f"Rejections by reason, last {len(outcomes)} windows", list(reasons.items())),
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
