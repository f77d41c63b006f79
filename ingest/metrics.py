"""Ingest's Prometheus metrics and the ``/metrics`` page.

With ``--workers N`` > 1, ``ctrelay ingest`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the worker
processes start; prometheus-client then keeps values in shared files and :func:`render` sums
every process (the queue-length gauge reports the most recent live value).
"""

from __future__ import annotations

import functools
from collections import Counter as Tally
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

accepted = Counter("ctrelay_ingest_messages_accepted", "Messages written to the queue", ["type", "destination"])
rejected = Counter(
    "ctrelay_ingest_messages_rejected",
    "Messages refused: invalid batch items one by one; a request refused as a whole counts once, by its code",
    ["reason"],
)
duplicates = Counter(
    "ctrelay_ingest_duplicates", "Messages dropped because their messageId was already accepted", ["destination"]
)
requests = Counter("ctrelay_ingest_requests", "HTTP requests answered, by route and status", ["path", "status"])
duration = Histogram(
    "ctrelay_ingest_request_duration_seconds",
    "Time to answer a request",
    ["path"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
queue_length = Gauge(
    "ctrelay_queue_length",
    "Messages not yet delivered, in the streams and the retry schedule (the backlog)",
    multiprocess_mode="livemax",
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


# A labelled child, found once: ``labels()`` takes a lock and builds a tuple each call, on every request. The
# label values are bounded (route templates, status codes, refusal codes, call types, destination names).


@functools.cache
def answered(route: str, status: int) -> Counter:
    """``ctrelay_ingest_requests_total{path=route, status}``."""
    return requests.labels(route, str(status))


@functools.cache
def timed(route: str) -> Histogram:
    """``ctrelay_ingest_request_duration_seconds{path=route}``."""
    return duration.labels(route)


@functools.cache
def refused(reason: str) -> Counter:
    """``ctrelay_ingest_messages_rejected_total{reason}``."""
    return rejected.labels(reason)


@functools.cache
def accepted_of(kind: str, destination: str) -> Counter:
    """``ctrelay_ingest_messages_accepted_total{type=kind, destination}``."""
    return accepted.labels(kind, destination)


@functools.cache
def duplicates_of(destination: str) -> Counter:
    """``ctrelay_ingest_duplicates_total{destination}``."""
    return duplicates.labels(destination)


def count_accepted(types: Sequence[str], destination: str) -> None:
    """Add one request's accepted messages, their call types in order (one increment per type, not per message; a
    single call's one type without a tally)."""
    if len(types) == 1:
        accepted_of(types[0], destination).inc()
        return
    for kind, number in Tally(types).items():
        accepted_of(kind, destination).inc(number)


def render(multiprocess_dir: Path | None) -> bytes:
    """The exposition text: this process's registry, or the sum over every worker process."""
    if multiprocess_dir is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    return generate_latest(registry)
