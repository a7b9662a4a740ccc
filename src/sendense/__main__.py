"""`python -m sendense` is the `sendense` command."""

from sendense.cli.main import app

app(prog_name="sendense")
