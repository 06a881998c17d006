"""Run the real ``gauntlet`` command line with test hooks: ``python -m testing.run [HOOKS] -- ARGS``.

    python -m testing.run --crash-at after_publish -- validator run --windows 3
    python -m testing.run --mode copycat --target 5F... -- miner run --hotkey copycat

The process is the production one (same entry point, same loops, same flags after ``--``)
plus what the hooks install before it starts:

* ``--crash-at POINT`` installs ``testing.faults.crash_at(POINT)`` as the ``protocol.faults``
  hook: the process SIGKILLs itself when it reaches that point (the restart tests).
* ``--mode MODE [--target HOTKEY ...]`` (``miner run`` only) passes the adversary's factory
  (``testing.modes``) to the miner command as its miner factory (the local network's
  adversaries; ``--target`` repeats or takes a comma list).

Bad hook arguments exit 2 with a usage line before anything is connected.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# First: gauntlet.cli sets the OpenMP wait policy, which must happen before torch loads
# (testing.modes imports the adversaries, hence torch, so it is imported only in main).
from gauntlet.cli import app
from protocol import faults
from testing.faults import POINTS, crash_at

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m testing.run",
                                usage="%(prog)s [--crash-at POINT] [--mode MODE [--target HOTKEY ...]] -- ARGS")
    p.add_argument("--crash-at", choices=POINTS, help="SIGKILL this process at the named fault point")
    p.add_argument("--mode", help="adversary miner mode (testing.modes); only with `miner run`")
    p.add_argument("--target", action="append", default=[], help="victim hotkey(s) of the mode")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Install the requested hooks, then hand ``ARGS`` to the real ``gauntlet`` app in this process."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if "--" not in args:
        parser.error("separate the hooks from the gauntlet arguments with --")
    split = args.index("--")
    hooks, command = parser.parse_args(args[:split]), args[split + 1:]
    factory = None
    if hooks.mode is not None:
        if command[:2] != ["miner", "run"]:
            parser.error("--mode applies to `miner run` only")
        from testing import modes

        try:
            factory = modes.factory(hooks.mode, modes.split_targets(hooks.target))
        except ValueError as exc:
            parser.error(str(exc))
    elif hooks.target:
        parser.error("--target needs --mode")
    if hooks.crash_at:
        faults.install(crash_at(hooks.crash_at))
    app(command, prog_name="gauntlet", obj=factory)


if __name__ == "__main__":
    main()
