"""The score API as ``gauntlet audit`` reads it: untrusted, size-capped, validated answers.

Whoever runs the API may be the party being audited, so every answer is read with a byte cap
(streamed, never buffered beyond it), parsed as JSON (no pickle, nothing executable) and
validated against the API's own response schemas (``validator.api.schemas``) before any field
is used. Any failure is an :class:`AuditError` with one readable line.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import ValidationError

from validator.api.schemas import Receipt, WindowSummary
from validator.db.models import FINAL_WINDOW_STATUSES

#: Largest answer read (a page of 1,000 receipts with per-page losses is ~2 MB).
MAX_RESPONSE_BYTES = 32 << 20
PAGE = 1000  # the API's largest page (validator.db.repo.MAX_PAGE)
MAX_PAGES = 50  # 50,000 receipts per listing: far beyond a window of 256 peers or a peer's ban horizon


class AuditError(RuntimeError):
    """The audit cannot be carried out (as opposed to a mismatch); the message is one line."""


class ScoreApi:
    """GET-only client of ``/api/v1`` with the caps above."""

    def __init__(self, base_url: str, *, timeout_s: float = 15.0, client: httpx.Client | None = None,
                 max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.base = base_url.rstrip("/")
        self.max_bytes = max_bytes
        self._client = client or httpx.Client(timeout=timeout_s, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, params: dict[str, Any] | None = None, *, missing: str | None = None) -> Any:
        """The JSON body of ``GET path``; on a 404, ``AuditError(missing)``, or None when ``missing`` is empty."""
        url = f"{self.base}/api/v1{path}"
        try:
            with self._client.stream("GET", url, params=params) as response:
                if response.status_code == 404 and missing is not None:
                    if not missing:
                        return None
                    raise AuditError(missing)
                if response.status_code != 200:
                    raise AuditError(f"{url} answered HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise AuditError(f"{url} answered more than {self.max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise AuditError(f"cannot reach the score API at {self.base}: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise AuditError(f"{url} did not answer JSON") from None

    def window(self, window: int) -> WindowSummary:
        """The window's summary; :class:`AuditError` unless its scoring is final (seed revealed)."""
        data = self.get(f"/windows/{window}", missing=f"window {window} is unknown to the score API at {self.base}")
        summary = _validate(WindowSummary, data, f"window {window}")
        if summary.status not in FINAL_WINDOW_STATUSES or not summary.random_seed_hex:
            raise AuditError(f"window {window} is not scored yet (status {summary.status}): its random seed is not "
                             "revealed, so its random pages cannot be recomputed")
        return summary

    def receipts(self, window: int) -> list[Receipt]:
        """Every receipt of ``window``."""
        return self._pages(f"/windows/{window}/evaluations", f"receipts of window {window}", until=None)

    def history(self, hotkey: str, *, down_to: int) -> list[Receipt]:
        """The peer's receipts newest first, at least back to window ``down_to`` (or its first one)."""
        return self._pages(f"/peers/{hotkey}/history", f"history of {hotkey}", until=down_to, unknown_ok=True)

    def _pages(self, path: str, what: str, *, until: int | None, unknown_ok: bool = False) -> list[Receipt]:
        out: list[Receipt] = []
        for page in range(MAX_PAGES):
            data = self.get(path, {"limit": PAGE, "offset": page * PAGE}, missing="" if unknown_ok else None)
            if data is None:  # a hotkey the API never saw: no history
                return out
            items = _validate_page(data, what)
            out.extend(items)
            if len(items) < PAGE or (until is not None and items and items[-1].window < until):
                return out
        raise AuditError(f"{what}: more than {MAX_PAGES * PAGE} receipts")


def _validate(model: Any, data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise AuditError(f"the score API's {what} is malformed ({where}: {first['msg']})") from None


def _validate_page(data: Any, what: str) -> list[Receipt]:
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise AuditError(f"the score API's {what} is not a page of receipts")
    return [_validate(Receipt, item, what) for item in data["items"]]
