"""The chaos controller: at seeded random times, breaks one thing of the :class:`chaos_cluster.Cluster`.

Faults, by weight (``ACTIONS``): SIGKILL a worker (process group: the worker and its pool) and start it
again after a while; SIGKILL Redis and start it again on its AOF; take the sandbox down (process
killed, connection refused) and up; and, through ``/_sandbox/faults``, a window of 429s, of 5xx, of
timeouts (half of them ``timeout_accepts``: stored although the client hung up), of 555 records, of a
permanent per-record code (512), or an outage (503, or connections dropped mid-answer). Every fault is
an :class:`Event` with its start and end (monotonic seconds since the run started). The controller
also samples the sandbox's record count over time, so that a duplicate can be traced to the fault
that was under way when its first copy was stored, and restarts any process that died on its own
(each such exit is an event too: ``exited_by_itself``, which the report lists).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from chaos_cluster import Cluster
from delivery_e2e import Proc

ACTIONS = {
    "kill_worker": 4,
    "restart_redis": 1,
    "sandbox_down": 1,
    "outage_503": 1,
    "outage_drop": 1,
    "http_429": 2,
    "http_5xx": 2,
    "timeouts": 2,
    "record_555": 2,
    "record_permanent": 1,
}
PERMANENT_CODE = 512
TIMEOUT_MS = 3500  # longer than the workers' CTRELAY_UPLOAD_TIMEOUT_S (2 s)


def sandbox_fault(kind: str, rng: random.Random) -> dict[str, Any]:
    """The ``/_sandbox/faults`` body of a fault window."""
    if kind == "outage_503":
        return {"outage": True, "outage_mode": "503"}
    if kind == "outage_drop":
        return {"outage": True, "outage_mode": "drop"}
    if kind == "http_429":
        return {"error_rates": {"429": 0.5}, "retry_after_s": rng.choice([0, 1])}
    if kind == "http_5xx":
        return {"error_rates": {"500": 0.15, "502": 0.1, "503": 0.15, "504": 0.1}}
    if kind == "timeouts":
        return {"timeout_rate": 0.3, "timeout_ms": TIMEOUT_MS, "timeout_accepts": rng.random() < 0.5}
    if kind == "record_555":
        return {"record_555_rate": 0.2}
    if kind == "record_permanent":
        return {"record_error_rate": 0.05, "record_error_code": PERMANENT_CODE}
    raise ValueError(kind)


@dataclass
class Event:
    kind: str
    start: float
    end: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """The sandbox's record count at a time (``incarnation``: how many times it was restarted before)."""

    at: float
    incarnation: int
    stored: int


def exit_detail(name: str, proc: Proc) -> dict[str, Any]:
    """Which process exited by itself, its exit status, why (its last CRITICAL/ERROR line) and its log's tail."""
    lines = proc.log.read_text(errors="replace").splitlines() if proc.log.exists() else []
    why = next((line for line in reversed(lines) if "CRITICAL" in line), "")
    why = why or next((line for line in reversed(lines) if "ERROR" in line or "Error" in line), "")
    return {"process": name, "exit": proc.process.returncode, "why": why[:200], "log": proc.tail(15)}


class Controller(threading.Thread):
    """Injects faults every ``gap_s`` (uniform between the two bounds) until stopped, then repairs everything."""

    def __init__(self, cluster: Cluster, seed: int, gap_s: tuple[float, float] = (1.0, 4.0)) -> None:
        super().__init__(name="chaos-controller", daemon=True)
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.gap_s = gap_s
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.events: list[Event] = []
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._restarts: dict[int, tuple[float, Event]] = {}  # worker index → (due, its kill event)
        self._window: tuple[float, Event] | None = None  # the sandbox fault under way: (its end, event)

    def now(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        next_fault = self.now() + self.rng.uniform(*self.gap_s)
        try:
            while not self.stopping.is_set():
                self._housekeep()
                if self.now() >= next_fault:
                    action = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
                    try:
                        self._inject(action)
                    except (httpx.HTTPError, AssertionError, OSError) as exc:
                        self.errors.append(f"{self.now():.1f}s {action}: {exc!r}")
                    next_fault = self.now() + self.rng.uniform(*self.gap_s)
                self.stopping.wait(0.2)
        finally:
            self.repair()

    def repair(self) -> None:
        """End every fault: workers started, sandbox faults cleared (Redis and the sandbox are up by now)."""
        for index in list(self._restarts):
            self._restart_worker(index)
        self._end_window()
        self._housekeep()

    # -- faults ---------------------------------------------------------------------------------------------

    def _inject(self, action: str) -> None:
        cluster, rng = self.cluster, self.rng
        if action == "kill_worker":
            alive = [i for i, proc in enumerate(cluster.workers) if proc is not None]
            if not alive:
                return
            index = rng.choice(alive)
            event = Event("kill_worker", self.now(), detail={"worker": index})
            cluster.kill_worker(index)
            self.events.append(event)
            self._restarts[index] = (self.now() + rng.uniform(0.5, 3.0), event)
        elif action == "restart_redis":
            event = Event("restart_redis", self.now())
            self.events.append(event)
            cluster.redis_server.kill()
            time.sleep(rng.uniform(1.0, 4.0))
            cluster.redis_server.start()
            event.end = self.now()
        elif action == "sandbox_down":
            self._end_window()
            event = Event("sandbox_down", self.now())
            self.events.append(event)
            cluster.kill_sandbox()
            time.sleep(rng.uniform(2.0, 6.0))
            cluster.start_sandbox()
            event.end = self.now()
        else:
            self._end_window()
            body = sandbox_fault(action, rng)
            cluster.relay.sandbox("/_sandbox/faults", "POST", json=body)
            event = Event(action, self.now(), detail=body)
            self.events.append(event)
            self._window = (self.now() + rng.uniform(2.0, 8.0), event)

    def _end_window(self) -> None:
        if self._window is None:
            return
        _, event = self._window
        self._window = None
        try:
            self.cluster.relay.sandbox("/_sandbox/faults", "DELETE")
        except httpx.HTTPError as exc:
            self.errors.append(f"{self.now():.1f}s clearing {event.kind}: {exc!r}")
        event.end = self.now()

    def _restart_worker(self, index: int) -> None:
        _, event = self._restarts.pop(index)
        self.cluster.start_worker(index)
        event.end = self.now()

    def _housekeep(self) -> None:
        """Due restarts and window ends; a process that died on its own is restarted (and reported)."""
        now = self.now()
        for index, (due, _) in list(self._restarts.items()):
            if due <= now:
                self._restart_worker(index)
        if self._window is not None and self._window[0] <= now:
            self._end_window()
        cluster = self.cluster
        for index, proc in enumerate(cluster.workers):
            if proc is not None and proc.process.poll() is not None:
                self.events.append(Event("exited_by_itself", now, now, exit_detail(f"worker {index}", proc)))
                cluster.start_worker(index)
        for name, proc in (("ingest", cluster.ingest_proc), ("sandbox", cluster.sandbox_proc)):
            if proc is not None and proc.process.poll() is not None:
                self.events.append(Event("exited_by_itself", now, now, exit_detail(name, proc)))
        stored = cluster.stored()
        if stored is not None:
            self.samples.append(Sample(now, cluster.incarnation, stored))
