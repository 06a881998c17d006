"""Registry of adversary miner modes: what ``python -m testing.run --mode NAME -- miner run ...`` builds.

The production miner (``gauntlet miner run``) only builds the honest :class:`miner.loop.Miner`
and knows no modes. Each adversary is a subclass of ``Miner`` (``testing.adversaries``) that
the harness hands to the real command line as its miner factory (``miner.cli.MinerFactory``),
so a hostile process runs exactly the production loop except for the step it overrides.

Modes are found through the entry-point group ``gauntlet.miner_modes``::

    [project.entry-points."gauntlet.miner_modes"]
    copycat = "testing.adversaries:Copycat"

Entry points are read lazily and a mode's module is imported only when that mode is
resolved, and another package can add modes by declaring its own entry points without any
change here. ``register`` adds a mode in process (tests); it takes precedence over an entry
point of the same name.

A mode class states what it needs instead of being listed in a central table:

* ``needs_targets: int`` - how many ``--target`` hotkeys it cannot run without (default 0);
* ``targets`` - a class attribute present only on modes that take targets; ``build_miner``
  sets it on the instance;
* ``configure(targets)`` - an optional hook run once after construction for per-mode setup.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from miner.cli import MinerFactory
from miner.loop import Miner

__all__ = ["ENTRY_POINT_GROUP", "build_miner", "factory", "names", "register", "resolve", "split_targets"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "gauntlet.miner_modes"

_registered: dict[str, MinerFactory] = {}
_loaded: dict[str, MinerFactory] = {}  # entry points already imported (kept apart so names() keeps its order)


def register(name: str, mode: MinerFactory) -> None:
    """Make ``mode`` available as mode ``name`` in this process (wins over an entry point)."""
    if not name or name != name.strip():
        raise ValueError(f"invalid miner mode name {name!r}")
    _registered[name] = mode


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    """Declared modes by name; cached because scanning installed distributions is slow."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            log.warning("miner mode %r is declared twice (%s, %s); using the first", ep.name,
                        found[ep.name].value, ep.value)
            continue
        found.setdefault(ep.name, ep)
    return found


def names() -> list[str]:
    """Every known adversary mode: the registered ones, then the declared ones."""
    return [*_registered, *(n for n in _entry_points() if n not in _registered)]


def resolve(name: str) -> MinerFactory:
    """The class (or factory) of mode ``name``; ValueError naming the valid modes if there is none."""
    found = _registered.get(name) or _loaded.get(name)
    if found is not None:
        return found
    ep = _entry_points().get(name)
    if ep is None:
        raise ValueError(f"unknown miner mode {name!r}; valid modes: {', '.join(names())}")
    try:
        found = ep.load()
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"miner mode {name!r} is declared as {ep.value!r} but cannot be loaded: {exc}") from None
    if not callable(found):
        raise ValueError(f"miner mode {name!r} ({ep.value}) is not a class or factory")
    _loaded[name] = found
    return found


def split_targets(values: Sequence[str] | None) -> list[str]:
    """``--target A --target B,C`` -> ``[A, B, C]``: both spellings, order kept, blanks dropped."""
    return [t.strip() for v in values or () for t in v.split(",") if t.strip()]


def _check_targets(mode: str, cls: MinerFactory, targets: Sequence[str]) -> list[str]:
    wanted = [t for t in targets if t]
    need = int(getattr(cls, "needs_targets", 0))
    if len(wanted) < need:
        raise ValueError(f"miner mode {mode!r} needs {need} --target HOTKEY (whose upload to use), "
                         f"got {len(wanted)}")
    return wanted


def build_miner(mode: str, *args: Any, targets: Sequence[str] | None = None, **kwargs: Any) -> Miner:
    """A miner of ``mode``: ``cls(*args, **kwargs)``, given its target hotkeys if it takes any."""
    cls = resolve(mode)
    wanted = _check_targets(mode, cls, targets or ())
    miner = cls(*args, **kwargs)
    if hasattr(miner, "targets"):
        miner.targets = list(wanted)
    elif wanted:
        log.warning("miner mode %r takes no --target; ignoring %s", mode, ", ".join(wanted))
    configure = getattr(miner, "configure", None)
    if callable(configure):
        configure(list(wanted))
    return miner


def factory(mode: str, targets: Sequence[str] = ()) -> MinerFactory:
    """The miner factory that ``gauntlet miner run`` calls to build a ``mode`` miner.

    The mode and its targets are checked here, before the command connects to anything, so a
    typo fails at once rather than after the chain and the wallet are set up.
    """
    _check_targets(mode, resolve(mode), targets)
    return functools.partial(build_miner, mode, targets=list(targets))
