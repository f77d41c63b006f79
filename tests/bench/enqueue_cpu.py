"""Redis CPU per message of the enqueue, old script vs new, and the old layout's script (for bench_dedup.py).

Requests of 100 messages over 16 partitions, markers in steady state (the previous bucket's sets at the sizing's
target, the current ones half way); ``used_cpu_user + used_cpu_sys`` deltas and ``INFO commandstats`` (commands
per message). Run through ``tests/bench/bench_dedup.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio
from bench_redis_memory import message  # the typical track (~420 bytes as accepted)

from worker.core.keys import Keys
from worker.store import producer as producer_module
from worker.store.dedup import TARGET_FILL
from worker.store.producer import Producer

WINDOW = 86_400
PARTITIONS = 16

# The enqueue script of the old layout (a dedup key per message), as it was (commit 9eb7d65).
OLD_ENQUEUE_LUA = """
local window = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  if redis.call('SET', KEYS[2 * i - 1], '1', 'NX', 'EX', window) then
    local id = redis.pcall('XADD', KEYS[2 * i], '*', 'w', ARGV[2 * i], 'm', ARGV[2 * i + 1])
    if type(id) == 'table' and id.err then
      redis.call('DEL', KEYS[2 * i - 1])
      return id
    end
    out[i] = id
  else
    out[i] = false
  end
