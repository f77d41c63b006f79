"""End-to-end delivery throughput and idle latency: this relay vs a naive one-Celery-task-per-message baseline.

Run: ``.venv/bin/python tests/bench/bench_delivery.py [--messages 100000] [--naive-messages 1500] [--workers 2]``

Real processes on loopback, one run, side by side: ``ctrelay sandbox`` (CleverTap, 15-concurrent cap),
and either ``ctrelay worker`` (this relay: 16 partitions, batch-sized drain tasks) or the NAIVE BASELINE
defined below (a Celery worker, threads pool of 15 — CleverTap's cap —, one task per message: the same
transform, then one upload of that message's records). Messages/s are counted end to end, from the
first message handed to the queue (the relay: the producer's pipelined XADDs, as ingest does; the
naive baseline: one ``apply_async`` per message) to the last record the sandbox accepted, read from the
sandbox's own ``/_sandbox/stats``; the relay's steady state is also given (records/s between 10 % and
90 % of the run accepted: the ramp-up of one latency and the tail left out). The relay is measured at a
sandbox latency of 200 ms (where the ceiling is ``cap × 1000 / latency`` = 75,000 msgs/s), 1000 ms
(ceiling 15,000 msgs/s, below this machine's CPU limit) and 0 ms (CPU-bound); the baseline at 200 and 0 ms.
Idle latency: one track enqueued on an idle relay until the sandbox holds it (0 ms sandbox latency), 20 times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
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
CAP = 15
RELAY_LATENCIES_MS = (200, 1000, 0)
"""Sandbox latencies of the relay runs; at 1000 ms the ceiling (15,000 msgs/s) is below this machine's CPU limit."""


# -- the NAIVE BASELINE: one Celery task per message (run in its own process with --naive-worker) ----------


def naive_app(broker: str, queue: str) -> Any:
    """A Celery app whose one task transforms and uploads ONE message (what the relay is measured against)."""
    from celery import Celery

    from worker.core.destinations import Destination
    from worker.transform.records import transform

    app = Celery("naive", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        broker_transport_options={"global_keyprefix": f"{queue}:"},
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    destination = Destination(
        write_key=WRITE_KEY, account_id=ACCOUNT, passcode=PASSCODE, endpoint=os.environ.get("NAIVE_ENDPOINT")
    )
    http = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64))
    headers = {"X-CleverTap-Account-Id": ACCOUNT, "X-CleverTap-Passcode": PASSCODE}

    @app.task(name="naive.deliver", bind=True, max_retries=100)
    def deliver(self: Any, write_key: str, message: dict[str, Any]) -> None:
        records = transform(message, destination, time.time())
        if not isinstance(records, list):
            return
        response = http.post(f"{destination.base_url}/1/upload", json={"d": records}, headers=headers)
        if response.status_code == 429 or response.status_code >= 500:
            raise self.retry(countdown=0.05)

    return app


# -- process helpers -------------------------------------------------------------------------------------


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


