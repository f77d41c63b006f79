"""The ``ctrelay`` command line: one module per command group, and the local process tree of ``ctrelay dev``.

Nothing of the relay imports this room; it imports every other one. ``app`` is the console entry point.
"""

from worker.cli.main import app

__all__ = ["app"]
