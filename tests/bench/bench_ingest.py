"""Ingest throughput, side by side in one run: raw pipelined XADD (the ceiling), /v1/batch x100, /v1/track.

Run: ``.venv/bin/python tests/bench/bench_ingest.py [--messages 40000] [--singles 4000] [--workers 1]``

It starts a real ``ctrelay ingest`` (uvicorn) on a free loopback port against the Redis at
``REDIS_URL`` (default 127.0.0.1:6379) under a throw-away key prefix, sends from separate load
processes (a lean asyncio HTTP/1.1 client, several keep-alive connections each, bodies serialized
in advance), prints messages/s, the ratio to the ceiling and ingest's CPU per message, and deletes
its keys afterwards. Rounds are interleaved and the best of each is shown (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from worker.core.keys import Keys  # noqa: E402
from worker.store.producer import Producer  # noqa: E402

WRITE_KEY = "wk_bench"
AUTH = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


def message(i: int) -> dict[str, Any]:
    """A ~300-byte track message, as analytics-python sends it."""
    return {
        "type": "track",
        "userId": f"user-{i % 997}",
        "event": "Order Completed",
        "properties": {"order_id": f"o-{i}", "revenue": 42.5, "currency": "EUR", "coupon": None},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "203.0.113.9"},
        "timestamp": "2026-11-28T12:00:00.000+00:00",
        "messageId": str(uuid.uuid4()),
    }


def fresh(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same messages with new messageIds (so that a second round is not dropped as duplicates)."""
    return [dict(m, messageId=str(uuid.uuid4())) for m in messages]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ceiling(url: str, keys: Keys, messages: list[dict[str, Any]], chunk: int) -> float:
    """Pipelined raw XADD of the same envelopes into the same partition streams from Python: messages/s."""
    client = redis.Redis.from_url(url)
    producer = Producer(keys, 16, 60)
    entries = [producer.entry(WRITE_KEY, m) for m in messages]
    started = time.perf_counter()
    for start in range(0, len(entries), chunk):
        pipe = client.pipeline(transaction=False)
        producer.add(pipe, entries[start : start + chunk])
        pipe.execute()
    elapsed = time.perf_counter() - started
    client.close()
    return len(messages) / elapsed


async def _send(
    port: int, path: str, bodies: list[bytes], connections: int, content_type: str = "application/json"
) -> list[int]:
    """A lean HTTP/1.1 keep-alive client (asyncio streams), so that the load side is not the bottleneck."""
    statuses: list[int] = []
    pending = list(reversed(bodies))
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH}\r\nContent-Type: {content_type}\r\n"

    async def lane() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while pending:
                item = pending.pop()
                writer.write(f"{head}Content-Length: {len(item)}\r\n\r\n".encode() + item)
                header = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in header.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                statuses.append(int(header[9:12]))
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(connections))), timeout=600)
    return statuses


def load(port: int, path: str, bodies: list[bytes], *, connections: int, go: Any, results: Any) -> None:
    go.wait(timeout=60)
    results.put(asyncio.run(_send(port, path, bodies, connections)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live descendants (uvicorn workers), Linux /proc."""
    total = 0.0
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    return total


def drive(
    port: int, path: str, bodies: list[bytes], *, processes: int, connections: int, pid: int
) -> tuple[float, float]:
    """Send every body from ``processes`` load processes: requests/s, and ingest CPU seconds per request."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    go = context.Event()
    shares = [bodies[i::processes] for i in range(processes)]
    workers = [
        context.Process(
            target=load, args=(port, path, share), kwargs={"connections": connections, "go": go, "results": results}
        )
        for share in shares
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.5)  # let the load processes import and wait at the gate
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    go.set()
    statuses = [status for _ in workers for status in results.get(timeout=600)]
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu
    for worker in workers:
        worker.join(timeout=10)
    bad = [s for s in statuses if s != 200]
    if bad:
        raise SystemExit(f"{len(bad)} requests to {path} answered non-200, e.g. {bad[0]}")
    return len(bodies) / elapsed, cpu / len(bodies)


def start_ingest(url: str, prefix: str, destinations: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CTRELAY_DESTINATIONS=str(destinations), CTRELAY_REDIS_PREFIX=prefix, REDIS_URL=url)
    env["CTRELAY_LOG_LEVEL"] = "warning"
    ctrelay = str(Path(sys.executable).parent / "ctrelay")
    server = subprocess.Popen([ctrelay, "ingest", "--port", str(port), "--workers", str(workers)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("ingest did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=40_000, help="messages for the ceiling and the batch run")
    parser.add_argument("--singles", type=int, default=4_000, help="single /v1/track calls")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--processes", type=int, default=2, help="load processes")
    parser.add_argument("--connections", type=int, default=8, help="connections per load process")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is shown")
    args = parser.parse_args()

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    port = free_port()
    raw_100 = raw_1000 = batch_rate = single_rate = batch_cpu = single_cpu = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        destinations = Path(scratch) / "destinations.toml"
        destinations.write_text(f'[[destinations]]\nwrite_key = "{WRITE_KEY}"\naccount_id = "BENCH"\npasscode = "x"\n')
        server = start_ingest(url, prefix, destinations, port, args.workers)
        try:
            messages = [message(i) for i in range(args.messages)]
            singles = [message(i) for i in range(args.singles)]
            warm = [orjson.dumps({"batch": fresh(messages[:100])}) for _ in range(20)]
            drive(port, "/v1/batch", warm, processes=args.processes, connections=args.connections, pid=server.pid)
            for _ in range(args.rounds):
                messages, singles = fresh(messages), fresh(singles)
                raw_100 = max(raw_100, ceiling(url, keys, messages, 100))
                raw_1000 = max(raw_1000, ceiling(url, keys, messages, 1000))
                batches = [
                    orjson.dumps({"batch": messages[s : s + 100], "sentAt": "2026-11-28T12:00:01Z"})
                    for s in range(0, len(messages), 100)
                ]
                rate, cpu = drive(
                    port, "/v1/batch", batches, processes=args.processes, connections=args.connections, pid=server.pid
                )
                if rate * 100 > batch_rate:
                    batch_rate, batch_cpu = rate * 100, cpu / 100
                bodies = [orjson.dumps(m) for m in singles]
                rate, cpu = drive(
                    port, "/v1/track", bodies, processes=args.processes, connections=args.connections, pid=server.pid
                )
                if rate > single_rate:
                    single_rate, single_cpu = rate, cpu
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            client = redis.Redis.from_url(url)
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(key)
            client.close()

    top = max(raw_100, raw_1000)
    print(
        f"ingest benchmark: {args.messages} messages (~300 B track) x {args.rounds} rounds, uvicorn workers="
        f"{args.workers}, load {args.processes} processes x {args.connections} connections, {os.cpu_count()} CPUs"
    )
    print(f"{'raw XADD, pipelines of 100':30} {raw_100:>9,.0f} msg/s  {raw_100 / top:5.2f} of ceiling")
    print(f"{'raw XADD, pipelines of 1000':30} {raw_1000:>9,.0f} msg/s  {raw_1000 / top:5.2f} of ceiling")
    print(
        f"{'/v1/batch x100':30} {batch_rate:>9,.0f} msg/s  {batch_rate / top:5.2f} of ceiling (goal >= 0.25);"
        f"  ingest CPU {batch_cpu * 1e6:.1f} us/message"
    )
    print(
        f"{'/v1/track (single calls)':30} {single_rate:>9,.0f} msg/s  {single_rate / top:5.2f} of ceiling;"
        f"  ingest CPU {single_cpu * 1e6:.0f} us/request"
    )


if __name__ == "__main__":
    main()
