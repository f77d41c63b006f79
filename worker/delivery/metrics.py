"""The worker's Prometheus metrics, and the server that exposes them on ``CTRELAY_METRICS_PORT``.

Counters and histograms are incremented by the process that did the work. With a prefork pool,
``ctrelay worker`` sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported, so that every
child writes to shared files and the server (in the main process) sums them. Gauges that describe
the cluster (the backlog, stream lengths, retry-schedule size, uploads in flight, concurrency caps, paused
destinations, dead letters) are read from Redis at scrape time by :class:`ClusterCollector`, so any
one worker reports the same, true values.

``ctrelay_entries_read_again_total{how}`` counts the entries a drain reads a second time (``own``: its consumer's
pending entries, left by a drain that stopped or raised; ``idle``: claimed from a live consumer; ``dead``: claimed
from a dead one): each costs Redis a second copy of its body on the wire and the worker a second decode and
transform, so a rate of it beside ``ctrelay_records_delivered_total`` that is more than a small fraction says drains
stop before they deliver what they read (no upload slot in time, lost leases) or workers die. One ``inc`` per read
that answered entries: nothing on the usual path.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.core.keys import Keys
from worker.store.streams import BACKLOG_COMMANDS, queue_backlog, read_backlogs

log = structlog.get_logger("ctrelay.metrics")

records_delivered = Counter(
    "ctrelay_records_delivered", "Records CleverTap accepted, by destination and record type", ["destination", "type"]
)
records_retried = Counter(
    "ctrelay_records_retried", "Records scheduled for another attempt, by reason", ["destination", "reason"]
)
deadletters_written = Counter(
    "ctrelay_deadletters_written", "Messages written to the dead-letter store", ["destination", "reason", "code"]
)
messages_skipped = Counter(
    "ctrelay_messages_skipped", "Messages acknowledged by rule, sending nothing", ["destination", "reason"]
)
uploads = Counter("ctrelay_uploads", "Upload requests, by HTTP status (or timeout/network)", ["destination", "status"])
duplicates_suspected = Counter(
    "ctrelay_duplicates_suspected",
    "Records (messages for cause reclaimed) that may reach CleverTap twice, by cause",
    ["cause"],
)
entries_read_again = Counter(
    "ctrelay_entries_read_again",
    "Stream entries a drain read again, Redis sending their bodies once more: its consumer's own pending ones (own), "
    "a live consumer's idle ones (idle), a dead consumer's (dead)",
    ["how"],
)
upload_duration = Histogram(
    "ctrelay_upload_duration_seconds",
    "Time of one upload request",
    ["destination"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
transform_keys_dropped = Counter("ctrelay_transform_keys_dropped", "Property keys the transform dropped")
transform_values_truncated = Counter("ctrelay_transform_values_truncated", "String values cut to 512 bytes")


class ClusterCollector(Collector):
    """Gauges read from Redis when scraped: the same answer from every worker."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        partitions: int,
        accounts: Sequence[str],
        destinations: Mapping[str, str],
        max_cap: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.partitions = partitions
        self.accounts = list(dict.fromkeys(accounts))
        self.names = dict(destinations)
        """write key -> destination name: the paused gauge is labelled by name (never by write key)."""
        self.max_cap = max_cap

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The cluster gauges; none while Redis does not answer, so that the process's own counters are still
        served (a failing collector would fail the whole scrape and make the worker look down)."""
        try:
            yield from self._collect()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            structlog.get_logger("ctrelay.metrics").warning("cluster gauges not read", error=type(exc).__name__)

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        now_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            queue_backlog(pipe, self.keys, partition)
        for account in self.accounts:
            pipe.zcount(self.keys.slots(account), now_ms, "+inf")
            pipe.hget(self.keys.cap(account), "cap")
        for write_key in self.names:
            pipe.exists(self.keys.paused(write_key))
        pipe.hgetall(self.keys.deadletter_counts())
        pipe.zrange(self.keys.deadletter_times(), 0, 0, withscores=True)
        results: list[Any] = pipe.execute(raise_on_error=False)
        lag = GaugeMetricFamily(
            "ctrelay_stream_lag",
            "Entries not yet done in the partition's stream (its length: unread plus being processed)",
            labels=["partition"],
        )
        retry = GaugeMetricFamily("ctrelay_retry_schedule_size", "Messages waiting in the retry schedule")
        total = GaugeMetricFamily(
            "ctrelay_backlog", "Messages not yet delivered: the streams plus the retry schedule (ingest's cap)"
        )
        parts = read_backlogs(results, self.partitions)
        for partition, part in enumerate(parts):
            lag.add_metric([str(partition)], float(part.length))
        retry.add_metric([], sum(part.scheduled for part in parts))
        total.add_metric([], sum(part.total for part in parts))
        offset = BACKLOG_COMMANDS * self.partitions
        in_flight = GaugeMetricFamily("ctrelay_uploads_in_flight", "Upload slots held", labels=["account"])
        cap = GaugeMetricFamily("ctrelay_concurrency_cap", "Adaptive concurrent-upload cap", labels=["account"])
        for index, account in enumerate(self.accounts):
            held, value = results[offset + 2 * index], results[offset + 2 * index + 1]
            in_flight.add_metric([account], held if isinstance(held, int) else 0)
            cap.add_metric([account], float(value) if isinstance(value, bytes) else float(self.max_cap))
        offset += 2 * len(self.accounts)
        paused = GaugeMetricFamily(
            "ctrelay_destination_paused", "1 while a destination is paused (401/403)", labels=["destination"]
        )
        for index, name in enumerate(self.names.values()):
            paused.add_metric([name], 1 if results[offset + index] == 1 else 0)
        offset += len(self.names)
        counts, oldest = results[offset], results[offset + 1]
        letters = GaugeMetricFamily("ctrelay_deadletters", "Dead letters kept, by reason", labels=["reason"])
        for reason, count in counts.items() if isinstance(counts, dict) else []:
            letters.add_metric([reason.decode()], int(count))
        age = GaugeMetricFamily("ctrelay_deadletters_oldest_age_seconds", "Age of the oldest dead letter")
        age.add_metric([], max(0.0, time.time() - float(oldest[0][1])) if isinstance(oldest, list) and oldest else 0.0)
        yield from (lag, retry, total, in_flight, cap, paused, letters, age)


def registry(multiprocess_dir: Path | None, collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """The registry to serve: this process's, or the sum over the pool's processes; plus ``collectors``."""
    if multiprocess_dir is None:
        target = REGISTRY
    else:
        target = CollectorRegistry()
        MultiProcessCollector(target, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    for collector in collectors:
        target.register(collector)
    return target


METRICS_PORT_TRIES = 100
"""How many ports from ``CTRELAY_METRICS_PORT`` on a worker tries before it gives up serving metrics."""


def serve(port: int, target: CollectorRegistry) -> int:
    """Expose ``target`` on ``port`` (all interfaces) from a daemon thread; return the port it serves on.

    When ``port`` is taken (a second worker on the same host), the next free one of the following
    ``METRICS_PORT_TRIES - 1`` ports is used, with a warning naming both, so that a second worker runs and
    says where its metrics are. When every one is taken the worker runs without metrics (an error line):
    delivering matters more than being scraped."""
    for candidate in range(port, min(port + METRICS_PORT_TRIES, 65536)):
        try:
            start_http_server(candidate, registry=target)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        if candidate != port:
            log.warning("metrics_port_taken", asked=port, port=candidate, url=f"http://127.0.0.1:{candidate}/metrics")
        return candidate
    log.error("metrics_not_served", asked=port, tried=METRICS_PORT_TRIES, reason="every port is taken")
    return 0
