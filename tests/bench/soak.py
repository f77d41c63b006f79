"""Soak: a steady rate through the whole relay for a bounded time; throughput, latency, Redis memory, worker RSS.

Run: ``.venv/bin/python tests/bench/soak.py [--rate 1000] [--seconds 120] [--workers 2] [--latency-ms 50]``

Real processes on loopback, as a user runs them: a ``redis-server`` of its own (so that its memory is the
relay's alone), ``ctrelay sandbox`` (``--latency-ms``), ``ctrelay ingest`` and ``--workers`` ``ctrelay worker``
processes, with the production defaults (tick 0.2 s, 16 drain threads, 1000-entry reads). One sender posts
``/v1/batch`` bodies of ``--batch`` tracks at ``--rate`` messages/s; each track carries its send time
(``properties.sent_at``). A collector polls ``/_sandbox/records?since=`` every ``--poll`` seconds: a record's
end-to-end latency is (the poll that first saw it) − (its send time), so the figures are upper bounds, by
at most one poll interval. Every ``--every`` seconds it prints: messages/s in (200 from ingest) and out
(records at the sandbox), the p50/p99 latency of that interval, what waits in Redis, Redis ``used_memory`` and
each worker's RSS. At the end: totals, latency over the whole run, Redis memory per queued message (workers
stopped, ``--backlog`` messages sent through ingest: stream entry + dedup marker, and the stream entries alone
by ``MEMORY USAGE``), and whether worker RSS stayed flat (last third vs first third after the first interval:
growth under 10 % and under 20 MB = flat = PASS). Nothing is asserted; ``--seconds`` is capped at 3600.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from delivery_e2e import Relay, wait_for  # noqa: E402

from worker.cli.embedded import redis_server  # noqa: E402

WRITE_KEY, ACCOUNT, PASSCODE = "soak-wk", "SOAK", "soak"
PRODUCTION = {  # README "Delivery" defaults (Relay's test environment shortens them)
    "CTRELAY_TICK_INTERVAL_S": "0.2",
    "CTRELAY_WORKER_CONCURRENCY": "16",
    "CTRELAY_LEASE_TTL_S": "30",
    "CTRELAY_RECLAIM_IDLE_S": "60",
    "CTRELAY_DRAIN_BUDGET_S": "5",
    "CTRELAY_UPLOAD_TIMEOUT_S": "30",
    "CTRELAY_RETRY_WINDOW_S": "14400",
    "CTRELAY_BACKOFF_MIN_S": "1",
    "CTRELAY_BACKOFF_MAX_S": "300",
}


class Sender(threading.Thread):
    def __init__(self, url: str, rate: float, batch: int) -> None:
        super().__init__(name="soak-sender", daemon=True)
        self.url, self.rate, self.batch = url, rate, batch
        self.stopping = threading.Event()
        self.accepted = 0
        self.failed = 0

    def run(self) -> None:
        started, n = time.monotonic(), 0
        with httpx.Client(base_url=self.url, auth=(WRITE_KEY, ""), timeout=30) as client:
            while not self.stopping.is_set():
                if int((time.monotonic() - started) * self.rate) - n < self.batch:
                    self.stopping.wait(0.005)
                    continue
                now = time.time()
                body = {"batch": [track(n + i, now) for i in range(self.batch)]}
                n += self.batch
                try:
                    ok = client.post("/v1/batch", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.accepted += self.batch
                else:
                    self.failed += self.batch


def track(n: int, sent_at: float) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": f"user-{n % 5000}",
        "messageId": uuid.uuid4().hex,
        "event": "Product Viewed",
        "properties": {"sent_at": sent_at, "n": n, "productId": f"p{n % 977}", "price": 12.5, "currency": "EUR"},
    }


class Collector(threading.Thread):
    """Polls the sandbox for new records; keeps (seen at, latency) of each."""

    def __init__(self, sandbox_url: str, poll_s: float) -> None:
        super().__init__(name="soak-collector", daemon=True)
        self.sandbox_url, self.poll_s = sandbox_url, poll_s
        self.stopping = threading.Event()
        self.seen: list[tuple[float, float]] = []  # (monotonic seen at, latency s)
        self.lock = threading.Lock()

    def run(self) -> None:
        since = 0
        with httpx.Client(base_url=self.sandbox_url, timeout=30) as client:
            while not self.stopping.is_set():
                page = client.get("/_sandbox/records", params={"since": since, "limit": 50_000}).json()
                wall, mono = time.time(), time.monotonic()
                found = [(mono, wall - float(item["record"]["evtData"]["sent_at"])) for item in page["records"]]
                with self.lock:
                    self.seen += found
                since = page["next"] if page["records"] else since
                if len(page["records"]) < 50_000:
                    self.stopping.wait(self.poll_s)

    def between(self, start: float, end: float) -> list[float]:
        with self.lock:
            return [latency for at, latency in self.seen if start <= at < end]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def waiting(client: redis.Redis, relay: Relay) -> int:
    keys = relay.keys
    with client.pipeline(transaction=False) as pipe:
        for p in range(relay.partitions):
            pipe.xlen(keys.stream(p))
            pipe.zcard(keys.retry_due(p))
        return sum(int(x) for x in pipe.execute())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000, help="messages/s sent to ingest")
    parser.add_argument("--seconds", type=float, default=120, help="how long to send (at most 3600)")
    parser.add_argument("--workers", type=int, default=2, help="ctrelay worker processes")
    parser.add_argument("--latency-ms", type=float, default=50, help="the sandbox's answer time")
    parser.add_argument("--batch", type=int, default=100, help="messages per /v1/batch request")
    parser.add_argument("--every", type=float, default=10, help="seconds between two printed lines")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between two polls of the sandbox")
    parser.add_argument("--backlog", type=int, default=20_000, help="messages queued for the memory measure")
    args = parser.parse_args()
    seconds = min(args.seconds, 3600)
    out = print
    with (
        tempfile.TemporaryDirectory(prefix="ctrelay-soak-") as tmp,
        redis_server(shutil.which("redis-server") or "redis-server") as handle,
    ):
        relay = Relay(Path(tmp), handle.url, partitions=16, env_extra=PRODUCTION)
        client = redis.Redis.from_url(handle.url)
        try:
            relay.start_sandbox("--latency-ms", str(args.latency_ms))
            relay.destinations([{"write_key": WRITE_KEY, "account_id": ACCOUNT, "passcode": PASSCODE}])
            _, url = relay.start_ingest()
            workers = [relay.start_worker() for _ in range(args.workers)]
            time.sleep(3)  # the workers connect and create their groups
            out(f"soak: {args.rate:.0f} msgs/s for {seconds:.0f} s, {args.workers} workers, "
                f"sandbox {args.latency_ms:.0f} ms,")  # fmt: skip
            out(f"      batches of {args.batch}, latency = first sandbox poll that saw the record − send time "
                f"(poll every {args.poll * 1000:.0f} ms)")  # fmt: skip
            header = f"{'t s':>5} {'in/s':>8} {'out/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'waiting':>8} {'redis MB':>8}"
            out(header + "".join(f" {'w' + str(i) + ' RSS MB':>10}" for i in range(args.workers)))
            sender, collector = Sender(url, args.rate, args.batch), Collector(relay.sandbox_url, args.poll)
            collector.start()
            started = time.monotonic()
            sender.start()
            rss: list[list[float]] = []
            last_in, last_out, last_t = 0, 0, started
            while True:
                time.sleep(max(0.0, last_t + args.every - time.monotonic()))
                now = time.monotonic()
                sent_done = now - started >= seconds
                if sent_done:
                    sender.stopping.set()
                got_in, got_out = sender.accepted, len(collector.seen)
                lat = collector.between(last_t, now)
                row = [rss_mb(w.process.pid) for w in workers]
                rss.append(row)
                memory = int(client.info("memory")["used_memory"]) / 2**20
                out(f"{now - started:5.0f} {(got_in - last_in) / (now - last_t):8.0f} "
                    f"{(got_out - last_out) / (now - last_t):8.0f} {percentile(lat, 0.5) * 1000:7.0f} "
                    f"{percentile(lat, 0.99) * 1000:7.0f} {waiting(client, relay):8d} {memory:8.1f}"
                    + "".join(f" {r:10.1f}" for r in row))  # fmt: skip
                last_in, last_out, last_t = got_in, got_out, now
                if sent_done and (len(collector.seen) >= sender.accepted or now - started > seconds + 120):
                    break
            sender.join(timeout=30)
            collector.stopping.set()
            collector.join(timeout=30)
            total_s = max((at for at, _ in collector.seen), default=time.monotonic()) - started
            all_lat = [latency for _, latency in collector.seen]
            out(f"\nsent {sender.accepted + sender.failed}, accepted {sender.accepted} ({sender.failed} refused), "
                f"delivered {len(collector.seen)} in {total_s:.0f} s")  # fmt: skip
            out(f"throughput in {sender.accepted / seconds:,.0f} msgs/s (target {args.rate:,.0f}), "
                f"out {len(collector.seen) / total_s:,.0f} msgs/s (first send to last record seen)")  # fmt: skip
            out(f"end-to-end latency over the run: p50 {percentile(all_lat, 0.5) * 1000:.0f} ms, "
                f"p99 {percentile(all_lat, 0.99) * 1000:.0f} ms, max {max(all_lat, default=0) * 1000:.0f} ms "
                f"(upper bounds by ≤ {args.poll * 1000:.0f} ms; "
                f"sandbox answer time {args.latency_ms:.0f} ms)")  # fmt: skip
            verdict_rss(rss, out)
            memory_per_message(client, relay, workers, url, count=args.backlog, out=out)
        finally:
            relay.stop_all()
            client.close()


def verdict_rss(rss: list[list[float]], out: Any) -> None:
    usable = rss[1:]  # the first interval is warm-up (imports, connection pools, caches)
    if len(usable) < 3:
        out("worker RSS: too few samples for a verdict (run longer than 4 intervals)")
        return
    third = max(1, len(usable) // 3)
    for index in range(len(usable[0])):
        first = statistics.mean(row[index] for row in usable[:third])
        last = statistics.mean(row[index] for row in usable[-third:])
        growth = last - first
        flat = growth < 20 and growth < 0.1 * first
        out(f"worker {index} RSS: first third {first:.1f} MB, last third {last:.1f} MB, growth {growth:+.1f} MB "
            f"({growth / first * 100:+.1f} %): {'flat: PASS' if flat else 'GROWING: FAIL'}")  # fmt: skip


def memory_per_message(
    client: redis.Redis, relay: Relay, workers: list[Any], url: str, *, count: int, out: Any
) -> None:
    """Stop the workers, queue ``count`` messages through ingest, measure Redis memory per queued message."""
    for worker in workers:
        worker.stop()
    with contextlib.suppress(redis.RedisError):
        client.memory_purge()
    before = int(client.info("memory")["used_memory"])
    streams_before = sum(
        int(client.memory_usage(relay.keys.stream(p), samples=0) or 0) for p in range(relay.partitions)
    )
    queued_before = waiting(client, relay)
    sender = Sender(url, 1e9, 500)  # as fast as ingest takes them
    sender.start()
    wait_for(lambda: sender.accepted >= count, 120, f"{count} messages queued")
    sender.stopping.set()
    sender.join(timeout=30)
    queued = waiting(client, relay) - queued_before
    after = int(client.info("memory")["used_memory"])
    streams = sum(int(client.memory_usage(relay.keys.stream(p), samples=0) or 0) for p in range(relay.partitions))
    out(f"Redis memory per queued message ({queued} queued through ingest, workers stopped; ~330-byte tracks): "
        f"{(after - before) / queued:.0f} B with its dedup marker (used_memory), "
        f"{(streams - streams_before) / queued:.0f} B stream entry alone (MEMORY USAGE)")  # fmt: skip


if __name__ == "__main__":
    main()
