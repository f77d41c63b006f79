"""End to end through HTTP ingest, and single calls, this tree against a base commit, side by side in one run.

Run: ``.venv/bin/python tests/bench/bench_e2e.py [--base REV] [--seconds 4] [--slow-seconds 10] [--workers 2]``

Each side is a relay of its own, real processes on loopback: a ``redis-server`` of its own (so that all of its
CPU is the relay's), ``ctrelay sandbox`` (CleverTap, 15 concurrent uploads), ``ctrelay ingest`` and
``ctrelay worker`` (×``--workers``) with the production settings. The base side runs the code of ``--base``
(default: the merge-base of HEAD and c55367e), checked out into a temporary ``git worktree`` and run with this
virtualenv (its processes start in that checkout, so its packages come first on ``sys.path``); the head side
runs this tree. The worktree is removed at the end.

The load is Segment-shaped and comes from separate processes (a lean asyncio HTTP/1.1 client, keep-alive
connections, every body built before the clock starts, Basic auth with the write key):

- end to end: ``/v1/batch`` requests of 100 ~300-byte tracks (as analytics-python sends them), at a sandbox
  latency of 200 ms and of 1 s, ``seconds × ceiling`` messages each (``--seconds`` at 200 ms, ``--slow-seconds``
  at 1 s: there 4 s of load are only ~3 s of uploads of 1 s each, and the steady state of one code moved by ±25 %
  between runs; 10 s hold it within a few per cent), where the ceiling is CleverTap's ``15 × 1000 / latency``
  (75,000 and 15,000 msgs/s). The rate is messages / (last record at the sandbox − first
  request sent); the steady state is records/s between 10 % and 90 % of them arriving. Per process: CPU
  microseconds per message (user + system from ``/proc/<pid>/stat``, children included: uvicorn, Celery's pool)
  over the whole scenario, every message having gone through each process once.
- CPU-bound: the same load at a sandbox latency of 0 ms (``--zero-messages``): the worker's CPU per message at 0 ms.
- single calls: ``/v1/track`` with one message per request, ``Content-Type: text/plain`` (analytics.js standard
  mode), workers stopped (so Redis's CPU is the enqueue alone): requests/s and CPU microseconds per request.

Scenarios alternate base / head, so both see the same machine; CPU per message hardly depends on the load
of the (shared) machine, wall-clock rates do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

from bench_delivery import CAP, steady_rate  # noqa: E402
from bench_ingest import WRITE_KEY, _send, cpu_seconds  # noqa: E402
from bench_ingest import message as track  # noqa: E402
from delivery_e2e import Proc, Relay  # noqa: E402
from machine import checkout, code_version, load_average  # noqa: E402
from soak import PRODUCTION  # noqa: E402

from worker.cli.embedded import redis_server  # noqa: E402

SESSION_START = "c55367e"
"""The commit this release's CPU work (issue 17, second part) starts from: the default base."""
LATENCIES_MS = (200, 1000)
SINGLES_PER_SECOND = 2500
"""Single calls sent per ``--seconds`` (about what one ingest process answered at the base commit)."""