class Sandbox:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = start([sys.executable, "-c", CLI, "sandbox", "--port", str(self.port)], env, tmp / "sandbox.log")
        self.http = httpx.Client(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.http.get(f"{self.url}/_sandbox/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the sandbox did not start")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.http.get(f"{self.url}/_sandbox/stats").json()
        return stats

    def latency(self, ms: float) -> None:
        self.http.post(f"{self.url}/_sandbox/faults", json={"latency_ms": ms}).raise_for_status()

    def wait_records(
        self, target: int, timeout_s: float, poll_s: float = 0.02, samples: list[tuple[float, int]] | None = None
    ) -> float:
        """Wait until the sandbox has accepted ``target`` records in all; the time it happened (monotonic).

        ``samples`` collects (time, records) at every poll.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            records = self.stats()["records"]
            now = time.monotonic()
            if samples is not None:
                samples.append((now, records))
            if records >= target:
                return now
            time.sleep(poll_s)
        raise RuntimeError(f"the sandbox did not reach {target} records in {timeout_s:.0f}s: {self.stats()}")


def steady_rate(samples: list[tuple[float, int]], first: int, count: int) -> float:
    """Records/s between the first samples past 10 % and past 90 % of ``count`` records (above ``first``).

    The records counted at those two samples are used (not 10 % and 90 %), so a late sample cannot inflate it.
    """
    low_t, low_r = next((t, r) for t, r in samples if r - first >= 0.1 * count)
    high_t, high_r = next((t, r) for t, r in samples if r - first >= 0.9 * count)
    if high_t <= low_t:
        return float("nan")
    return (high_r - low_r) / (high_t - low_t)


def message(n: int) -> dict[str, Any]:
    mid = uuid.uuid4().hex
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"user-{n % 5000}",
        "anonymousId": f"anon-{n % 5000}",
        "messageId": mid,
        "timestamp": "2026-11-28T20:00:00.123Z",
        "receivedAt": "2026-11-28T20:00:00.200Z",
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "10.0.0.1"},
        "properties": {"productId": f"p-{n % 100}", "price": 9.99, "currency": "EUR", "Category Name": "shoes"},
    }


# -- the scenarios ---------------------------------------------------------------------------------------


def run_relay(
    client: redis.Redis, sandbox: Sandbox, env: dict[str, str], *, workers: int, count: int, tmp: Path
) -> dict[str, float]:
    prefix = env["CTRELAY_REDIS_PREFIX"]
    producer = Producer(Keys(prefix), 16, 3600)
    procs = [start([sys.executable, "-c", CLI, "worker"], env, tmp / f"worker-{i}.log") for i in range(workers)]
    try:
        base = sandbox.stats()["records"]
        # warm up and idle latency: one track at a time on an idle relay
        sandbox.latency(0)
        latencies = []
        for n in range(21):
            entry = producer.entry(WRITE_KEY, message(n))
            started = time.monotonic()
            with client.pipeline(transaction=False) as pipe:
                producer.add(pipe, [entry])
                pipe.execute()
            done = sandbox.wait_records(base + n + 1, 30, poll_s=0.002)
            if n:  # the first one also waits for the worker to start
                latencies.append(done - started)
            time.sleep(0.3)
        figures: dict[str, float] = {
            "idle_latency_median_s": statistics.median(latencies),
            "idle_latency_max_s": max(latencies),
        }
        for latency_ms in RELAY_LATENCIES_MS:
            sandbox.latency(latency_ms)
            before = sandbox.stats()
            entries = [producer.entry(WRITE_KEY, message(n)) for n in range(count)]
            started = time.monotonic()
            for first in range(0, count, 5000):
                with client.pipeline(transaction=False) as pipe:
                    producer.add(pipe, entries[first : first + 5000])
                    pipe.execute()
            samples: list[tuple[float, int]] = []
            done = sandbox.wait_records(before["records"] + count, 600, poll_s=0.05, samples=samples)
            after = sandbox.stats()
            figures[f"relay_{latency_ms}ms_steady_msgs_per_s"] = steady_rate(samples, before["records"], count)
            uploads = after["uploads"] - before["uploads"]
            figures[f"relay_{latency_ms}ms_msgs_per_s"] = count / (done - started)
            figures[f"relay_{latency_ms}ms_records_per_upload"] = count / max(1, uploads)
            figures[f"relay_{latency_ms}ms_max_concurrency"] = after["max_concurrency"]
            figures[f"relay_{latency_ms}ms_429s"] = after["rejected_429"] - before["rejected_429"]
        return figures
    finally:
        for process in procs:
            stop(process)


def run_naive(sandbox: Sandbox, env: dict[str, str], counts: dict[int, int], tmp: Path) -> dict[str, float]:
    queue = f"{env['CTRELAY_REDIS_PREFIX']}-naive"
    env = dict(env, NAIVE_QUEUE=queue, NAIVE_ENDPOINT=sandbox.url)
    worker = start([sys.executable, __file__, "--naive-worker"], env, tmp / "naive.log")
    app = naive_app(env["REDIS_URL"], queue)
    figures: dict[str, float] = {}
    try:
        for latency_ms, count in counts.items():
            sandbox.latency(latency_ms)
            base = sandbox.stats()["records"]
            messages = [message(n) for n in range(count)]
            started = time.monotonic()
            for item in messages:  # the naive client path: one task per message
                app.send_task("naive.deliver", args=(WRITE_KEY, item), queue=queue)
            done = sandbox.wait_records(base + count, 900, poll_s=0.05)
            figures[f"naive_{latency_ms}ms_msgs_per_s"] = count / (done - started)
        return figures
    finally:
        stop(worker)


def naive_worker() -> None:
    app = naive_app(os.environ["REDIS_URL"], os.environ["NAIVE_QUEUE"])
    app.worker_main(["worker", "--pool=threads", f"--concurrency={CAP}", "--loglevel=WARNING"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages per relay scenario")
    parser.add_argument("--naive-messages", type=int, default=1500, help="messages for the naive baseline at 200 ms")
    parser.add_argument("--naive-messages-0ms", type=int, default=6000, help="messages for the naive baseline at 0 ms")
    parser.add_argument("--workers", type=int, default=2, help="ctrelay worker processes")
    parser.add_argument("--naive-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_worker:
        naive_worker()
        return
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(redis_url)
    prefix = f"bench-delivery-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as scratch:
        tmp = Path(scratch)
        env = dict(os.environ, REDIS_URL=redis_url, CTRELAY_REDIS_PREFIX=prefix, CTRELAY_LOG_LEVEL="warning")
        env.update(
            CTRELAY_DESTINATIONS=str(tmp / "destinations.toml"), CTRELAY_PARTITIONS="16", CTRELAY_METRICS_PORT="0"
        )
        sandbox = Sandbox(tmp, env)
        (tmp / "destinations.toml").write_text(
            f'[[destinations]]\nwrite_key = "{WRITE_KEY}"\naccount_id = "{ACCOUNT}"\npasscode = "{PASSCODE}"\n'
            f'endpoint = "{sandbox.url}"\n'
        )
        try:
            relay = run_relay(client, sandbox, env, workers=args.workers, count=args.messages, tmp=tmp)
            naive = run_naive(sandbox, env, {200: args.naive_messages, 0: args.naive_messages_0ms}, tmp)
        finally:
            stop(sandbox.process)
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
    print(f"bench_delivery: {args.messages} msgs per relay run, {args.workers} ctrelay worker processes, 16 partitions")
    print(
        f"  idle latency, one track → sandbox: median {relay['idle_latency_median_s'] * 1000:.0f} ms, "
        f"max {relay['idle_latency_max_s'] * 1000:.0f} ms (20 probes)"
    )
    for latency_ms in RELAY_LATENCIES_MS:
        ours = relay[f"relay_{latency_ms}ms_msgs_per_s"]
        print(f"  sandbox latency {latency_ms} ms:")
        per_upload = relay[f"relay_{latency_ms}ms_records_per_upload"]
        concurrent = relay[f"relay_{latency_ms}ms_max_concurrency"]
        throttled = relay[f"relay_{latency_ms}ms_429s"]
        steady = relay[f"relay_{latency_ms}ms_steady_msgs_per_s"]
        print(
            f"    this relay               {ours:10,.0f} msgs/s   ({per_upload:.0f} records/upload, "
            f"max {concurrent:.0f} concurrent, {throttled:.0f} x 429)"
        )
        print(f"      steady state (10-90 %) {steady:10,.0f} msgs/s")
        base = naive.get(f"naive_{latency_ms}ms_msgs_per_s")
        if base:
            print(f"    NAIVE one task/msg       {base:10,.0f} msgs/s")
            print(f"    relay / naive            {ours / base:10,.1f} x")
        if latency_ms:
            ceiling = CAP * 1000 / (latency_ms / 1000)
            label = f"ceiling cap×1000/{latency_ms / 1000:g} s"
            print(
                f"    {label:<24} {ceiling:10,.0f} msgs/s   relay / ceiling = {ours / ceiling:.2f} "
                f"(steady state {steady / ceiling:.2f})"
            )


if __name__ == "__main__":
    main()
