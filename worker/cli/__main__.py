"""``python -m worker.cli``: the ``ctrelay`` command without its console script."""

from worker.cli.main import app

app(prog_name="ctrelay")