def browser_track(i: int) -> dict[str, Any]:
    """A track as analytics.js (standard mode) sends it to ``/v1/t``: one message, its context, ``sentAt``."""
    return {
        "type": "track",
        "event": "Product Viewed",
        "properties": {"product_id": f"p-{i % 100}", "price": 9.99, "currency": "EUR"},
        "anonymousId": f"9a2b4c6d-{i % 5000:04d}-4e8f-9a1b-2c3d4e5f6a7b",
        "userId": None,
        "messageId": f"ajs-next-{i}-{time.time_ns()}",
        "timestamp": "2026-12-01T10:00:00.000Z",
        "sentAt": "2026-12-01T10:00:00.005Z",
        "integrations": {},
        "context": {
            "page": {"path": "/shoes", "referrer": "", "search": "", "title": "Shoes", "url": "https://shop.example/shoes"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
            "locale": "en-US",
            "library": {"name": "analytics.js", "version": "next-1.84.3"},
        },
    }  # fmt: skip


def bodies(kind: str, first: int, count: int) -> tuple[str, str, list[bytes]]:
    """The path, content type and request bodies of ``count`` messages from number ``first`` on."""
    if kind == "batch":
        sent_at = "2026-12-01T10:00:01Z"
        return "/v1/batch", "application/json", [
            orjson.dumps({"batch": [track(n) for n in range(s, min(s + 100, first + count))], "sentAt": sent_at})
            for s in range(first, first + count, 100)
        ]  # fmt: skip
    return "/v1/track", "text/plain", [orjson.dumps(browser_track(n)) for n in range(first, first + count)]


def load(port: int, kind: str, first: int, count: int, *, connections: int, ready: Any, go: Any, results: Any) -> None:
    """One load process: build its bodies, say so, wait for the start, send, report the statuses."""
    path, content_type, prepared = bodies(kind, first, count)
    ready.put(len(prepared))
    go.wait(timeout=120)
    results.put(asyncio.run(_send(port, path, prepared, connections, content_type)))


@dataclass
class Load:
    """Load processes started, their bodies built, waiting for ``go``; each puts its statuses on ``results``."""

    loaders: list[Any]
    go: Any
    results: Any
    requests: int

    def join(self) -> None:
        for loader in self.loaders:
            loader.join(timeout=10)


def start_load(port: int, kind: str, first: int, count: int, *, processes: int, connections: int) -> Load:
    """``count`` messages from number ``first`` on, shared by ``processes`` load processes (spawned), ready to go."""
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    shares = [(first + i * count // processes, (i + 1) * count // processes - i * count // processes)
              for i in range(processes)]  # fmt: skip
    loaders = [
        context.Process(
            target=load,
            args=(port, kind, start, n),
            kwargs={"connections": connections, "ready": ready, "go": go, "results": results},
        )
        for start, n in shares
    ]
    for loader in loaders:
        loader.start()
    return Load(loaders, go, results, sum(ready.get(timeout=120) for _ in loaders))


@dataclass
class Side:
    """One relay: its name, the checkout it runs, its processes and Redis."""

    name: str
    relay: Relay
    redis_pid: int
    port: int
    ingest: Proc
    workers: list[Proc] = field(default_factory=list)
    sequence: int = 0

    def cpu(self) -> dict[str, float]:
        sandbox = next(p for p in self.relay.procs if p.name == "sandbox")
        return {
            "ingest": cpu_seconds(self.ingest.process.pid),
            "worker": sum(cpu_seconds(w.process.pid) for w in self.workers),
            "redis": cpu_seconds(self.redis_pid),
            "sandbox": cpu_seconds(sandbox.process.pid),
        }

    def records(self) -> int:
        return int(self.relay.sandbox("/_sandbox/stats")["records"])

    def latency(self, ms: float) -> None:
        self.relay.sandbox("/_sandbox/faults", "POST", json={"latency_ms": ms})

    def send(self, kind: str, count: int, processes: int, connections: int, poll: bool) -> dict[str, float]:
        """Send ``count`` messages; with ``poll``, until the sandbox holds them all. Figures of the scenario."""
        first, self.sequence = self.sequence, self.sequence + count
        run = start_load(self.port, kind, first, count, processes=processes, connections=connections)
        requests, go, results = run.requests, run.go, run.results
        base, cpu = self.records(), self.cpu()
        started = time.monotonic()
        go.set()
        statuses: list[int] = []
        samples: list[tuple[float, int]] = []
        finished = 0
        deadline = started + 900
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                while finished < len(run.loaders):
                    statuses += results.get_nowait()
                    finished += 1
            if finished == len(run.loaders) and not poll:
                break
            if poll:
                samples.append((time.monotonic(), self.records()))
                if finished == len(run.loaders) and samples[-1][1] >= base + count:
                    break
            time.sleep(0.05)
        else:
            raise SystemExit(f"{self.name}: {kind} scenario did not finish in 900 s")
        done = samples[-1][0] if poll else time.monotonic()
        used = {k: v - cpu[k] for k, v in self.cpu().items()}
        run.join()
        refused = [s for s in statuses if s != 200]
        if refused or len(statuses) != requests:
            raise SystemExit(f"{self.name}: {len(refused)} of {requests} requests not answered 200 ({refused[:3]})")
        figures = {f"{k}_us": v / count * 1e6 for k, v in used.items()}
        figures["rate"] = count / (done - started)
        if poll:
            figures["steady"] = steady_rate(samples, base, count)
        return figures


@contextlib.contextmanager
def side(name: str, root: Path, scratch: Path, workers: int) -> Iterator[Side]:
    """A relay running the code of ``root``, on a Redis of its own; every process stopped on exit."""
    tmp = scratch / name
    tmp.mkdir()
    env = dict(PRODUCTION, CTRELAY_LOG_LEVEL="warning", PYTHONPATH=str(root))
    probe = [sys.executable, "-c", "import worker; print(worker.__file__)"]
    found = subprocess.run(probe, cwd=root, env=dict(os.environ, **env), capture_output=True, text=True, check=True)
    imported = found.stdout.strip()
    if not Path(imported).is_relative_to(root):
        raise SystemExit(f"{name}: the processes would run {imported}, not the code of {root}")
    with redis_server(shutil.which("redis-server") or "redis-server") as handle:
        client = redis.Redis.from_url(handle.url)
        redis_pid = int(client.info("server")["process_id"])
        client.close()
        relay = Relay(tmp, handle.url, partitions=16, env_extra=env, root=root)
        try:
            relay.start_sandbox()
            relay.destinations([{"write_key": WRITE_KEY, "account_id": "BENCH", "passcode": "bench"}])
            ingest, url = relay.start_ingest()
            one = Side(name, relay, redis_pid, int(url.rsplit(":", 1)[1]), ingest)
            one.workers = [relay.start_worker() for _ in range(workers)]
            one.latency(0)
            one.send("batch", 2000, 1, 2, poll=True)  # warm-up: imports, connections, groups, caches
            yield one
        finally:
            relay.stop_all()


def ratio(head: float, base: float) -> str:
    return f"{head / base:9.2f}" if base else f"{'-':>9}"


def table(rows: list[tuple[str, str, float, float]]) -> None:
    print(f"    {'':34} {'base':>11} {'head':>11} {'head/base':>9}")
    for label, unit, base, head in rows:
        fmt = "{:11,.0f}" if unit == "n" else "{:11.2f}" if unit == "x" else "{:11.1f}"
        print(f"    {label:34} {fmt.format(base)} {fmt.format(head)} {ratio(head, base)}")


def scenario_messages(latency_ms: int, seconds: float, slow_seconds: float) -> int:
    """Messages of the scenario at ``latency_ms``: its length (``seconds``, ``slow_seconds`` at 1 s) at the ceiling
    rate, in whole batches of 100."""
    length = slow_seconds if latency_ms >= 1000 else seconds
    return int(CAP * 1000 / (latency_ms / 1000) * length) // 100 * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", help=f"the commit to compare with (default: merge-base of HEAD and {SESSION_START})")
    parser.add_argument("--seconds", type=float, default=4, help="scenario length at the ceiling rate (messages)")
    parser.add_argument("--slow-seconds", type=float, default=10, help="scenario length at 1 s (messages)")
    parser.add_argument("--workers", type=int, default=2, help="ctrelay worker processes per side")
    parser.add_argument("--processes", type=int, default=2, help="load processes")
    parser.add_argument("--connections", type=int, default=8, help="connections per load process")
    parser.add_argument("--zero-messages", type=int, default=100_000, help="messages at 0 ms (worker CPU); 0: none")
    args = parser.parse_args()
    base_rev = args.base or subprocess.run(
        ["git", "merge-base", "HEAD", SESSION_START], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()  # fmt: skip
    base_label = subprocess.run(["git", "log", "-1", "--format=%h %cd", "--date=iso", base_rev], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    figures: dict[tuple[str, str], dict[str, float]] = {}
    load_before = load_average()
    with (
        tempfile.TemporaryDirectory(prefix="bench-e2e-") as scratch,
        checkout(base_rev) as base_root,
        side("base", base_root, Path(scratch), args.workers) as base,
        side("head", ROOT, Path(scratch), args.workers) as head,
    ):
        for latency_ms in LATENCIES_MS:
            count = scenario_messages(latency_ms, args.seconds, args.slow_seconds)
            for one in (base, head):
                one.latency(latency_ms)
                figures[(one.name, f"{latency_ms}")] = one.send(
                    "batch", count, args.processes, args.connections, poll=True
                )
        if args.zero_messages:
            for one in (base, head):
                one.latency(0)
                figures[(one.name, "0")] = one.send("batch", args.zero_messages, args.processes, args.connections, True)
        singles = int(SINGLES_PER_SECOND * args.seconds)
        for one in (base, head):
            for worker in one.workers:
                worker.stop()
            one.workers = []
            figures[(one.name, "single")] = one.send("single", singles, args.processes, args.connections, False)

    print(f"end to end through HTTP ingest, and single calls: base {base_label} vs head {code_version()}")
    print(f"  each side: own redis-server, ctrelay ingest (1 process), {args.workers} ctrelay worker, ctrelay "
          f"sandbox; load {args.processes} processes x {args.connections} connections; load average "
          f"{load_before} before, {load_average()} after")  # fmt: skip
    for latency_ms in LATENCIES_MS:
        ceiling = CAP * 1000 / (latency_ms / 1000)
        count = scenario_messages(latency_ms, args.seconds, args.slow_seconds)
        b, h = figures[("base", f"{latency_ms}")], figures[("head", f"{latency_ms}")]
        print(f"  latency {latency_ms} ms (ceiling 15 x 1000 / {latency_ms / 1000:g} s = {ceiling:,.0f} msgs/s), "
              f"{count:,} messages via /v1/batch x100:")  # fmt: skip
        relay_b = b["ingest_us"] + b["worker_us"] + b["redis_us"]
        relay_h = h["ingest_us"] + h["worker_us"] + h["redis_us"]
        table([
            ("ingest CPU us/msg", "f", b["ingest_us"], h["ingest_us"]),
            ("worker CPU us/msg", "f", b["worker_us"], h["worker_us"]),
            ("redis-server CPU us/msg", "f", b["redis_us"], h["redis_us"]),
            ("relay CPU us/msg (the three)", "f", relay_b, relay_h),
            ("sandbox CPU us/msg", "f", b["sandbox_us"], h["sandbox_us"]),
            ("relay msgs/s", "n", b["rate"], h["rate"]),
            ("steady state (10-90 %) msgs/s", "n", b["steady"], h["steady"]),
            ("relay / ceiling", "x", b["rate"] / ceiling, h["rate"] / ceiling),
            ("steady state / ceiling", "x", b["steady"] / ceiling, h["steady"] / ceiling),
        ])  # fmt: skip
    if args.zero_messages:
        b, h = figures[("base", "0")], figures[("head", "0")]
        print(f"  latency 0 ms (CPU-bound), {args.zero_messages:,} messages via /v1/batch x100:")
        table([
            ("ingest CPU us/msg", "f", b["ingest_us"], h["ingest_us"]),
            ("worker CPU us/msg", "f", b["worker_us"], h["worker_us"]),
            ("redis-server CPU us/msg", "f", b["redis_us"], h["redis_us"]),
            ("relay msgs/s", "n", b["rate"], h["rate"]),
        ])  # fmt: skip
    b, h = figures[("base", "single")], figures[("head", "single")]
    print(f"  single calls: {int(SINGLES_PER_SECOND * args.seconds):,} x /v1/track, one message, text/plain, "
          "Basic auth (workers stopped):")  # fmt: skip
    table([
        ("single calls requests/s", "n", b["rate"], h["rate"]),
        ("ingest CPU us/request", "f", b["ingest_us"], h["ingest_us"]),
        ("redis-server CPU us/request", "f", b["redis_us"], h["redis_us"]),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
