"""Redis's CPU per message end to end (ingest's enqueue and the workers' drain), where it goes, base vs head.

Run: ``.venv/bin/python tests/bench/bench_redis_cpu.py [--base REV] [--messages 60000] [--rounds 2]``

Each side is a relay of its own (as ``bench_e2e.py``): a ``redis-server`` of its own, ``ctrelay sandbox``,
``ctrelay ingest`` and ``ctrelay worker`` ×2 with the production settings, the base side running the code of
``--base`` checked out into a temporary ``git worktree``. Per round and side, two scenarios of ``/v1/batch``
requests of 100 tracks:

- **enqueue**: the workers stopped, ``--messages`` sent: Redis's CPU is ingest's (the enqueue script, the backlog
  reads) and nothing else but an idle broker;
- **end to end**: the workers started, the enqueue scenario's messages delivered first (outside the counters: else
  the window drains those left after the workers' start as well as its own, up to ~2x the bodies Redis sends,
  which is what ``--keep-backlog`` measures), the sandbox at ``--latency-ms`` (200), ``--messages`` sent and
  delivered: the **drain** is this scenario less the enqueue's figure.

Per scenario: redis-server CPU (``INFO cpu``: user + system) per message, and ``INFO commandstats`` per message:
calls, µs per call, µs per message (a script's own commands are counted again apiece under their names: the
``evalsha`` row includes them; the µs are wall-clock time in the command, so a loaded machine inflates them: read
their shares), the system time, and ``INFO stats``' reads, writes, connections and bytes per message. The drain's
commands: the end-to-end ones less the enqueue's. Several rounds, the lowest CPU per side; a
line per round and side says what each run's window held (the messages undelivered at its start, those delivered
in it: as many as were sent, else the drain's figure is not per message).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

from bench_e2e import Side  # noqa: E402
from bench_ingest import WRITE_KEY  # noqa: E402
from delivery_e2e import Relay  # noqa: E402
from machine import checkout, code_version  # noqa: E402
from soak import PRODUCTION  # noqa: E402

from worker.cli.embedded import redis_server  # noqa: E402


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@contextlib.contextmanager
def relay_side(name: str, root: Path, scratch: Path) -> Iterator[tuple[Side, redis.Redis]]:
    """A relay running the code of ``root`` (as ``bench_e2e.side``), with a client of its Redis."""
    tmp = scratch / name
    tmp.mkdir()
    env = dict(PRODUCTION, CTRELAY_LOG_LEVEL="warning", PYTHONPATH=str(root))
    probe = [sys.executable, "-c", "import worker; print(worker.__file__)"]
    found = subprocess.run(probe, cwd=root, env=dict(os.environ, **env), capture_output=True, text=True, check=True)
    if not Path(found.stdout.strip()).is_relative_to(root):
        raise SystemExit(f"{name}: the processes would not run the code of {root}")
    with redis_server(shutil.which("redis-server") or "redis-server") as handle:
        client = redis.Redis.from_url(handle.url)
        relay = Relay(tmp, handle.url, partitions=16, env_extra=env, root=root)
        try:
            relay.start_sandbox()
            relay.destinations([{"write_key": WRITE_KEY, "account_id": "BENCH", "passcode": "bench"}])
            ingest, url = relay.start_ingest()
            one = Side(name, relay, int(client.info("server")["process_id"]), int(url.rsplit(":", 1)[1]), ingest)
            one.workers = [relay.start_worker() for _ in range(2)]
            one.latency(0)
            one.send("batch", 2000, 1, 2, poll=True)  # warm-up
            yield one, client
        finally:
            relay.stop_all()
            client.close()


def stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in client.info("commandstats").items()}


def scenario(
    one: Side, client: redis.Redis, messages: int, *, workers: bool, latency_ms: float, backlog_first: bool = True
) -> dict[str, Any]:
    if workers:
        while len(one.workers) < 2:
            one.workers.append(one.relay.start_worker())
        time.sleep(4)  # connected, groups read
        if backlog_first:
            drained(one)
    else:
        for worker in one.workers:
            worker.stop()
        one.workers = []
    one.latency(latency_ms)
    backlog = one.sequence - one.records()
    client.config_resetstat()
    before, user = redis_cpu(client), float(client.info("cpu")["used_cpu_user"])
    records = one.records()
    one.send("batch", messages, 2, 8, poll=workers)
    used = redis_cpu(client) - before
    user = float(client.info("cpu")["used_cpu_user"]) - user
    delivered = one.records() - records
    traffic = {key: int(value) for key, value in client.info("stats").items() if key in TRAFFIC}
    return {
        "cpu": used / messages * 1e6,
        "sys": (used - user) / messages * 1e6,
        "traffic": traffic,
        "commands": stats(client),
        "messages": messages,
        "backlog": backlog,
        "delivered": delivered,
    }


def drained(one: Side, timeout_s: float = 300) -> None:
    """Wait until the sandbox holds every message sent so far: what the enqueue scenario left in the streams (its
    workers stopped) must be delivered before the end-to-end scenario's counters start, or its window would count
    the drain of up to twice its own messages (the backlog's and its own: ~1.9x the bytes, half the runs)."""
    deadline = time.monotonic() + timeout_s
    while one.records() < one.sequence:
        if time.monotonic() > deadline:
            raise SystemExit(f"{one.name}: {one.sequence - one.records()} messages still undelivered")
        time.sleep(0.1)


TRAFFIC = (
    "total_reads_processed",
    "total_writes_processed",
    "total_connections_received",
    "total_net_input_bytes",
    "total_net_output_bytes",
)
"""``INFO stats`` counters (reset with the command stats): a read or a write is a system call on a connection, so the
reads are about the round trips, and the connections the churn."""


def show(label: str, figures: dict[str, Any]) -> None:
    n = figures["messages"]
    traffic = ", ".join(f"{key.removeprefix('total_')} {value / n:.3f}" for key, value in figures["traffic"].items())
    print(f"    {label}: redis-server {figures['cpu']:.2f} us/msg ({figures['sys']:.2f} of it system time); per msg: "
          f"{traffic}; undelivered at the start {figures['backlog']:,}, delivered in the window "
          f"{figures['delivered']:,}; commandstats (calls/msg, us/call, us/msg):")  # fmt: skip
    rows = sorted(figures["commands"].items(), key=lambda kv: -kv[1][1])
    for name, (calls, usec) in rows:
        if name.startswith(("info", "config")) or usec / n < 0.005:
            continue
        print(f"      {name:22} {calls / n:8.3f} {usec / max(calls, 1):8.2f} {usec / n:8.3f}")


def show_drain(enqueue: dict[str, Any], e2e: dict[str, Any]) -> None:
    """The drain's commands: the end-to-end run's per message less the enqueue's (the enqueue's commands scaled by
    its ``xadd`` against the end-to-end one's, as a busier Redis takes longer per command: commandstats' µs are the
    commands' wall-clock time); ``evalsha`` less the commands the scripts run is the scripts' own Lua."""
    n, m = e2e["messages"], enqueue["messages"]
    mine, theirs = e2e["commands"], enqueue["commands"]
    scale = (mine.get("xadd", (0, 0))[1] / n) / max(theirs.get("xadd", (0, 1))[1] / m, 1e-9)
    print(f"    drain (end to end less the enqueue, its commands x{scale:.2f}): calls/msg, us/msg:")
    rows = []
    for name, (calls, usec) in mine.items():
        calls0, usec0 = theirs.get(name, (0, 0))
        rows.append((name, calls / n - calls0 / m, usec / n - scale * usec0 / m))
    for name, calls, usec in sorted(rows, key=lambda row: -row[2]):
        if name.startswith(("info", "config")) or abs(usec) < 0.005:
            continue
        print(f"      {name:22} {calls:8.3f} {usec:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="c55367e")
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--only", choices=("base", "head"), help="run one side")
    parser.add_argument(
        "--keep-backlog",
        action="store_true",
        help="measure as before round 4: the end-to-end window also drains what the enqueue scenario left",
    )
    args = parser.parse_args()
    best: dict[tuple[str, str], dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-redis-cpu-")))
        sides = []
        if args.only != "head":
            base_root = stack.enter_context(checkout(args.base))
            sides.append(stack.enter_context(relay_side("base", base_root, scratch)))
        if args.only != "base":
            sides.append(stack.enter_context(relay_side("head", ROOT, scratch)))
        for round_ in range(args.rounds):
            for kind, workers in (("enqueue", False), ("e2e", True)):
                for one, client in sides[:: 1 if round_ % 2 == 0 else -1]:  # each side first in turn
                    got = scenario(
                        one,
                        client,
                        args.messages,
                        workers=workers,
                        latency_ms=args.latency_ms,
                        backlog_first=not args.keep_backlog,
                    )
                    out = got["traffic"]["total_net_output_bytes"] / args.messages
                    print(f"  round {round_ + 1} {one.name} {kind}: redis-server {got['cpu']:.2f} us/msg, out "
                          f"{out:.0f} B/msg, undelivered at the start {got['backlog']:,}, delivered in the window "
                          f"{got['delivered']:,}", flush=True)  # fmt: skip
                    if (one.name, kind) not in best or got["cpu"] < best[(one.name, kind)]["cpu"]:
                        best[(one.name, kind)] = got
    print(f"Redis CPU per message: base {args.base} vs head {code_version()}; {args.messages:,} messages per "
          f"scenario, /v1/batch x100, 2 workers, sandbox {args.latency_ms:g} ms, "
          f"lowest of {args.rounds} rounds")  # fmt: skip
    for name in ("base", "head"):
        if (name, "e2e") not in best:
            continue
        enqueue, e2e = best[(name, "enqueue")], best[(name, "e2e")]
        print(f"  {name}: enqueue {enqueue['cpu']:.2f} us/msg, drain {e2e['cpu'] - enqueue['cpu']:.2f} us/msg, "
              f"together {e2e['cpu']:.2f} us/msg")  # fmt: skip
        show("enqueue (workers stopped)", enqueue)
        show("end to end", e2e)
        show_drain(enqueue, e2e)


if __name__ == "__main__":
    main()
