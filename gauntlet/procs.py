"""Child-process supervision for ``gauntlet localnet``: start, watch, restart, stop cleanly.

Every child runs in its own session (process group), so stopping it also stops anything
it spawned (torch helper processes, uvicorn workers). ``stop_all`` sends SIGTERM to each
group, waits, then SIGKILLs what is left; it is idempotent and is called from
``finally``, ``atexit`` and the SIGINT/SIGTERM handlers alike, so neither Ctrl-C nor an
exception leaves a stray process behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: bool = False  # restart when it dies unexpectedly (the validator)
    restart_delay_s: float = 0.0  # wait this long before restarting (systemd's RestartSec)
    proc: subprocess.Popen | None = None
    died_at: float | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Owns the children of one local network."""

    def __init__(self, run_dir: Path, cwd: Path) -> None:
        self.run_dir, self.cwd = run_dir, cwd
        self.children: dict[str, Child] = {}
        self._stopped = False
        atexit.register(self.stop_all)

    def start(self, name: str, argv: list[str], env: dict[str, str], *, restart: bool = False,
              restart_delay_s: float = 0.0) -> Child:
        log_path = self.run_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        child = self.children.get(name) or Child(name, argv, env, log_path, restart, restart_delay_s)
        self.children[name] = child
        child.died_at = None
        with open(log_path, "ab") as log:
            child.proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self._write_pids()
        return child

    def _write_pids(self) -> None:
        pids = {n: c.proc.pid for n, c in self.children.items() if c.proc is not None}
        (self.run_dir / "pids.json").write_text(json.dumps(pids, indent=1))

    def check(self) -> list[str]:
        """Restart children marked ``restart`` that died; returns notes on every unexpected exit."""
        notes = []
        for child in self.children.values():
            if child.proc is None or child.proc.poll() is None:
                continue
            rc = child.proc.returncode
            if child.restart and child.died_at is None:
                child.died_at = time.monotonic()
                child.exits.append(rc)
                if child.restart_delay_s:
                    notes.append(f"{child.name} exited ({rc}); restarting in {child.restart_delay_s:.0f}s")
            if child.restart:
                if time.monotonic() - (child.died_at or 0.0) < child.restart_delay_s:
                    continue
                child.restarts += 1
                notes.append(f"{child.name} exited ({rc}); restarting (restart #{child.restarts})")
                self.start(child.name, child.argv, child.env, restart=True)
            else:
                child.exits.append(rc)
                notes.append(f"{child.name} exited ({rc}); see {child.log_path}")
                child.proc = None
        return notes

    def alive(self, name: str) -> bool:
        child = self.children.get(name)
        return child is not None and child.proc is not None and child.proc.poll() is None

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every process group, then SIGKILL whatever is still there after ``timeout_s``."""
        if self._stopped:
            return
        self._stopped = True
        live = [c.proc for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in live:  # the leader may be gone while its group lives on: kill the group either way
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def raise_on_signals() -> None:
    """Turn SIGTERM (and SIGHUP) into KeyboardInterrupt so the caller's ``finally`` runs."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
