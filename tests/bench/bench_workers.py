"""Scaling out: one ``ctrelay worker`` process vs two, draining the same backlog, side by side in one run.

Run: ``.venv/bin/python tests/bench/bench_workers.py [--messages 60000]``

Real processes on loopback: one ``ctrelay sandbox`` (CleverTap, cap 15) and 1 or 2 ``ctrelay worker``
processes, started and ready (their metrics port answers) before the backlog is written in one go with
the producer's pipelined XADDs (as ingest does). Throughput is the drain of the backlog: the records the
sandbox accepted (its own ``/_sandbox/stats``) from the moment the whole backlog is written until the
last one, per second (the end-to-end figure from the first XADD is printed too). Two regimes:

- CPU-bound: sandbox latency 0 ms, 16 drain threads per worker. One worker process is limited by one
  core (the GIL); a second process adds a core's worth (on this 2-core machine, shared with the sandbox
  and Redis, the ratio stays well below 2).
- concurrency-bound: sandbox latency 1000 ms, 2 drain threads per worker (``CTRELAY_WORKER_CONCURRENCY``),
  half the backlog: one worker holds at most 2 uploads in flight, two hold 4 (the CleverTap cap of 15 is
  shared by all), and the CPU is not the limit at these rates.

Each run uses its own key prefix, so the runs do not see each other's keys.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from worker.cli.embedded import free_port  # noqa: E402
from worker.core.keys import Keys  # noqa: E402
from worker.store.producer import Producer  # noqa: E402

CLI = "from worker.cli import app; app(prog_name='ctrelay')"
WRITE_KEY, ACCOUNT, PASSCODE = "bench-wk", "BENCH", "bench"
PARTITIONS = 16


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", CLI, *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def wait_until(url: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {deadline_s:.0f}s")


def message(n: int) -> dict[str, Any]:
    mid = uuid.uuid4().hex
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"user-{n % 5000}",
        "messageId": mid,
        "timestamp": "2026-11-28T20:00:00.123Z",
        "receivedAt": "2026-11-28T20:00:00.200Z",
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "10.0.0.1"},
        "properties": {"productId": f"p-{n % 100}", "price": 9.99, "currency": "EUR", "Category Name": "shoes"},
    }


def drain_backlog(
    client: redis.Redis, base_env: dict[str, str], tmp: Path, *, workers: int, count: int, latency_ms: int,
    concurrency: int,
) -> dict[str, float]:  # fmt: skip
    """Start a sandbox and ``workers`` workers, write ``count`` messages at once; msgs/s until all delivered."""
    prefix = f"bench-workers-{uuid.uuid4().hex[:8]}"
    sandbox_port = free_port()
    env = dict(base_env, CTRELAY_REDIS_PREFIX=prefix, CTRELAY_WORKER_CONCURRENCY=str(concurrency))
    destinations = tmp / f"{prefix}.toml"
    destinations.write_text(
        f'[[destinations]]\nwrite_key = "{WRITE_KEY}"\naccount_id = "{ACCOUNT}"\npasscode = "{PASSCODE}"\n'
        f'endpoint = "http://127.0.0.1:{sandbox_port}"\n'
    )
    env["CTRELAY_DESTINATIONS"] = str(destinations)
    sandbox_args = ["sandbox", "--port", str(sandbox_port), "--latency-ms", str(latency_ms)]
    sandbox = start(sandbox_args, env, tmp / f"{prefix}-sandbox.log")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        wait_until(f"{sandbox_url}/_sandbox/health", 30)
        for n in range(workers):
            metrics = free_port()
            procs.append(start(["worker"], dict(env, CTRELAY_METRICS_PORT=str(metrics)), tmp / f"{prefix}-w{n}.log"))
            wait_until(f"http://127.0.0.1:{metrics}/metrics", 60)
        producer = Producer(Keys(prefix), PARTITIONS, 3600)
        entries = [producer.entry(WRITE_KEY, message(n)) for n in range(count)]
        started = time.monotonic()
        for first in range(0, count, 5000):
            with client.pipeline(transaction=False) as pipe:
                producer.add(pipe, entries[first : first + 5000])
                pipe.execute()
        with httpx.Client(timeout=10) as http:
            written = time.monotonic()
            at_written = http.get(f"{sandbox_url}/_sandbox/stats").json()["records"]
            deadline = time.monotonic() + 600
            while (stats := http.get(f"{sandbox_url}/_sandbox/stats").json())["records"] < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not delivered in time: {stats}")
                time.sleep(0.05)
        done = time.monotonic()
        return {
            "msgs_per_s": count / (done - started),
            "backlog_msgs_per_s": (count - at_written) / (done - written),
            "enqueue_s": written - started,
            "records_per_upload": count / max(1, stats["uploads"]),
            "max_concurrency": stats["max_concurrency"],
        }
    finally:
        for process in procs:
            stop(process)
        stop(sandbox)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="backlog size per run")
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(redis_url)
    env = dict(os.environ, REDIS_URL=redis_url, CTRELAY_PARTITIONS=str(PARTITIONS), CTRELAY_LOG_LEVEL="warning")
    env["CTRELAY_LOG_FORMAT"] = "json"
    regimes = [
        ("CPU-bound (sandbox 0 ms, 16 threads/worker)", 0, 16, args.messages),
        ("concurrency-bound (sandbox 1000 ms, 2 threads/worker)", 1000, 2, args.messages // 2),
    ]
    print(
        f"bench_workers: backlogs drained by 1 and 2 worker processes, {PARTITIONS} partitions, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch:
        for label, latency_ms, concurrency, count in regimes:
            runs = {}
            for workers in (1, 2):
                runs[workers] = drain_backlog(
                    client, env, Path(scratch), workers=workers, count=count, latency_ms=latency_ms,
                    concurrency=concurrency,
                )  # fmt: skip
            print(f"  {label}, {count} messages:")
            for workers, figures in runs.items():
                print(
                    f"    {workers} worker{'s' if workers > 1 else ' '}  {figures['backlog_msgs_per_s']:9,.0f} msgs/s  "
                    f"(end to end {figures['msgs_per_s']:,.0f}/s; {figures['records_per_upload']:.0f} records/upload, "
                    f"max {figures['max_concurrency']:.0f} concurrent)"
                )
            ratio = runs[2]["backlog_msgs_per_s"] / runs[1]["backlog_msgs_per_s"]
            print(f"    ratio 2 / 1   {ratio:9.2f} x")
    client.close()


if __name__ == "__main__":
    main()
