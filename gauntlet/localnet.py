"""``gauntlet localnet``: the whole system on one machine, in one command.

It creates a run directory with dev wallets, an embedded local chain with fast blocks, a
hyper-parameter file tuned for a small CPU machine (tiny model, short windows), and starts
real processes: one or more validators of decreasing stake (each restarted if it dies, like
a service manager would; ``--late-validator K`` starts the last one K windows late), a
Stage-2 worker when Redis is configured, the score API of the first validator, honest
miners of increasing effort (inner steps), and one miner per adversarial mode
(``testing.adversaries``, run as ``python -m testing.run --mode NAME -- miner run ...``: the
real miner command with the adversary as its miner factory; the ``gauntlet`` script loads
the test harness only here, inside this command). Each scored window is printed as a table
read from the first validator's database, and with several validators a line per validator: its last scored
window, whether its model hash matches, whom it follows, and how its weights agree with
the others'. At the end come the leaderboard, the on-chain incentives after an epoch and
the dashboard URL. Ctrl-C, SIGTERM or any error stops every child's process group
(``gauntlet.procs``).

Embedded defaults: local chain file, SQLite, local directory storage. PostgreSQL and Redis
are used only when ``GAUNTLET_DATABASE_URL`` / ``GAUNTLET_REDIS_URL`` are set (for the first
validator; the others always keep a SQLite file in the run directory).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

REPO = Path(__file__).resolve().parents[1]
NETUID = 1
VALIDATOR_STAKES = (1000.0, 700.0, 500.0, 350.0, 250.0, 175.0, 125.0, 90.0)


@dataclass(frozen=True)
class ValidatorNode:
    name: str  # "validator", then "validator-2", ...
    stake: float
    db_url: str
    store_url: str
    wallet: str
    delay_windows: int = 0  # started this many windows after the others


def plan_validators(run_dir: Path, count: int, late_windows: int, first_db_url: str) -> list[ValidatorNode]:
    if not 1 <= count <= len(VALIDATOR_STAKES):
        raise typer.BadParameter(f"--validators must be between 1 and {len(VALIDATOR_STAKES)}")
    nodes = []
    for i in range(count):
        name = "validator" if i == 0 else f"validator-{i + 1}"
        nodes.append(ValidatorNode(
            name, VALIDATOR_STAKES[i], first_db_url if i == 0 else f"sqlite:///{run_dir / (name + '.db')}",
            f"file://{run_dir / 'store' / name}", name, late_windows if i == count - 1 and count > 1 else 0))
    return nodes


#: Inner steps of the score gamers (scaled-k, partial-pages): like the weakest honest miner, so
#: what they gain is the game's. Not 1: one AdamW step from a shared theta has nearly equal
#: magnitudes, so such miners keep about the same top-k (weight decay on theta decides), ~0.5-0.58
#: coverage of each other. The other adversaries take 1 step (a cheater's least effort).
GAMER_STEPS = 2


def _adversary_steps(mode: str) -> int:
    return GAMER_STEPS if mode.startswith(("scaled-", "partial-pages")) else 1


@dataclass(frozen=True)
class Peer:
    name: str
    kind: str  # "honest" or "adversary"
    mode: str
    steps: int
    targets: tuple[str, ...] = ()  # names of the victim peers, passed as --target each


def plan_peers(honest: int, adversaries: str, honest_steps: Sequence[int] = ()) -> list[Peer]:
    """Honest miners with 2, 4, 8, ... inner steps (or exactly ``honest_steps``), then one process per adversary mode.

    The modes are whatever ``testing.modes`` has registered (entry points), so a new mode
    joins ``--adversaries all`` without an edit here.
    """
    from testing.modes import names, resolve

    valid = names()
    steps = list(honest_steps) or [2 << i for i in range(honest)]
    if any(s < 1 for s in steps) or len(set(steps)) != len(steps):
        raise typer.BadParameter(f"honest inner steps must be distinct and >= 1, got {steps}")
    peers = [Peer(f"honest-{s}", "honest", "honest", s) for s in sorted(steps)]
    if adversaries == "none":
        modes: list[str] = []
    elif adversaries == "all":
        modes = list(valid)
        if not modes:
            raise typer.BadParameter("no adversary modes are registered (reinstall the package: pip install -e .)")
    else:
        modes = [m.strip() for m in adversaries.split(",") if m.strip()]
        unknown = sorted(set(modes) - set(valid))
        if unknown:
            raise typer.BadParameter(f"unknown adversary mode(s) {unknown}; valid: {', '.join(valid)}")
    strongest = tuple(p.name for p in reversed(peers))  # the strongest honest miners are the ones worth copying
    for mode in modes:
        if mode == "sybil":
            peers += [Peer("sybil-a", "adversary", "sybil", 1, strongest[:1]),
                      Peer("sybil-b", "adversary", "sybil", 1, ("sybil-a",))]
            continue
        if mode == "multi-copy":
            targets = strongest[:2]
        elif mode in ("copycat", "copycat-noise", "replay"):
            targets = strongest[:1]
        else:
            targets = ()
        need = int(getattr(resolve(mode), "needs_targets", 0))
        if len(targets) < need:
            raise typer.BadParameter(f"adversary mode {mode!r} copies {need} honest miner(s); use --honest {need} or more")
        peers.append(Peer(mode, "adversary", mode, _adversary_steps(mode), targets))
    return peers


def localnet_hparams(blocks_per_window: int, grace_s: float, window_s: float = 30.0) -> Any:
    """Consensus parameters for a 2-core dev box: tiny model, short windows, small payload cap.

    The publish timeout is half a window, and Stage 2 keeps only a tenth of it in reserve
    (combining and publishing take well under a second here): with twenty miner processes
    training on the same two cores a peer's evaluation takes about a second, and every valid
    upload must fit, or honest newcomers wait behind the best-scored peers (``validator.stage2``).
    The other half of the window is the miners' time to train on the new model.
    """
    from protocol.hparams import HParams

    return HParams().override(**{
        "windows.blocks_per_window": blocks_per_window, "windows.upload_grace_s": grace_s,
        "windows.publish_timeout_s": max(5.0, round(window_s / 2, 1)), "scoring.eval_reserve_fraction": 0.1,
        "data.pages_per_window": 2, "data.eval_pages": 4, "inner.steps": 4, "inner.lr": 1e-3,
        "outer.checkpoint_every": 5, "weights.set_every_windows": 1, "max_upload_bytes": 1 << 20,
        "scoring.sync_max_behind": 2,
        # No further points along the direction (scoring.eval_reach): 25 peers on two cores must fit
        # Stage 2 into half a 30 s window, and three validators breaking near-ties at 16x the
        # step with their own random pages disagreed in the first epochs (benchmarks/RESULTS.md, Effort).
        "scoring.eval_reach": (),
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
                 api_port: int, seed: int, validators: int = 1, late_windows: int = 0,
                 restart_delay_s: float = 0.0) -> None:
        self.restart_delay_s = restart_delay_s
        self.run_dir, self.block_time, self.api_port, self.seed = run_dir, block_time, api_port, seed
        self.hp = localnet_hparams(blocks_per_window, grace_s, blocks_per_window * block_time)
        self.hp_path = run_dir / "hparams.json"
        self.db_url = os.environ.get("GAUNTLET_DATABASE_URL") or f"sqlite:///{run_dir / 'validator.db'}"
        self.redis_url = os.environ.get("GAUNTLET_REDIS_URL")
        self.validators = plan_validators(run_dir, validators, late_windows, self.db_url)
        self.validator_hotkeys: dict[str, str] = {}  # validator name -> ss58
        self.hotkeys: dict[str, str] = {}  # peer name -> ss58
        self.pending: list[ValidatorNode] = []  # late validators not started yet
        self.first_window: int | None = None

    # ---------------------------------------------------------------- setup

    def setup(self, peers: list[Peer]) -> Any:
        from chain.local import LocalChain
        from chain.wallets import create_wallet

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.migrate_databases()
        self.hp_path.write_text(self.hp.model_dump_json(indent=1))
        _page_store(self.run_dir / "home", self.hp)
        wallets = self.run_dir / "wallets"
        nodes = {v.name: create_wallet(v.wallet, "default", wallets) for v in self.validators}
        for p in peers:
            self.hotkeys[p.name] = create_wallet("miners", p.name, wallets).hotkey.ss58_address
        chain = LocalChain.create(self.run_dir / "chain.db", block_time_s=self.block_time,
                                  tempo=self.hp.windows.blocks_per_window, weights_rate_limit=0, immunity_period=10**6)
        for v in self.validators:
            chain.register(nodes[v.name].hotkey, NETUID)
            chain.stake(nodes[v.name].hotkey, v.stake)
            self.validator_hotkeys[v.name] = nodes[v.name].hotkey.ss58_address
        uids = {p.name: chain.register(create_wallet_hotkey(wallets, p.name), NETUID) for p in peers}
        names = {hk: (n, next(p.kind for p in peers if p.name == n)) for n, hk in self.hotkeys.items()}
        (self.run_dir / "peers.json").write_text(json.dumps(
            {n: {"hotkey": hk, "uid": uids[n], **next(p.__dict__ for p in peers if p.name == n)}
             for n, hk in self.hotkeys.items()}, indent=1))
        self.names = names
        self.validator_hotkey = self.validator_hotkeys["validator"]
        (self.run_dir / "validators.json").write_text(json.dumps(
            {v.name: {"hotkey": self.validator_hotkeys[v.name], "stake": v.stake, "db_url": v.db_url,
                      "store": v.store_url, "delay_windows": v.delay_windows} for v in self.validators}, indent=1))
        return chain

    def migrate_databases(self) -> None:
        """Bring every validator's database to the schema head before any process starts.

        The live view, the API and a late validator read these databases from the first second,
        while a validator migrates its own only once it has started (seconds later, after its
        imports). Migrating here, with nothing else connected, means no reader ever sees a fresh
        PostgreSQL database without its tables and no two processes run Alembic at once.
        """
        from validator.db.session import migrate

        for node in self.validators:
            migrate(node.db_url)

    def env(self, storage: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(GAUNTLET_HOME=str(self.run_dir / "home"), GAUNTLET_CHAIN=f"local:{self.run_dir / 'chain.db'}",
                   GAUNTLET_HPARAMS=str(self.hp_path), GAUNTLET_WALLET_PATH=str(self.run_dir / "wallets"),
                   GAUNTLET_DATABASE_URL=self.db_url, GAUNTLET_STORAGE=storage, GAUNTLET_NETUID=str(NETUID),
                   # Every store here is a file:// directory on this host: the dev flag lets validators read them.
                   GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE="1",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   PYTHONHASHSEED=str(self.seed),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        env.update(extra)
        return env

    def start_validator(self, sup: Any, node: ValidatorNode) -> None:
        env = self.env(node.store_url, GAUNTLET_WALLET_NAME=node.wallet, GAUNTLET_WALLET_HOTKEY="default",
                       GAUNTLET_DATABASE_URL=node.db_url)
        sup.start(node.name, [sys.executable, "-m", "gauntlet", "validator", "run", "--allow-local-storage",
                              "--poll-s", "0.5"], env, restart=True, restart_delay_s=self.restart_delay_s)

    def start(self, sup: Any, peers: list[Peer]) -> None:
        gauntlet = [sys.executable, "-m", "gauntlet"]
        vstore = self.validators[0].store_url
        venv = self.env(vstore, GAUNTLET_WALLET_NAME="validator", GAUNTLET_WALLET_HOTKEY="default")
        for node in self.validators:
            if node.delay_windows:
                self.pending.append(node)
            else:
                self.start_validator(sup, node)
        if self.redis_url:
            sup.start("worker", [*gauntlet, "validator", "worker", "--allow-local-storage", "--threads", "1"], venv,
                      restart=True)
        sup.start("api", [*gauntlet, "api", "--port", str(self.api_port)], venv)
        for p in peers:
            miner = ["miner", "run", "--wallet-name", "miners", "--hotkey", p.name, "--inner-steps", str(p.steps)]
            sup.start(p.name, [*self.peer_launcher(p), *miner], self.env(f"file://{self.run_dir / 'store' / p.name}"))

    def peer_launcher(self, peer: Peer) -> list[str]:
        """``python -m gauntlet`` for an honest miner; the test harness with the mode's hooks for an adversary."""
        if peer.kind == "honest":
            return [sys.executable, "-m", "gauntlet"]
        targets = [a for t in peer.targets for a in ("--target", self.hotkeys[t])]
        return [sys.executable, "-m", "testing.run", "--mode", peer.mode, *targets, "--"]

    # ---------------------------------------------------------------- run

    def watch(self, sup: Any, chain: Any, windows: int, echo: Any) -> list[int]:
        """Print each window as it is scored until ``windows`` are; returns them."""
        from gauntlet.localnet_view import Validators, View, format_window
        from protocol.windows import window_of

        view = View(self.db_url, self.names)
        others = Validators(self.validators, self.validator_hotkeys) if len(self.validators) > 1 else None
        seen: list[int] = []
        t0, last_progress = time.monotonic(), 0.0
        window_s = self.hp.windows.blocks_per_window * self.block_time
        try:
            while len(seen) < windows:
                for note in sup.check():
                    echo(f"! {note}")
                self.start_late(sup, chain, view, echo)
                for w in view.scored_windows():
                    if w not in seen:
                        seen.append(w)
                        echo(format_window(w, view.window_rows(w), view.window_timings(w)))
                        if others is not None:
                            echo(others.format(chain, NETUID))
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
            if others is not None:
                others.close()
        return seen

    def start_late(self, sup: Any, chain: Any, view: Any, echo: Any) -> None:
        """Start a delayed validator once the first one has scored ``delay_windows`` windows past its first."""
        from protocol.windows import window_of

        if not self.pending:
            return
        if self.first_window is None:
            scored = view.scored_windows()
            if not scored:
                return
            self.first_window = scored[0]
        current = window_of(chain.block(), self.hp.windows)
        for node in list(self.pending):
            if current >= self.first_window + node.delay_windows:
                echo(f"· starting {node.name} late, in window {current} (first scored window {self.first_window})")
                self.start_validator(sup, node)
                self.pending.remove(node)

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
            if len(self.validators) > 1:
                from gauntlet.localnet_view import Validators

                others = Validators(self.validators, self.validator_hotkeys)
                try:
                    echo(others.format(chain, NETUID))
                    summary["validators"] = others.summary(chain, NETUID)
                finally:
                    others.close()
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
    honest_steps: str = typer.Option("", "--honest-steps",
                                     help="Inner steps of each honest miner, e.g. 1,2,4,8,16,32 (overrides --honest)."),
    adversaries: str = typer.Option("all", "--adversaries", help="all, none, or a comma list of modes."),
    block_time: float = typer.Option(0.5, "--block-time", help="Seconds per local-chain block."),
    blocks_per_window: int = typer.Option(60, "--blocks-per-window", help="Blocks per window (60 x 0.5s = 30s)."),
    grace_s: float = typer.Option(2.0, "--upload-grace", help="Upload grace after a window ends (seconds)."),
    run_dir: Path | None = typer.Option(None, "--dir", help="Run directory (default: a new temporary one)."),
    api_port: int = typer.Option(8000, "--api-port", help="Port of the score API and dashboard."),
    keep: bool = typer.Option(False, "--keep", help="Keep a temporary run directory (logs, DB, chain)."),
    seed: int = typer.Option(0, "--seed", help="Seed for hashing and noise (runs are repeatable)."),
    validators: int = typer.Option(1, "--validators", help="Validators (stakes 1000, 700, 500, ...) sharing one model."),
    late_validator: int = typer.Option(0, "--late-validator",
                                       help="Start the last validator this many windows after the first scored one."),
    restart_delay: float = typer.Option(0.0, "--restart-delay",
                                        help="Seconds before a validator that died is restarted (like RestartSec)."),
) -> None:
    """Run a local network (chain, validator, API, honest and adversarial miners) and show who gets paid."""
    from gauntlet.procs import Supervisor, raise_on_signals

    temporary = run_dir is None
    run_dir = (run_dir or Path(tempfile.mkdtemp(prefix="gauntlet-localnet-"))).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise typer.BadParameter(f"{run_dir} is not empty; pick a new --dir")
    try:
        steps = [int(x) for x in honest_steps.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--honest-steps takes integers, got {honest_steps!r}") from None
    peers = plan_peers(honest, adversaries, steps)
    net = LocalNet(run_dir, block_time=block_time, blocks_per_window=blocks_per_window, grace_s=grace_s,
                   api_port=api_port, seed=seed, validators=validators, late_windows=late_validator,
                   restart_delay_s=restart_delay)
    echo = typer.echo
    window_s = blocks_per_window * block_time
    echo(f"gauntlet localnet: {len(peers)} miners ({sum(p.kind == 'honest' for p in peers)} honest), "
         f"{validators} validator{'s' if validators > 1 else ''}, {windows} windows of {window_s:.0f}s, run dir {run_dir}")
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
