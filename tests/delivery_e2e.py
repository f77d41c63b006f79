"""Test helpers for the end-to-end delivery tier: real ``ctrelay`` processes, the sandbox, reconciliation."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from worker.cli.embedded import free_port
from worker.core.destinations import load_destinations
from worker.core.keys import GROUP, Envelope, Keys
from worker.store.deadletters import DeadLetterStore
from worker.store.producer import Producer
from worker.transform.records import Skip, transform

CLI = "from worker.cli import app; app(prog_name='ctrelay')"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and its pool), no warning."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Relay:
    """The processes of one end-to-end test, with its own Redis prefix, destinations file and ports."""

    tmp: Path
    redis_url: str
    prefix: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:10]}")
    partitions: int = 4
    procs: list[Proc] = field(default_factory=list)
    sandbox_port: int = 0
    env_extra: dict[str, str] = field(default_factory=dict)
    root: Path = ROOT
    """The checkout whose code the processes run (another commit's worktree in a benchmark against it)."""

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            CTRELAY_REDIS_PREFIX=self.prefix,
            CTRELAY_DESTINATIONS=str(self.tmp / "destinations.toml"),
            CTRELAY_PARTITIONS=str(self.partitions),
            CTRELAY_LOG_FORMAT="json",
            CTRELAY_METRICS_PORT="0",
            CTRELAY_TICK_INTERVAL_S="0.1",
            CTRELAY_BACKOFF_MIN_S="0.2",
            CTRELAY_BACKOFF_MAX_S="1",
            CTRELAY_RETRY_WINDOW_S="120",
            CTRELAY_AUTH_PAUSE_S="1",
            CTRELAY_LEASE_TTL_S="2",
            CTRELAY_RECLAIM_IDLE_S="1",
            CTRELAY_DRAIN_BUDGET_S="2",
            CTRELAY_UPLOAD_TIMEOUT_S="5",
            CTRELAY_WORKER_CONCURRENCY="4",
        )
        env.update(self.env_extra)
        env.update(extra)
        return env

    def destinations(self, tables: Iterable[dict[str, Any]]) -> None:
        """Write the destinations file: string settings, and tables (``profile_keys``) given as dicts."""
        lines = []
        for table in tables:
            lines.append("[[destinations]]")
            for key, value in table.items():
                if isinstance(value, dict):
                    pairs = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items())
                    lines.append(f"{key} = {{ {pairs} }}")
                else:
                    lines.append(f'{key} = "{value}"')
            lines.append(f'endpoint = "{self.sandbox_url}"')
        (self.tmp / "destinations.toml").write_text("\n".join(lines) + "\n")

    def start(self, name: str, args: list[str], **env: str) -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", CLI, *args],
                env=self.env(**env),
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, process, log)
        self.procs.append(proc)
        return proc

    def start_sandbox(self, *flags: str) -> Proc:
        self.sandbox_port = free_port()
        proc = self.start("sandbox", ["sandbox", "--port", str(self.sandbox_port), *flags])
        wait_for(lambda: http_ok(f"{self.sandbox_url}/_sandbox/health"), 20, "the sandbox to answer", proc)
        return proc

    def start_ingest(self, *flags: str, **env: str) -> tuple[Proc, str]:
        """``ctrelay ingest`` on a free port, once it answers /healthz: the process and its base URL (``https://``
        with ``--ssl-certfile``/``--ssl-keyfile`` among ``flags``)."""
        port = free_port()
        proc = self.start("ingest", ["ingest", "--port", str(port), *flags], **env)
        url = f"{'https' if '--ssl-certfile' in flags else 'http'}://127.0.0.1:{port}"
        wait_for(lambda: http_ok(f"{url}/healthz"), 30, "ingest to answer", proc)
        return proc, url

    def start_worker(self, *celery_args: str, **env: str) -> Proc:
        return self.start("worker", ["worker", *celery_args], **env)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout_s=5)

    def ctrelay(self, *args: str, timeout_s: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a ``ctrelay`` command as the operator does (the relay's environment), bounded in time."""
        return subprocess.run(
            [sys.executable, "-c", CLI, *args], env=self.env(**env), cwd=ROOT, capture_output=True, text=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip

    # -- what the sandbox and Redis hold -------------------------------------------------------------------

    def sandbox(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.sandbox_url}{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def records(self) -> list[dict[str, Any]]:
        return list(self.sandbox("/_sandbox/records")["records"])

    def producer(self) -> Producer:
        return Producer(self.keys, self.partitions, 3600)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers a GET with 200 (within a second; a self-signed certificate is not checked here)."""
    try:
        return httpx.get(url, timeout=1, verify=False).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition: Any, timeout_s: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}" + (f"\n{proc.tail()}" if proc else ""))


def enqueue(client: redis.Redis, relay: Relay, write_key: str, messages: list[dict[str, Any]]) -> None:
    """Enqueue like ingest does (the producer's pipeline path), in batches of 500."""
    producer = relay.producer()
    for start in range(0, len(messages), 500):
        with client.pipeline(transaction=False) as pipe:
            producer.add(pipe, [producer.entry(write_key, m) for m in messages[start : start + 500]])
            pipe.execute()


def tracks(count: int, users: int = 20, event: str = "Clicked", **extra: Any) -> list[dict[str, Any]]:
    """Track calls, each tagged with its messageId in ``properties.mid`` and its per-user sequence in ``seq``."""
    messages = []
    for n in range(count):
        mid = uuid.uuid4().hex
        message = {
            "type": "track",
            "event": event,
            "userId": f"user-{n % users}",
            "messageId": mid,
            "timestamp": "2026-11-28T20:00:00Z",
            "properties": {"mid": mid, "seq": n},
        }
        message.update(extra)
        messages.append(message)
    return messages


@dataclass
class Reconciliation:
    delivered: set[str]
    dead: dict[str, Any]  # messageId → letter
    duplicates: int
    missing: set[str]
    schedule: int
    pending: int


def reconcile(client: redis.Redis, relay: Relay, messages: list[dict[str, Any]], write_key: str) -> Reconciliation:
    """Where each message ended: delivered (its record at the sandbox), dead-lettered, or missing (so far)."""
    counts = Counter(
        (item["record"].get("evtData") or item["record"].get("profileData") or {}).get("mid")
        for item in relay.records()
    )
    counts.pop(None, None)
    letters = {letter.message.get("messageId"): letter for letter in DeadLetterStore(client, relay.keys).scan()}
    letters = {mid: letter for mid, letter in letters.items() if letter.write_key == write_key}
    wanted = {m["messageId"] for m in messages}
    delivered = {mid for mid in wanted if counts.get(mid)}
    schedule = sum(int(client.zcard(relay.keys.retry_due(p))) for p in range(relay.partitions))
    pending = 0
    for p in range(relay.partitions):
        with contextlib.suppress(redis.ResponseError):
            pending += int(client.xpending(relay.keys.stream(p), GROUP)["pending"])
    return Reconciliation(
        delivered=delivered,
        dead={mid: letter for mid, letter in letters.items() if mid in wanted},
        duplicates=sum(count - 1 for mid, count in counts.items() if mid in wanted and count > 1),
        missing=wanted - delivered - set(letters),
        schedule=schedule,
        pending=pending,
    )


def settle(
    client: redis.Redis, relay: Relay, messages: list[dict[str, Any]], write_key: str, *, timeout_s: float, proc: Proc
) -> Reconciliation:
    """Wait until every message is delivered or dead-lettered and nothing waits; return the reconciliation."""
    result: list[Reconciliation] = []

    def done() -> bool:
        result[:] = [reconcile(client, relay, messages, write_key)]
        state = result[0]
        return not state.missing and state.schedule == 0 and state.pending == 0

    try:
        wait_for(done, timeout_s, "every message to be delivered or dead-lettered", proc)
    except AssertionError as exc:
        state = result[0] if result else None
        detail = f"missing={len(state.missing)} schedule={state.schedule} pending={state.pending}" if state else ""
        raise AssertionError(f"{exc}\n{detail}") from None
    return result[0]


def queued(client: redis.Redis, relay: Relay) -> list[Envelope]:
    """Every envelope in the relay's partition streams (what ingest accepted and no worker has taken yet)."""
    return [
        Envelope.decode(fields) for p in range(relay.partitions) for _, fields in client.xrange(relay.keys.stream(p))
    ]


def transformed_then_delivered(
    client: redis.Redis, relay: Relay, write_key: str, *, timeout_s: float = 60
) -> tuple[list[Envelope], list[dict[str, Any]], list[dict[str, Any]]]:
    """What ingest queued, what today's transform makes of it (with the relay's destination), and what the sandbox
    received once a worker (started here) delivered that many records. Call it with ingest running and no worker."""
    envelopes = [e for e in queued(client, relay) if e.write_key == write_key]
    destination = load_destinations(relay.tmp / "destinations.toml", env={})[write_key]
    expected: list[dict[str, Any]] = []
    for envelope in envelopes:
        result = transform(envelope.message, destination, time.time())
        assert isinstance(result, list | Skip), (envelope.message, result)  # a skip by rule (group) sends nothing
        expected += result if isinstance(result, list) else []
    worker = relay.start_worker()
    wait_for(
        lambda: len(relay.records()) >= len(expected), timeout_s, f"{len(expected)} records at the sandbox", worker
    )
    delivered = [item["record"] for item in relay.records() if item["account_id"] == destination.account_id]
    return envelopes, expected, delivered


def same_records(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> bool:
    """The same records, whatever the order in which users' batches were uploaded."""
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in left) == sorted(
        orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in right
    )
