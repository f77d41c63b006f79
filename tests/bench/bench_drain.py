"""The worker's CPU per message on a drain at 0 ms CleverTap latency, this tree against a base commit, in one run.

Run: ``.venv/bin/python tests/bench/bench_drain.py [--base REV] [--messages 100000] [--threads 1] [--profile]``

In process, no HTTP server: a ``redis-server`` of its own (so that its ``INFO`` CPU is the drain's alone), a backlog of
Segment-shaped tracks written in one go (the envelope ingest writes, pipelined ``XADD``), then
:meth:`worker.delivery.drain.Drainer.drain` of every partition until the streams are empty, with an
``httpx.MockTransport`` that answers every upload 200 ``{"status": "success"}`` (the request body is built and sent as
in production, through the transport itself where the tree's seam has ``CleverTap.direct``, as its workers send, else
through an ``httpx.Client``; the answer costs nothing), the destination held as a worker holds it (``Destinations``, a
``Mapping`` whose ``get`` is Python's, not a dict). Figures: the drain's CPU in the process (``time.process_time``,
every thread) and in Redis (``INFO`` ``used_cpu_user`` + ``used_cpu_sys``), per message. ``--threads N`` drains N
partitions at a time from N threads (the GIL shared, as in a worker). The collector is set as ``ctrelay worker`` sets it
(``gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)``, ``gc.freeze()`` once ready; ``--default-gc``: CPython's default
thresholds, which cost the drain about 4 µs/msg more). Each side runs in a subprocess of its own (the base from a
temporary ``git worktree`` of ``--base``, default the merge-base with ``main``), alternating base / head ``--rounds``
times; the lowest figure of each side is printed (CPU time varies upward with load).
``--read-batch`` sets the entries read at a time (smaller batches show the per-batch costs); ``--latency-ms``
delays every answer (a sleep in the mock: the drain waits as for CleverTap, other drains run meanwhile).
``--profile`` prints the head side's cProfile instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import inspect
import json
import os
import pstats
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PARTITIONS = 16


def track(n: int) -> dict[str, Any]:
    """A ~300-byte track with what ingest adds (as ``bench_ingest`` sends them)."""
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": f"user-{n % 5000}",
        "messageId": uuid.uuid4().hex,
        "timestamp": "2026-12-01T10:00:00.000Z",
        "receivedAt": "2026-12-01T10:00:00.120Z",
        "properties": {"order_id": f"o-{n}", "revenue": 19.99, "currency": "EUR", "items": 2},
        "context": {"library": {"name": "analytics-python", "version": "2.3.3"}, "ip": "203.0.113.7"},
    }


def run_side(
    root: str,
    messages: int,
    threads: int,
    profile: bool,
    *,
    worker_gc: bool = True,
    latency_ms: float = 0.0,
    read_batch: int = 1000,
) -> dict[str, float]:
    """One side, in this process (``root`` first on ``sys.path``): enqueue, drain, measure."""
    sys.path.insert(0, root)
    import httpx
    import orjson
    import redis

    import worker
    from worker.cli.embedded import redis_server
    from worker.core.destinations import Destination, Destinations
    from worker.core.keys import Envelope, Keys, partition_of
    from worker.delivery.batches import Deliverer
    from worker.delivery.clevertap import CleverTap
    from worker.delivery.drain import Drainer
    from worker.delivery.policy import RetryPolicy
    from worker.store.deadletters import DeadLetterStore
    from worker.store.slots import AccountSlots
    from worker.store.streams import ensure_groups

    assert Path(worker.__file__).resolve().is_relative_to(Path(root).resolve()), worker.__file__
    answer = orjson.dumps({"status": "success", "processed": 1, "unprocessed": []})

    def handler(request: httpx.Request) -> httpx.Response:
        if latency_ms:
            time.sleep(latency_ms / 1000)  # CleverTap's latency: the drain waits outside the gate, the GIL released
        return httpx.Response(200, content=answer, headers={"content-type": "application/json"})

    def used_cpu(client: redis.Redis) -> float:
        info: dict[str, Any] = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    with redis_server(shutil.which("redis-server") or "redis-server") as handle:
        client = redis.Redis.from_url(handle.url)
        keys = Keys("bench-drain")
        ensure_groups(client, keys, PARTITIONS)
        destination = Destination(write_key="wk", account_id="BENCH", passcode="bench", endpoint="http://ct.test")
        mock = httpx.MockTransport(handler)
        if "transport" in inspect.signature(CleverTap).parameters:  # the worker's way (CleverTap.direct) where it is
            clevertap = CleverTap(httpx.Client(), 5.0, transport=mock)
        else:  # a tree before it: through the client, as its workers sent
            clevertap = CleverTap(httpx.Client(transport=mock), 5.0)
        deliverer = Deliverer(
            client,
            keys,
            Destinations([destination]),  # as a worker holds them (a Mapping, not a dict)
            clevertap=clevertap,
            slots=AccountSlots(client, keys, 15),
            deadletters=DeadLetterStore(client, keys),
            policy=RetryPolicy(),
        )
        drainer = Drainer(deliverer, lease_ttl_s=30.0, budget_s=5.0, read_batch=read_batch, consumer="bench")
        with client.pipeline(transaction=False) as pipe:
            for n in range(messages):
                message = track(n)
                pipe.xadd(keys.stream(partition_of(message["userId"], PARTITIONS)), Envelope("wk", message).encode())
                if n % 1000 == 999:
                    pipe.execute()
            pipe.execute()
        if worker_gc:  # as worker/cli/worker.py sets it in a worker process
            from worker.cli.worker import GC_YOUNG_THRESHOLD

            gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
            gc.freeze()
        todo = list(range(PARTITIONS))
        lock = threading.Lock()
        delivered = [0]

        def work() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    partition = todo.pop()
                result = drainer.drain(partition)
                with lock:
                    delivered[0] += result.tally.delivered
                    if result.more:
                        todo.insert(0, partition)

        profiler = cProfile.Profile() if profile else None
        redis_before, cpu_before, wall_before = used_cpu(client), time.process_time(), time.monotonic()
        if profiler is not None:
            profiler.enable()
        pool = [threading.Thread(target=work) for _ in range(threads - 1)]
        for thread in pool:
            thread.start()
        work()  # one of them in this thread (the one cProfile sees)
        for thread in pool:
            thread.join()
        if profiler is not None:
            profiler.disable()
        cpu, wall, redis_cpu = time.process_time() - cpu_before, time.monotonic() - wall_before, used_cpu(client)
        redis_cpu -= redis_before
        left = sum(int(client.xlen(keys.stream(p))) for p in range(PARTITIONS))
        if delivered[0] != messages or left:
            raise SystemExit(f"delivered {delivered[0]} of {messages}, {left} left in the streams")
        clevertap.close()
        client.close()
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(35)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(45)
    return {"worker_us": cpu / messages * 1e6, "redis_us": redis_cpu / messages * 1e6, "rate": messages / wall}


def side(root: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--side", str(root), "--messages", str(args.messages)]
    command += [
        "--threads",
        str(args.threads),
        "--latency-ms",
        str(args.latency_ms),
        "--read-batch",
        str(args.read_batch),
    ]
    command += ["--default-gc"] if args.default_gc else []
    env = dict(os.environ, CTRELAY_LOG_LEVEL="warning")
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{root}: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", help="the commit to compare with (default: merge-base of HEAD and main)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1, help="drain threads (partitions drained at a time)")
    parser.add_argument("--rounds", type=int, default=3, help="base / head runs, alternating")
    parser.add_argument("--profile", action="store_true", help="profile the head side (cProfile) instead")
    parser.add_argument(
        "--read-batch", type=int, default=1000, help="entries per XREADGROUP (smaller: per-batch costs)"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="CleverTap's answer delay (a sleep per upload)")
    parser.add_argument("--default-gc", action="store_true", help="CPython's collector thresholds, not the worker's")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side or args.profile:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
        figures = run_side(
            args.side or str(ROOT),
            args.messages,
            args.threads,
            args.profile,
            worker_gc=not args.default_gc,
            latency_ms=args.latency_ms,
            read_batch=args.read_batch,
        )
        print(json.dumps(figures))
        return
    sys.path[:0] = [str(HERE)]
    from machine import checkout, code_version, load_average

    base_rev = args.base or subprocess.run(
        ["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()  # fmt: skip
    label = subprocess.run(["git", "log", "-1", "--format=%h", base_rev], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.strip()  # fmt: skip
    load_before = load_average()
    runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    with checkout(base_rev) as base_root:
        for _ in range(args.rounds):
            runs["base"].append(side(base_root, args))
            runs["head"].append(side(ROOT, args))
    collector = "default" if args.default_gc else "worker"
    print(f"drain at {args.latency_ms:g} ms, in process: base {label} vs head {code_version()}; "
          f"{args.messages:,} tracks in {PARTITIONS} partitions, batches of {args.read_batch}, "
          f"{args.threads} drain thread(s), {collector} gc, "
          f"best of {args.rounds}; load average {load_before} before, {load_average()} after")  # fmt: skip
    print(f"    {'':28} {'base':>9} {'head':>9} {'head/base':>9}")
    for name, label_, best in (("worker_us", "worker CPU us/msg", min), ("redis_us", "redis-server CPU us/msg", min),
                               ("rate", "msgs/s (wall, load-dependent)", max)):  # fmt: skip
        b, h = best(r[name] for r in runs["base"]), best(r[name] for r in runs["head"])
        print(f"    {label_:28} {b:9.2f} {h:9.2f} {h / b:9.2f}")


if __name__ == "__main__":
    main()
