"""Fault hooks for ``protocol.faults``: die like ``kill -9`` at a named point of a real process.

The restart tests need a validator killed after it published a window's aggregate but
before the database commit, and a miner killed after its upload but before it recorded it.
A signal sent from outside cannot hit such a moment reliably; the process itself can. The
production loops only call ``faults.point(NAME)``; ``testing.run --crash-at NAME`` installs
:func:`crash_at` before it starts the real command line, so the process under test is the
production code path plus this one hook.

Points in the production code:

    after_publish   validator, after the window's proposal is stored, before the DB transaction
    after_persist   miner, after the pending upload is saved locally, before the upload
    after_upload    miner, after the upload, before progress records it
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator

from protocol import faults

__all__ = ["POINTS", "crash_at", "installed"]

POINTS = ("after_publish", "after_persist", "after_upload")

log = logging.getLogger(__name__)


def crash_at(name: str) -> faults.Hook:
    """A hook that SIGKILLs this process at point ``name`` (no cleanup, no flush: a real ``kill -9``)."""
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}; points: {', '.join(POINTS)}")

    def hook(point: str) -> None:
        if point == name:
            log.warning("fault point %s: killing the process (SIGKILL)", point)
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


@contextlib.contextmanager
def installed(hook: faults.Hook) -> Iterator[None]:
    """``hook`` for the duration of a ``with`` block (in-process tests), then the previous one again."""
    old = faults.install(hook)
    try:
        yield
    finally:
        faults.install(old)