end
return out
"""


def cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drop_streams(client: redis.Redis, keys: Keys) -> None:
    client.delete(*[keys.stream(p) for p in range(PARTITIONS)])


COMMANDS: dict[str, str] = {}
"""Per run: the commands Redis ran per message (INFO commandstats; a script's commands counted apiece)."""


def steady_buckets(client: redis.Redis, keys: Keys, day: int, sets: int = 512) -> None:
    """Markers in steady state: the previous bucket's sets filled to the target (random members), this one's half
    way (the sets exist: one EXPIRE per set, not per message), both sized ``sets``."""
    pipe = client.pipeline(transaction=False)
    for p in range(PARTITIONS):
        client.hset(keys.seen_sizes(p), mapping={day - 1: sets, day: sets})
        for shard in range(sets):
            pipe.sadd(keys.seen(p, day - 1, shard), 0, *[random.getrandbits(63) + 1 for _ in range(TARGET_FILL)])
            pipe.sadd(keys.seen(p, day, shard), 0, *[random.getrandbits(63) + 1 for _ in range(TARGET_FILL // 2)])
            pipe.expire(keys.seen(p, day, shard), 2 * WINDOW)
        pipe.execute()


def cpu_rounds(url: str, client: redis.Redis, messages: int, rounds: int) -> dict[str, list[float]]:
    keys = Keys(f"bench-dedup-{uuid.uuid4().hex[:6]}")
    producer = Producer(keys, PARTITIONS, WINDOW)
    day = 30_000
    steady_buckets(client, keys, day)
    producer.clock = lambda: day * WINDOW + 10
    batches = [
        [producer.entry("wk_live_1", message(i)) for i in range(start, start + 100)]
        for start in range(0, messages, 100)
    ]
    old = client.register_script(OLD_ENQUEUE_LUA)
    results: dict[str, list[float]] = {"xadd": [], "old": [], "new": [], "fallback": []}

    def run_xadd() -> None:
        for batch in batches:
            pipe = client.pipeline(transaction=False)
            producer.add(pipe, batch)
            pipe.execute()

    def run_old() -> None:
        for batch in batches:
            names: list[str] = []
            args: list[Any] = [WINDOW]
            for entry in batch:
                names += (keys.dedup("wk_live_1", str(uuid.uuid4())), entry.stream)
                args += (entry.write_key, entry.message)
            old(keys=names, args=args)

    def run_new() -> None:
        async def go() -> None:
            async_client = redis.asyncio.Redis.from_url(url)
            for batch in batches:
                fresh = [entry._replace(member=str(random.getrandbits(63) + 1).encode()) for entry in batch]
                await producer.enqueue(async_client, fresh)
            await async_client.aclose()

        asyncio.run(go())

    def run_fallback() -> None:
        """The new script with one more key lookup per message: what consulting the old markers would cost."""
        source = producer_module._ENQUEUE_LUA
        extra = "redis.call('EXISTS', set .. ':old')\n    local added = redis.call('SADD'"
        producer_module._ENQUEUE_LUA = source.replace("local added = redis.call('SADD'", extra)
        try:
            run_new()
        finally:
            producer_module._ENQUEUE_LUA = source

    for _ in range(rounds):
        for name, run in (("xadd", run_xadd), ("old", run_old), ("new", run_new), ("fallback", run_fallback)):
            client.config_resetstat()
            before = cpu(client)
            run()
            results[name].append((cpu(client) - before) / messages * 1e6)
            stats = client.info("commandstats")
            COMMANDS[name] = ", ".join(
                f"{key.removeprefix('cmdstat_')} {value['calls'] / messages:.2f}"
                for key, value in stats.items()
                if value["calls"] / messages >= 0.005 and "info" not in key and "config" not in key
            )
            drop_streams(client, keys)
    for name in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
        client.delete(name)
    return results


# -- this tree against a base commit: ``python tests/bench/enqueue_cpu.py [--base REV]`` ----------------------------

STATES = ("fresh", "steady")
"""fresh: a partition's first bucket (64 sets, no previous bucket: no SISMEMBER), as a relay started today and the
end-to-end benchmark see it; steady: the previous bucket's sets at the sizing's target, the current ones half way."""


PARTS = ("enqueue", "drain", "held")
"""enqueue: Producer.enqueue; drain: XREADGROUP of 1000 and one MULTI commit (ack_and_delete) of them all; held:
XREADGROUP of 1000 and commits of 100 by the held commit's script, as a worker's drain commits (:func:`held_drain`)."""


def side_rounds(url: str, messages: int, state: str, batch: int = 100) -> dict[str, Any]:
    """One measurement, run in a process whose ``worker`` package is the side's (base or head): Redis CPU per
    message of the enqueue (the real :class:`Producer`, requests of 100) and of the store's part of a drain
    (``XREADGROUP`` of 1000, then the commit's :func:`~worker.store.streams.ack_and_delete` in a MULTI)."""
    from worker.store.streams import ack_and_delete, ensure_groups

    client = redis.Redis.from_url(url)
    keys = Keys(f"bench-enqueue-{uuid.uuid4().hex[:6]}")
    producer = Producer(keys, PARTITIONS, WINDOW)
    day = 30_000
    if state == "steady":
        steady_buckets(client, keys, day)
    ensure_groups(client, keys, PARTITIONS)
    producer.clock = lambda: day * WINDOW + 10
    batches = [
        [producer.entry("wk_live_1", message(i)) for i in range(start, start + batch)]
        for start in range(0, messages, batch)
    ]

    def commandstats() -> dict[str, float]:
        stats = client.info("commandstats")
        return {
            k.removeprefix("cmdstat_"): (v["calls"] / messages, v["usec"] / messages)
            for k, v in stats.items()
            if v["usec"] / messages >= 0.005 and "info" not in k and "config" not in k
        }

    async def enqueue() -> None:
        async_client = redis.asyncio.Redis.from_url(url)
        for request in batches:
            await producer.enqueue(async_client, request)
        await async_client.aclose()

    client.config_resetstat()
    before = cpu(client)
    asyncio.run(enqueue())
    enqueued = (cpu(client) - before) / messages * 1e6
    enqueue_commands = commandstats()
    client.config_resetstat()
    before = cpu(client)
    for stream, ids in reads(client, keys):
        pipe = client.pipeline(transaction=True)
        ack_and_delete(pipe, stream, ids)
        pipe.execute()
    drained = (cpu(client) - before) / messages * 1e6
    drain_commands = commandstats()
    held, held_commands = held_drain(client, keys, producer, batches)
    for name in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
        client.delete(name)
    client.close()
    return {
        "enqueue": enqueued,
        "drain": drained,
        "held": held,
        "enqueue_commands": enqueue_commands,
        "drain_commands": drain_commands,
        "held_commands": held_commands,
    }


def reads(client: redis.Redis, keys: Keys) -> Iterator[tuple[str, list[Any]]]:
    """Every partition's new entries, read 1000 at a time (``XREADGROUP``): each read's stream and entry ids."""
    from worker.core.keys import GROUP

    for partition in range(PARTITIONS):
        stream = keys.stream(partition)
        while True:
            answer = client.xreadgroup(GROUP, "bench", {stream: ">"}, count=1000)
            ids = [entry_id for _, entries in answer for entry_id, _ in entries] if answer else []
            if not ids:
                break
            yield stream, ids


def held_drain(
    client: redis.Redis, keys: Keys, producer: Producer, batches: list[list[Any]], commit: int = 100
) -> tuple[float, dict[str, tuple[float, float]]]:
    """The store's part of a drain as a worker's is (Redis CPU per message, commands): ``XREADGROUP`` of 1000, then
    commits of ``commit`` entries each by the held commit's script under the partition's lease (the later ones of
    the read still pending above all but the last commit). The entries are enqueued again first (not counted)."""
    from worker.store import streams

    held: Any = getattr(streams, "COMMIT_HELD", None)  # (a PipelineScript; a base's scripts module may not name it)
    if held is None:  # (a base from before the held commit)
        return 0.0, {}

    kwargs = client.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}"

    async def again() -> None:
        async_client = redis.asyncio.Redis.from_url(url)
        for request in batches:
            fresh = [entry._replace(member=str(random.getrandbits(63) + 1).encode()) for entry in request]
            await producer.enqueue(async_client, fresh)
        await async_client.aclose()

    asyncio.run(again())
    messages = sum(len(request) for request in batches)
    client.script_load(held.source)
    lease = ("bench-lease", "token", 30_000)
    client.set(lease[0], lease[1], px=lease[2])
    client.config_resetstat()
    before = cpu(client)
    for stream, ids in reads(client, keys):
        for at in range(0, len(ids), commit):
            pipe = client.pipeline(transaction=False)
            streams.queue_commit_held(pipe, stream, lease, ids[at : at + commit])
            pipe.execute()
    used = (cpu(client) - before) / messages * 1e6
    stats = client.info("commandstats")
    commands = {
        k.removeprefix("cmdstat_"): (v["calls"] / messages, v["usec"] / messages)
        for k, v in stats.items()
        if v["usec"] / messages >= 0.005 and "info" not in k and "config" not in k
    }
    client.delete(lease[0])
    return used, commands


def side_instructions(url: str, messages: int, state: str, batch: int = 100) -> dict[str, Any]:
    """The enqueue of :func:`side_rounds` against a ``redis-server`` run by callgrind (:func:`callgrind_redis`),
    counted from its first request to its last (the scripts loaded and the sizes read before, by one message
    outside the count): Redis's instructions, a firmer figure than CPU seconds on a loaded machine."""
    import subprocess

    client = redis.Redis.from_url(url)
    pid = str(client.info("server")["process_id"])
    keys = Keys(f"bench-enqueue-{uuid.uuid4().hex[:6]}")
    producer = Producer(keys, PARTITIONS, WINDOW)
    day = 30_000
    if state == "steady":
        steady_buckets(client, keys, day)
    producer.clock = lambda: day * WINDOW + 10
    batches = [
        [producer.entry("wk_live_1", message(i)) for i in range(start, start + batch)]
        for start in range(0, messages, batch)
    ]

    def control(*flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, pid], check=True, capture_output=True)

    async def enqueue() -> None:
        async_client = redis.asyncio.Redis.from_url(url)
        await producer.enqueue(async_client, [producer.entry("wk_live_1", message(messages))])  # (not counted)
        control("-i", "on")
        for request in batches:
            await producer.enqueue(async_client, request)
        control("-i", "off")
        control("-d")
        await async_client.aclose()

    asyncio.run(enqueue())
    for name in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
        client.delete(name)
    client.close()
    return {"pid": pid}


def callgrind_totals(directory: str, pid: str) -> int:
    """The instructions of a callgrind dump (``callgrind_control -d``: the file ``out.<pid>.1``)."""
    from pathlib import Path

    for line in (Path(directory) / f"out.{pid}.1").read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in the callgrind dump of {pid}")


@contextlib.contextmanager
def callgrind_redis() -> Iterator[tuple[str, str]]:
    """A ``redis-server`` (the embedded one's settings) under ``valgrind --tool=callgrind``, its instrumentation
    off until :func:`side_instructions` turns it on: (its URL, the directory of its dumps)."""
    import shutil
    import subprocess
    import tempfile

    from worker.cli.embedded import free_port, stop_process, wait_until_answers

    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind (callgrind) on the PATH")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ctrelay-callgrind-") as workdir:
        args = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/out.%p"]
        args += ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", workdir, "--daemonize", "no", "--loglevel", "warning"]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            wait_until_answers(url, deadline_s=60.0)
            yield url, workdir
        finally:
            stop_process(process, timeout_s=30.0)


def compare() -> None:
    import argparse
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    root = here.parents[1]
    sys.path[:0] = [str(root), str(root / "tests")]
    from machine import checkout, code_version, load_average

    from worker.cli.embedded import redis_server

    parser = argparse.ArgumentParser(description="Redis CPU per message of the enqueue (and the store's drain)")
    parser.add_argument("--base", default="c55367e")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100, help="messages per request (1: single calls)")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count Redis's instructions of the enqueue under callgrind instead (one round: counts do not vary much)",
    )
    args = parser.parse_args()
    if args.instructions:
        instructions(args, checkout, code_version)
        return
    probe = (
        "import sys, json, enqueue_cpu; "
        "print(json.dumps(enqueue_cpu.side_rounds(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))"
    )
    best: dict[tuple[str, str], dict[str, Any]] = {}
    loads = load_average()
    with (
        checkout(args.base) as base_root,
        redis_server("redis-server") as base_redis,
        redis_server("redis-server") as head_redis,
    ):
        sides = (("base", base_root, base_redis.url), ("head", root, head_redis.url))
        for round_ in range(args.rounds):
            for state in STATES:
                for name, side_root, url in sides[:: 1 if round_ % 2 == 0 else -1]:  # each side first in turn
                    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(side_root), str(here)]))
                    out = subprocess.run(
                        [sys.executable, "-c", probe, url, str(args.messages), state, str(args.batch)],
                        cwd=side_root, env=env, capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    got = json.loads(out.stdout.strip().splitlines()[-1])
                    for part in PARTS:
                        known = best.get((name, f"{state} {part}"))
                        if known is None or got[part] < known[part]:
                            best[(name, f"{state} {part}")] = {part: got[part], "commands": got[f"{part}_commands"]}
    print(f"Redis CPU per message, base {args.base} vs head {code_version()}: {args.messages:,} messages per run, "
          f"requests of {args.batch} over {PARTITIONS} partitions, lowest of {args.rounds} rounds; "
          f"load {loads} → {load_average()}")  # fmt: skip
    for state in STATES:
        for part in PARTS:
            b, h = best[("base", f"{state} {part}")], best[("head", f"{state} {part}")]
            if not b[part] or not h[part]:
                continue
            print(f"  {state:6} {part:7} base {b[part]:5.2f}  head {h[part]:5.2f} us/msg  ({h[part] / b[part]:.2f}x)")
            for name in ("base", "head"):
                commands = sorted(best[(name, f"{state} {part}")]["commands"].items(), key=lambda kv: -kv[1][1])
                calls = ", ".join(f"{k} {n:.3f} ({us:.2f} us)" for k, (n, us) in commands)
                print(f"           {name} calls/msg (usec/msg): {calls}")


def instructions(args: Any, checkout: Any, code_version: Any) -> None:
    """``--instructions``: per side and state, a ``redis-server`` under callgrind counts the enqueue (base, head)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    root = here.parents[1]
    probe = (
        "import sys, json, enqueue_cpu; "
        "print(json.dumps(enqueue_cpu.side_instructions(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))"
    )
    counts: dict[tuple[str, str], float] = {}
    with checkout(args.base) as base_root:
        for state in STATES:
            for name, side_root in (("base", base_root), ("head", root)):
                with callgrind_redis() as (url, workdir):
                    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(side_root), str(here)]))
                    out = subprocess.run(
                        [sys.executable, "-c", probe, url, str(args.messages), state, str(args.batch)],
                        cwd=side_root, env=env, capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    pid = json.loads(out.stdout.strip().splitlines()[-1])["pid"]
                    counts[(name, state)] = callgrind_totals(workdir, pid) / args.messages
    print(f"Redis instructions per message of the enqueue (callgrind), base {args.base} vs head {code_version()}: "
          f"{args.messages:,} messages, requests of {args.batch} over {PARTITIONS} partitions")  # fmt: skip
    for state in STATES:
        b, h = counts[("base", state)], counts[("head", state)]
        print(f"  {state:6} enqueue base {b:9,.0f}  head {h:9,.0f} instructions/msg  ({h / b:.3f}x)")


if __name__ == "__main__":
    compare()
