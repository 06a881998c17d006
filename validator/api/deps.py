"""Annotated dependencies and parameter types shared by the API routes.

Routes stay thin by declaring what they need here: ``SessionDep`` (a database session per
request), ``CacheDep`` (the response cache, for health), and validated parameter aliases.
Bounds are chosen so that anything that passes validation is also valid for the database
(a window or uid beyond PostgreSQL's ``integer`` would otherwise surface as a 500).
``strict_query`` rejects query parameters a route does not declare, so a typo such as
``?limt=5`` is a 422 instead of being silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from validator.api.cache import ResponseCache
from validator.db.repo import MAX_PAGE

MAX_INT32 = 2**31 - 1
MAX_OFFSET = 1_000_000
MAX_UID = 65_535
#: Most windows a chart or series may span: 256 peers x 1,000 windows is the sizing target.
MAX_LAST = 1000
DEFAULT_LAST = 200
#: SS58 addresses: base58 (no 0, O, I, l), 40-60 characters (a 32-byte key is 47-48).
SS58_PATTERN = r"^[1-9A-HJ-NP-Za-km-z]{40,60}$"


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_cache(request: Request) -> ResponseCache:
    return request.app.state.cache  # type: ignore[no-any-return]


SessionDep = Annotated[Session, Depends(get_session)]
CacheDep = Annotated[ResponseCache, Depends(get_cache)]

HotkeyPath = Annotated[str, Path(pattern=SS58_PATTERN, description="SS58 hotkey address.")]
HotkeyQuery = Annotated[str | None, Query(pattern=SS58_PATTERN, description="SS58 hotkey address.")]
WindowPath = Annotated[int, Path(ge=0, le=MAX_INT32, description="Window number.")]
WindowQuery = Annotated[int | None, Query(ge=0, le=MAX_INT32)]
UidPath = Annotated[int, Path(ge=0, le=MAX_UID, description="Subnet uid.")]
UidQuery = Annotated[int | None, Query(ge=0, le=MAX_UID, description="Subnet uid.")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Page size (1-{MAX_PAGE}).")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")]
Last = Annotated[int, Query(ge=1, le=MAX_LAST, description=f"How many of the most recent windows (1-{MAX_LAST}).")]


_DECLARED: dict[int, frozenset[str]] = {}


def _declared_query(route: Any) -> frozenset[str]:
    """Aliases of the query parameters of ``route`` and of its dependencies (memoised)."""
    found = _DECLARED.get(id(route))
    if found is not None:
        return found
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    _DECLARED[id(route)] = frozenset(names)
    return _DECLARED[id(route)]


async def strict_query(request: Request) -> None:
    """422 for query parameters the matched route does not declare."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    unknown = sorted(set(request.query_params) - _declared_query(route))
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", name), "msg": "Unknown query parameter", "input": None}
                for name in unknown
            ]
        )
