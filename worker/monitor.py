"""``ctrelay flower``: Flower, Celery's web monitor, on the relay's own Celery app.

The relay's broker keys live under ``<prefix>:celery`` (see :func:`worker.app.create_app`), so a bare
``celery --broker=... flower`` would watch an empty broker; this runs Flower with the same app
the workers use. Workers publish task events when started with ``--task-events`` (``-E``).
"""

from __future__ import annotations


def run_flower(argv: list[str]) -> int:
    """Run Flower with ``argv`` (its own options, e.g. ``--port=5555 --address=0.0.0.0``) until stopped."""
    from worker.app import create_app
    from worker.settings import load

    app, _ = create_app(load())
    return int(app.start(["flower", *argv]) or 0)
