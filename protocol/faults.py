"""Named fault points: the one place tests may inject a failure into the production loops.

The restart tests must kill a validator or miner at the worst moment (after a proposal is
published but before the database commit, after an upload but before the chain commit) to
prove the recovery code. Production code marks those moments with ``point("after_publish")``;
by default that does nothing. A harness (``testing.faults``) installs a hook with
:func:`install` in the same process before calling the real entry point, so no environment
variable, flag or test import reaches the production packages.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Hook", "install", "point"]

Hook = Callable[[str], None]


def _nothing(name: str) -> None:
    """The production hook: a fault point is a no-op."""


_hook: Hook = _nothing


def point(name: str) -> None:
    """Mark a named fault point; the installed hook decides what, if anything, happens here."""
    _hook(name)


def install(hook: Hook | None) -> Hook:
    """Install ``hook`` for every later :func:`point` (``None`` restores the no-op); returns the old one."""
    global _hook
    old, _hook = _hook, hook or _nothing
    return old
