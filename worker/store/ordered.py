"""Writes that span hash tags: one transaction on a single Redis, ordered transactions on a Redis Cluster.

A cluster refuses a MULTI (or a script) whose keys lie in different slots (CROSSSLOT). Work whose keys have
different tags (:mod:`worker.core.keys`: a partition's stream, the ``{dlq}`` keys, a suppressions hash, token
markers) is therefore given to :func:`write_in_order` as *steps*, each queuing its commands on the pipeline it is
handed, in the order that keeps at-least-once: the new state first (dead letters, retry items, suppressions), the
acknowledgement or deletion of the old last.

- **Standalone and Sentinel**: every step goes on one MULTI pipeline: atomic, as before the cluster mode.
- **Cluster**: each step gets its own pipeline (a MULTI when the step's keys share one tag, else a plain pipeline
  routed per node) and is executed before the next one is queued. A crash between two steps leaves the earlier
  written and the later not: the caller's docstring says what that costs (a repeat, never a loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from worker.store.connections import is_cluster

Step = tuple[bool, Callable[[Any], object]]
"""(the step's keys share one hash tag, so it may be a transaction; the function queuing its commands)."""


def write_in_order(client: redis.Redis, *steps: Step) -> None:
    """Run ``steps`` (see the module docstring); raises what the pipeline's ``execute`` raises."""
    if not is_cluster(client):
        with client.pipeline(transaction=True) as pipe:
            for _, queue in steps:
                queue(pipe)
            pipe.execute()
        return
    for one_tag, queue in steps:
        with client.pipeline(transaction=one_tag) as pipe:
            queue(pipe)
            if len(pipe):
                pipe.execute()
