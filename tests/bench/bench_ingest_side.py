"""Ingest's CPU per single call and per batched message, this tree against a base commit, side by side in one run.

Run: ``.venv/bin/python tests/bench/bench_ingest_side.py [--base c55367e] [--rounds 4] [--singles 6000]
[--batches 400]``

Each side is one ``ctrelay ingest`` process (one uvicorn worker) of its own code: the base side runs ``--base``
checked out into a temporary ``git worktree`` (its processes start in that checkout with it first on
``PYTHONPATH``), the head side runs this tree; both write into one ``redis-server`` of the benchmark's own (each
under its own key prefix; no workers drain it). The load comes from separate processes (a lean asyncio HTTP/1.1
client, keep-alive connections, Basic auth, every body built before the clock starts):

- single calls: ``/v1/track``, one analytics.js message per request, ``Content-Type: text/plain``;
- batches: ``/v1/batch`` of 100 ~300-byte tracks (as analytics-python sends them).

The figure is the ingest process's CPU time (user + system, ``/proc/<pid>/stat``) per request or per message,
which holds on a loaded machine far better than wall-clock. Rounds alternate base and head; the lowest of each
side is shown.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

from bench_e2e import start_load  # noqa: E402
from bench_ingest import WRITE_KEY, cpu_seconds  # noqa: E402
from delivery_e2e import Proc, Relay  # noqa: E402
from machine import checkout, code_version, load_average  # noqa: E402

from worker.cli.embedded import redis_server  # noqa: E402


class Side:
    """One ingest process running the code of ``root``."""

    def __init__(self, name: str, root: Path, scratch: Path, redis_url: str) -> None:
        self.name = name
        tmp = scratch / name
        tmp.mkdir()
        env = {"CTRELAY_LOG_LEVEL": "warning", "PYTHONPATH": str(root), "CTRELAY_PARTITIONS": "16"}
        probe = [sys.executable, "-c", "import ingest; print(ingest.__file__)"]
        found = subprocess.run(probe, cwd=root, env=dict(os.environ, **env), capture_output=True, text=True, check=True)
        if not Path(found.stdout.strip()).is_relative_to(root):
            raise SystemExit(f"{name}: ingest would run {found.stdout.strip()}, not the code of {root}")
        self.relay = Relay(tmp, redis_url, partitions=16, env_extra=env, root=root)
        self.relay.destinations([{"write_key": WRITE_KEY, "account_id": "BENCH", "passcode": "bench"}])
        self.ingest: Proc
        self.ingest, url = self.relay.start_ingest()
        self.port = int(url.rsplit(":", 1)[1])
        self.sequence = 0

    def send(self, kind: str, count: int, processes: int, connections: int) -> float:
        """Send ``count`` messages; the ingest process's CPU seconds per message (a single call: per request)."""
        first, self.sequence = self.sequence, self.sequence + count
        run = start_load(self.port, kind, first, count, processes=processes, connections=connections)
        requests, go, results = run.requests, run.go, run.results
        pid = self.ingest.process.pid
        cpu = cpu_seconds(pid)
        go.set()
        statuses: list[int] = []
        deadline = time.monotonic() + 600
        while len(statuses) < requests and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                statuses += results.get(timeout=1)
        used = cpu_seconds(pid) - cpu
        run.join()
        refused = [s for s in statuses if s != 200]
        if refused or len(statuses) != requests:
            raise SystemExit(f"{self.name}: {len(refused)} of {requests} requests not answered 200 ({refused[:3]})")
        return used / count


@contextlib.contextmanager
def sides(base: str, scratch: Path, redis_url: str) -> Iterator[list[Side]]:
    with checkout(base) as tree:
        made: list[Side] = []
        try:
            made.append(Side("base", tree, scratch, redis_url))
            made.append(Side("head", ROOT, scratch, redis_url))
            yield made
        finally:
            for side in made:
                side.relay.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="c55367e", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--singles", type=int, default=6000, help="single calls per round and side")
    parser.add_argument("--batches", type=int, default=400, help="requests of 100 messages per round and side")
    parser.add_argument("--processes", type=int, default=2, help="load processes")
    parser.add_argument("--connections", type=int, default=8, help="connections per load process")
    args = parser.parse_args()
    before = load_average()
    best: dict[tuple[str, str], float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-ingest-side-") as scratch,
        redis_server(shutil.which("redis-server") or "redis-server") as handle,
        sides(args.base, Path(scratch), handle.url) as both,
    ):
        for side in both:  # warm-up: imports, connections, caches
            side.send("batch", 2000, 1, 2)
            side.send("single", 1000, 1, 2)
        for _ in range(args.rounds):
            for kind, count in (("single", args.singles), ("batch", args.batches * 100)):
                for side in both:
                    figure = side.send(kind, count, args.processes, args.connections)
                    key = (side.name, kind)
                    best[key] = min(best.get(key, figure), figure)
    print(f"ingest CPU, base {args.base} vs head {code_version()}: {args.rounds} rounds, lowest of each side")
    print(f"  load {args.processes} processes x {args.connections} connections; load average {before} before, "
          f"{load_average()} after")  # fmt: skip
    print(f"  {'':38}{'base':>10}{'head':>10}{'head/base':>11}")
    for kind, label in (("single", "/v1/track text/plain, us/request"), ("batch", "/v1/batch x100, us/message")):
        b, h = best[("base", kind)] * 1e6, best[("head", kind)] * 1e6
        print(f"  {label:38}{b:10.1f}{h:10.1f}{h / b:11.2f}")


if __name__ == "__main__":
    main()
