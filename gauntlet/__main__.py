from gauntlet.cli import app

app()
