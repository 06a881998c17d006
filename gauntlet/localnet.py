"""``gauntlet localnet``: the whole system on one machine, in one command.

It creates a run directory with dev wallets, an embedded local chain with fast blocks, a
hyper-parameter file tuned for a small CPU machine (tiny model, short windows), and starts
real processes: the validator (restarted if it dies, like a service manager would), a
Stage-2 worker when Redis is configured, the score API, honest miners of increasing effort
(inner steps), and one miner per adversarial mode (``miner.adversaries``). Each scored
window is printed as a table read from the validator's database; at the end come the
leaderboard, the on-chain incentives after an epoch, and the dashboard URL. Ctrl-C,
SIGTERM or any error stops every child's process group (``gauntlet.procs``).

Embedded defaults: local chain file, SQLite, local directory storage. PostgreSQL and Redis
are used only when ``GAUNTLET_DATABASE_URL`` / ``GAUNTLET_REDIS_URL`` are set.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

REPO = Path(__file__).resolve().parents[1]
NETUID = 1


@dataclass(frozen=True)
class Peer:
    name: str
    kind: str  # "honest" or "adversary"
    mode: str
    steps: int
    target: str | None = None  # name of the victim peer


def plan_peers(honest: int, adversaries: str) -> list[Peer]:
    """Honest miners with 2, 4, 8, ... inner steps, then one process per adversary mode."""
    from miner.adversaries import ADVERSARY_MODES

    peers = [Peer(f"honest-{2 << i}", "honest", "honest", 2 << i) for i in range(honest)]
    if adversaries == "none":
        modes: list[str] = []
    elif adversaries == "all":
        modes = list(ADVERSARY_MODES)
    else:
        modes = [m.strip() for m in adversaries.split(",") if m.strip()]
        unknown = sorted(set(modes) - set(ADVERSARY_MODES))
        if unknown:
            raise typer.BadParameter(f"unknown adversary mode(s) {unknown}; valid: {', '.join(ADVERSARY_MODES)}")
    victim = peers[-1].name if peers else None  # the strongest honest miner is the one worth copying
    for mode in modes:
        if mode == "sybil":
            peers += [Peer("sybil-a", "adversary", "sybil", 1, victim), Peer("sybil-b", "adversary", "sybil", 1, "sybil-a")]
        else:
            target = victim if mode in ("copycat", "copycat-noise", "replay") else None
            peers.append(Peer(mode, "adversary", mode, 1, target))
    return peers


def localnet_hparams(blocks_per_window: int, grace_s: float) -> Any:
    """Consensus parameters for a 2-core dev box: tiny model, short windows, small payload cap."""
    from protocol.hparams import HParams

    return HParams().override(**{
        "windows.blocks_per_window": blocks_per_window, "windows.upload_grace_s": grace_s,
        "data.pages_per_window": 2, "data.eval_pages": 4, "inner.steps": 4, "inner.lr": 1e-3,
        "outer.checkpoint_every": 5, "weights.set_every_windows": 1, "max_upload_bytes": 1 << 20,
        "scoring.sync_max_behind": 2,
    })


def _page_store(home: Path, hp: Any) -> None:
    """Build (once per machine) the KJV page store and link it into the run's home."""
    from protocol.pages import default_store

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gauntlet"
    store = default_store(cache, hp.data)
    (home / "data").mkdir(parents=True, exist_ok=True)
    link = home / "data" / store.root.name
    if not link.exists():
        os.symlink(store.root, link)


