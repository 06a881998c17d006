"""``python -m validator.api api|scores ...``: the API commands without the full ``gauntlet`` CLI."""

import typer

from validator.api.cli import register

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
register(app)

if __name__ == "__main__":
    app()
