"""Registry of miner modes: what ``gauntlet miner run --mode NAME`` builds.

Only ``honest`` (:class:`miner.loop.Miner`) is built in. Every other mode is a subclass of
``Miner`` that lives *outside* the production package (the adversaries the tests and the
local network run against the validator are in the top-level ``testing`` package), and is
found through the entry-point group ``gauntlet.miner_modes``::

    [project.entry-points."gauntlet.miner_modes"]
    copycat = "testing.adversaries:Copycat"

Entry points are read lazily and a mode's module is imported only when that mode is
resolved, so the honest miner never imports test code, and another package can add modes
by declaring its own entry points without any change here. ``register`` adds a mode in
process (tests); it takes precedence over an entry point of the same name.

A mode class states what it needs instead of being listed in a central table:

* ``needs_targets: int`` - how many ``--target`` hotkeys it cannot run without (default 0);
* ``targets`` - a class attribute present only on modes that take targets; ``build_miner``
  sets it on the instance;
* ``configure(targets)`` - an optional hook run once after construction for per-mode setup.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from miner.loop import Miner

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "gauntlet.miner_modes"
HONEST = "honest"

# A mode: ``type[Miner]`` or any callable with Miner's constructor signature returning a Miner.
MinerFactory = Callable[..., Miner]

_registered: dict[str, MinerFactory] = {HONEST: Miner}
_loaded: dict[str, MinerFactory] = {}  # entry points already imported (kept apart so names() keeps its order)


def register(name: str, factory: MinerFactory) -> None:
    """Make ``factory`` available as mode ``name`` in this process (wins over an entry point)."""
    if not name or name != name.strip():
        raise ValueError(f"invalid miner mode name {name!r}")
    if name == HONEST and factory is not Miner:
        raise ValueError("the honest mode cannot be replaced")
    _registered[name] = factory


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
    """Every known mode: ``honest``, then the registered ones, then the declared ones."""
    return [*_registered, *(n for n in _entry_points() if n not in _registered)]


def adversary_names() -> list[str]:
    """Every known mode except ``honest`` (what the local network runs for ``--adversaries all``)."""
    return [n for n in names() if n != HONEST]


def resolve(name: str) -> MinerFactory:
    """The factory of mode ``name``; ValueError naming the valid modes if there is none."""
    factory = _registered.get(name) or _loaded.get(name)
    if factory is not None:
        return factory
    ep = _entry_points().get(name)
    if ep is None:
        raise ValueError(f"unknown miner mode {name!r}; valid modes: {', '.join(names())}")
    try:
        factory = ep.load()
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"miner mode {name!r} is declared as {ep.value!r} but cannot be loaded: {exc}") from None
    if not callable(factory):
        raise ValueError(f"miner mode {name!r} ({ep.value}) is not a class or factory")
    _loaded[name] = factory
    return factory


def build_miner(mode: str, *args: Any, targets: Sequence[str] | None = None, **kwargs: Any) -> Miner:
    """A miner of ``mode``: ``factory(*args, **kwargs)``, given its target hotkeys if it takes any."""
    factory = resolve(mode)
    wanted = [t for t in targets or () if t]
    need = int(getattr(factory, "needs_targets", 0))
    if len(wanted) < need:
        raise ValueError(f"miner mode {mode!r} needs {need} --target HOTKEY (whose upload to use), "
                         f"got {len(wanted)}")
    miner = factory(*args, **kwargs)
    if hasattr(miner, "targets"):
        miner.targets = list(wanted)
    elif wanted:
        log.warning("miner mode %r takes no --target; ignoring %s", mode, ", ".join(wanted))
    configure = getattr(miner, "configure", None)
    if callable(configure):
        configure(list(wanted))
    return miner
