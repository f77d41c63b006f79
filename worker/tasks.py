"""The worker's Celery tasks: thin bodies over :mod:`worker.delivery` (one task drains one partition for a while)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery

if TYPE_CHECKING:
    from worker.app import Runtime


def register(app: Celery, runtime: Callable[[], Runtime]) -> None:
    """Register the tasks on ``app``; ``runtime`` gives this process's services."""

    @app.task(name="ctrelay.drain", ignore_result=True)
    def drain(partition: int) -> dict[str, Any]:
        """Drain one partition under its lease (batches of ≤ 1000 entries, due retries included)."""
        return runtime().drain(int(partition))

    @app.task(name="ctrelay.tick", ignore_result=True)
    def tick() -> list[int]:
        """Queue drains for the partitions with work (what each worker's ticker does; callable from beat too)."""
        return runtime().tick()