class LocalNet:
    """One run: directory, chain, wallets, processes, live view."""

    def __init__(self, run_dir: Path, *, block_time: float, blocks_per_window: int, grace_s: float,
                 api_port: int, seed: int) -> None:
        self.run_dir, self.block_time, self.api_port, self.seed = run_dir, block_time, api_port, seed
        self.hp = localnet_hparams(blocks_per_window, grace_s)
        self.hp_path = run_dir / "hparams.json"
        self.db_url = os.environ.get("GAUNTLET_DATABASE_URL") or f"sqlite:///{run_dir / 'validator.db'}"
        self.redis_url = os.environ.get("GAUNTLET_REDIS_URL")
        self.hotkeys: dict[str, str] = {}  # peer name -> ss58

    # ---------------------------------------------------------------- setup

    def setup(self, peers: list[Peer]) -> Any:
        from chain.local import LocalChain
        from chain.wallets import create_wallet

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.hp_path.write_text(self.hp.model_dump_json(indent=1))
        _page_store(self.run_dir / "home", self.hp)
        wallets = self.run_dir / "wallets"
        validator = create_wallet("validator", "default", wallets)
        for p in peers:
            self.hotkeys[p.name] = create_wallet("miners", p.name, wallets).hotkey.ss58_address
        chain = LocalChain.create(self.run_dir / "chain.db", block_time_s=self.block_time,
                                  tempo=self.hp.windows.blocks_per_window, weights_rate_limit=0, immunity_period=10**6)
        chain.register(validator.hotkey, NETUID)
        chain.stake(validator.hotkey, 1000.0)
        for p in peers:
            chain.register(create_wallet_hotkey(wallets, p.name), NETUID)
        names = {hk: (n, next(p.kind for p in peers if p.name == n)) for n, hk in self.hotkeys.items()}
        (self.run_dir / "peers.json").write_text(json.dumps(
            {n: {"hotkey": hk, **next(p.__dict__ for p in peers if p.name == n)} for n, hk in self.hotkeys.items()},
            indent=1))
        self.names = names
        self.validator_hotkey = validator.hotkey.ss58_address
        return chain

    def env(self, storage: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(GAUNTLET_HOME=str(self.run_dir / "home"), GAUNTLET_CHAIN=f"local:{self.run_dir / 'chain.db'}",
                   GAUNTLET_HPARAMS=str(self.hp_path), GAUNTLET_WALLET_PATH=str(self.run_dir / "wallets"),
                   GAUNTLET_DATABASE_URL=self.db_url, GAUNTLET_STORAGE=storage, GAUNTLET_NETUID=str(NETUID),
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   PYTHONHASHSEED=str(self.seed),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **extra)
        return env

    def start(self, sup: Any, peers: list[Peer]) -> None:
        gauntlet = [sys.executable, "-m", "gauntlet"]
        vstore = f"file://{self.run_dir / 'store' / 'validator'}"
        venv = self.env(vstore, GAUNTLET_WALLET_NAME="validator", GAUNTLET_WALLET_HOTKEY="default")
        sup.start("validator", [*gauntlet, "validator", "run", "--allow-local-storage", "--poll-s", "0.5"], venv,
                  restart=True)
        if self.redis_url:
            sup.start("worker", [*gauntlet, "validator", "worker", "--allow-local-storage", "--threads", "1"], venv,
                      restart=True)
        sup.start("api", [*gauntlet, "api", "--port", str(self.api_port)], venv)
        for p in peers:
            argv = [*gauntlet, "miner", "run", "--wallet-name", "miners", "--hotkey", p.name, "--mode", p.mode, "--inner-steps", str(p.steps)]
            if p.target:
                argv += ["--target", self.hotkeys[p.target]]
            sup.start(p.name, argv, self.env(f"file://{self.run_dir / 'store' / p.name}"))

    # ---------------------------------------------------------------- run

    def watch(self, sup: Any, chain: Any, windows: int, echo: Any) -> list[int]:
        """Print each window as it is scored until ``windows`` are; returns them."""
        from gauntlet.localnet_view import View, format_window
        from protocol.windows import window_of

        view = View(self.db_url, self.names)
        seen: list[int] = []
        t0, last_progress = time.monotonic(), 0.0
        window_s = self.hp.windows.blocks_per_window * self.block_time
        try:
            while len(seen) < windows:
                for note in sup.check():
                    echo(f"! {note}")
                for w in view.scored_windows():
                    if w not in seen:
                        seen.append(w)
                        echo(format_window(w, view.window_rows(w), view.window_timings(w)))
                now = time.monotonic()
                if now - last_progress >= max(5.0, window_s / 3):
                    block = chain.block()
                    echo(f"· block {block}  window {window_of(block, self.hp.windows)}  scored {len(seen)}/{windows}"
                         f"  elapsed {now - t0:.0f}s")
                    last_progress = now
                if not sup.alive("validator") and not sup.children["validator"].restart:
                    raise RuntimeError("the validator is not running")
                time.sleep(0.5)
        finally:
            view.close()
        return seen

    def finish(self, chain: Any, echo: Any, elapsed: float, restarts: int) -> dict[str, Any]:
        """Wait for an epoch after the last weight set; print leaderboard and incentives; write summary.json."""
        from gauntlet.localnet_view import View, format_incentives, format_leaderboard, incentives

        view = View(self.db_url, self.names)
        try:
            tempo = chain.params.tempo
            target = (chain.block() // tempo + 1) * tempo + 1
            echo(f"· waiting for the epoch at block {target - 1} to pay out the last weights")
            chain.wait_for_block(target, timeout_s=tempo * self.block_time * 2 + 10)
            chain.subnets()  # touching the chain runs the due epoch
            board, inc = view.peers(), incentives(chain, NETUID, self.names)
            self.save_receipts(view.scored_windows()[-1], echo)
            echo(format_leaderboard(board))
            echo(format_incentives(inc, chain.block()))
            summary = {
                "run_dir": str(self.run_dir), "elapsed_s": round(elapsed, 1), "validator_restarts": restarts,
                "scored_windows": view.scored_windows(), "weight_set_windows": view.weight_set_windows(),
                "peers": {r.name: {"kind": r.kind, "score": r.score, "weight": r.weight} for r in board},
                "incentive": {name: value for name, _kind, _uid, value in inc},
            }
        finally:
            view.close()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary


    def save_receipts(self, window: int, echo: Any) -> None:
        """Ask the running API for a window's receipts (what a user would see) and keep them."""
        import httpx

        url = f"http://127.0.0.1:{self.api_port}/api/v1/windows/{window}/evaluations"
        try:
            r = httpx.get(url, params={"limit": 100}, timeout=10)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            echo(f"! the score API did not answer {url}: {exc}")
            return
        (self.run_dir / "receipts.json").write_text(json.dumps(r.json(), indent=1))
        echo(f"· receipts of window {window}: {url}")


def create_wallet_hotkey(wallets: Path, name: str) -> Any:
    from chain.wallets import load_hotkey

    return load_hotkey(wallets, "miners", name)


def localnet(
    windows: int = typer.Option(6, "--windows", help="Windows to score before stopping."),
    honest: int = typer.Option(3, "--honest", help="Honest miners (2, 4, 8, ... inner steps)."),
    adversaries: str = typer.Option("all", "--adversaries", help="all, none, or a comma list of modes."),
    block_time: float = typer.Option(0.5, "--block-time", help="Seconds per local-chain block."),
    blocks_per_window: int = typer.Option(60, "--blocks-per-window", help="Blocks per window (60 x 0.5s = 30s)."),
    grace_s: float = typer.Option(2.0, "--upload-grace", help="Upload grace after a window ends (seconds)."),
    run_dir: Path | None = typer.Option(None, "--dir", help="Run directory (default: a new temporary one)."),
    api_port: int = typer.Option(8000, "--api-port", help="Port of the score API and dashboard."),
    keep: bool = typer.Option(False, "--keep", help="Keep a temporary run directory (logs, DB, chain)."),
    seed: int = typer.Option(0, "--seed", help="Seed for hashing and noise (runs are repeatable)."),
) -> None:
    """Run a local network (chain, validator, API, honest and adversarial miners) and show who gets paid."""
    from gauntlet.procs import Supervisor, raise_on_signals

    temporary = run_dir is None
    run_dir = (run_dir or Path(tempfile.mkdtemp(prefix="gauntlet-localnet-"))).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise typer.BadParameter(f"{run_dir} is not empty; pick a new --dir")
    peers = plan_peers(honest, adversaries)
    net = LocalNet(run_dir, block_time=block_time, blocks_per_window=blocks_per_window, grace_s=grace_s,
                   api_port=api_port, seed=seed)
    echo = typer.echo
    window_s = blocks_per_window * block_time
    echo(f"gauntlet localnet: {len(peers)} miners ({sum(p.kind == 'honest' for p in peers)} honest), "
         f"{windows} windows of {window_s:.0f}s, run dir {run_dir}")
    echo(f"  database {net.db_url}  redis {net.redis_url or 'off'}  logs {run_dir / 'logs'}/*.log")
    sup = Supervisor(run_dir, REPO)
    raise_on_signals()
    t0 = time.monotonic()
    status = 1
    try:
        chain = net.setup(peers)
        net.start(sup, peers)
        echo(f"  started {len(sup.children)} processes; dashboard http://127.0.0.1:{api_port}/ "
             "(first window after miners load: ~1 min)")
        net.watch(sup, chain, windows, echo)
        restarts = sup.children["validator"].restarts
        net.finish(chain, echo, time.monotonic() - t0, restarts)
        echo(f"dashboard: http://127.0.0.1:{api_port}/  (API http://127.0.0.1:{api_port}/api/v1/leaderboard)")
        echo(f"done in {time.monotonic() - t0:.0f}s; logs in {run_dir / 'logs'}")
        status = 0
    except KeyboardInterrupt:
        echo("interrupted; stopping every process")
        status = 130
    finally:
        sup.stop_all()
        if temporary and not keep and status == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
    if status:
        raise typer.Exit(status)
