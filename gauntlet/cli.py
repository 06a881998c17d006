"""``gauntlet`` console script.

Each package owns its subcommands in its own ``cli.py``; heavy imports (torch, the SDK)
happen inside the commands so ``gauntlet --help`` stays instant.
"""

from __future__ import annotations

import os

# Before torch loads: spinning OpenMP threads waste whole cores on small or shared hosts
# (3-20x slower codec runs measured in benchmarks/RESULTS.md). Operators can still override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from chain.cli import chain_app, wallet_app
from gauntlet.localnet import localnet
from miner.cli import app as miner_app
from protocol.cli import data_app
from validator.api.cli import register as register_api
from validator.audit_cli import register as register_audit
from validator.cli import register as register_validator

app = typer.Typer(
    help="Gauntlet: SparseLoCo miners and Gauntlet validators for decentralized LLM pre-training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(chain_app, name="chain")
app.add_typer(wallet_app, name="wallet")
app.add_typer(data_app, name="data")
app.add_typer(miner_app, name="miner")
register_validator(app)
register_api(app)
register_audit(app)
app.command("localnet", help="Run a local network with honest and adversarial miners.")(localnet)

if __name__ == "__main__":
    app()
