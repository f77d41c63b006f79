"""``ctrelay flower``: Flower, Celery's web monitor, on the relay's own Celery app.

The relay's broker keys live under ``<prefix>:celery`` (see :func:`worker.delivery.app.create_app`), so a bare
``celery --broker=... flower`` would watch an empty broker; this runs Flower with the same app
the workers use. Workers publish task events when started with ``--task-events`` (``-E``).
"""

from __future__ import annotations


def run_flower(argv: list[str]) -> int:
    """Run Flower with ``argv`` (its own options, e.g. ``--port=5555 --address=0.0.0.0``) until stopped."""
    from worker.core.settings import load
    from worker.delivery.app import create_app

    app, _ = create_app(load())
    return int(app.start(["flower", *argv]) or 0)
