"""The chaos test's processes: a Redis of its own (AOF, restartable), ingest, two workers and a restartable sandbox.

Built on :mod:`delivery_e2e` (``Relay`` starts every ``ctrelay`` process and owns their logs). What this
module adds is what a chaos run needs and an ordinary end-to-end test does not: a ``redis-server`` on a
free port with ``--appendonly yes`` in a temporary directory, so that it can be SIGKILLed and started
again on the same port and files; a sandbox that can be killed and started again on the same port, the
records it held saved first (it keeps them in memory only); and workers restarted by index.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from delivery_e2e import Proc, Relay, http_ok, wait_for

from worker.cli.embedded import answers, free_port
from worker.core.keys import GROUP

WORKER_ENV = {
    "CTRELAY_UPLOAD_TIMEOUT_S": "2",
    "CTRELAY_RETRY_WINDOW_S": "3600",  # longer than any run: nothing may end as retries_exhausted
    "CTRELAY_BACKOFF_MIN_S": "0.2",
    "CTRELAY_BACKOFF_MAX_S": "2",
    "CTRELAY_WORKER_CONCURRENCY": "4",
    # the defaults (Settings), set here since the end-to-end Relay shortens them for its own tests
    "CTRELAY_LEASE_TTL_S": "5",
    "CTRELAY_RECLAIM_IDLE_S": "60",
    "CTRELAY_DRAIN_BUDGET_S": "5",
    "CTRELAY_TICK_INTERVAL_S": "0.2",
}
"""What answers CleverTap's (the sandbox's) faults is shortened (upload timeout, backoff), so that a run measures
the recovery from worker and Redis faults; leases, reclaim and drain budgets keep their defaults (README
"Delivery"): a killed worker costs what it costs in production."""
LEASE_TTL_S = 5.0
"""The default ``CTRELAY_LEASE_TTL_S``: every accepted message must be done within this + 5 s of the last fault (a
killed worker's partitions wait one lease TTL for its lease, its liveness key and any drain task it took with it)."""


class RedisServer:
    """A ``redis-server`` of the test's own: AOF on, in ``workdir``, on a fixed port, killable and restartable."""

    def __init__(self, workdir: Path, fsync: str = "always", extra: Iterable[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on the PATH")
        self.binary = binary
        self.workdir = workdir
        self.fsync = fsync
        self.extra = list(extra)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--appendonly", "yes", "--appendfsync", self.fsync, "--save", "", "--daemonize", "no"]
        args += ["--maxmemory-policy", "noeviction", "--loglevel", "warning", *self.extra]
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        wait_for(lambda: answers(self.url, timeout=0.2), 30, "redis-server to answer (after loading its AOF)")

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the AOF had on disk."""
        if self.process is not None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None


@dataclass
class Cluster:
    """Ingest, ``workers`` workers and the sandbox on one :class:`RedisServer`."""

    relay: Relay
    redis_server: RedisServer
    sandbox_flags: list[str]
    workers: list[Proc | None] = field(default_factory=list)
    sandbox_proc: Proc | None = None
    ingest_proc: Proc | None = None
    ingest_url: str = ""
    saved: list[list[dict[str, Any]]] = field(default_factory=list)
    """Records of each earlier sandbox incarnation, saved just before it was killed."""
    saved_stats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def incarnation(self) -> int:
        return len(self.saved)

    def start(self, workers: int, destinations: Iterable[dict[str, str]]) -> None:
        self.relay.sandbox_port = free_port()
        self.relay.destinations(destinations)
        self.start_sandbox()
        self.ingest_proc, self.ingest_url = self.relay.start_ingest()
        self.workers = [None] * workers
        for index in range(workers):
            self.start_worker(index)

    def start_worker(self, index: int) -> Proc:
        proc = self.relay.start_worker(**WORKER_ENV)
        self.workers[index] = proc
        return proc

    def kill_worker(self, index: int) -> None:
        proc = self.workers[index]
        if proc is not None:
            proc.kill()
            self.workers[index] = None

    def start_sandbox(self) -> None:
        port = str(self.relay.sandbox_port)
        self.sandbox_proc = self.relay.start("sandbox", ["sandbox", "--port", port, *self.sandbox_flags])
        wait_for(lambda: http_ok(self.relay.sandbox_url + "/_sandbox/health"), 30, "the sandbox", self.sandbox_proc)

    def kill_sandbox(self) -> None:
        """Stop new uploads (503), let those in flight finish, save what it holds, then SIGKILL it."""
        self.relay.sandbox("/_sandbox/faults", "POST", json={"outage": True, "outage_mode": "503"})
        deadline = time.monotonic() + 15
        while self.relay.sandbox("/_sandbox/stats")["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.1)
        self.saved_stats.append(self.relay.sandbox("/_sandbox/stats"))
        self.saved.append(self.records())
        assert self.sandbox_proc is not None
        self.sandbox_proc.kill()
        self.sandbox_proc = None

    def records(self) -> list[dict[str, Any]]:
        """Every record the current sandbox holds, paged."""
        found: list[dict[str, Any]] = []
        since = 0
        while True:
            page = self.relay.sandbox("/_sandbox/records", params={"since": since, "limit": 20000})
            found += page["records"]
            if not page["records"] or page["next"] >= page["total"]:
                return found
            since = page["next"]

    def stored(self) -> int | None:
        """How many records the current sandbox has stored (its next seq), or None when it is down."""
        try:
            return int(self.relay.sandbox("/_sandbox/records", params={"since": 10**12})["total"])
        except (httpx.HTTPError, KeyError):
            return None

    def stop(self) -> None:
        self.relay.stop_all()
        self.redis_server.stop()


@dataclass
class QueueState:
    """What is still waiting in Redis: stream entries (unread or unacknowledged; delivery deletes an entry with
    its ack) and scheduled retries."""

    in_streams: int
    pending: int
    scheduled: int

    @property
    def empty(self) -> bool:
        return self.in_streams == 0 and self.pending == 0 and self.scheduled == 0


def queue_state(client: redis.Redis, relay: Relay) -> QueueState:
    keys, in_streams, pending, scheduled = relay.keys, 0, 0, 0
    for partition in range(relay.partitions):
        in_streams += int(client.xlen(keys.stream(partition)))
        with contextlib.suppress(redis.ResponseError):
            pending += int(client.xpending(keys.stream(partition), GROUP)["pending"])
        scheduled += int(client.zcard(keys.retry_due(partition)))
    return QueueState(in_streams, pending, scheduled)
