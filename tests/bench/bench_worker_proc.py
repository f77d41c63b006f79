"""The workers alone, as real ``ctrelay worker`` processes: CPU per message to drain a backlog, base vs this tree.

Run: ``.venv/bin/python tests/bench/bench_worker_proc.py [--base REV] [--messages 200000] [--latency-ms 200]
[--workers 2] [--rounds 1] [--partitions 16] [--env NAME=VALUE] [--concurrent] [--profile SECONDS] [--head-only]``

Each side: a ``redis-server`` of its own, ``ctrelay sandbox`` (at ``--latency-ms``), ``ctrelay ingest`` and
``--workers`` × ``ctrelay worker`` with the production settings (``soak.PRODUCTION``: 16 drain threads, tick
0.2 s). The workers start on empty streams and settle (imports, groups, connections), then are stopped
(``SIGSTOP``, their whole process group) while ``/v1/batch`` × 100 tracks fill the streams through ingest; ingest is
stopped, the workers continue (``SIGCONT``) and drain the backlog. The figure is the workers' CPU (user + system,
``/proc/<pid>/stat``, children included) from the continue until the sandbox holds every record, per message,
so that neither ingest's CPU nor the workers' start-up mixes in. With ``--concurrent`` the load and the drain run
at once instead (as in bench_e2e: the workers' CPU while ingest feeds them, on the same cores).

Also printed: the drain's rate and its steady state (10-90 % of the records), records per upload (the sandbox's
requests), context switches per message (``/proc/<pid>/task/*/status``), Redis commands per upload
(``INFO commandstats``, commands run inside scripts included), the first worker's CPU by thread (``/proc``
per-thread times, named by ``py-spy dump``: Celery's loop is MainThread, the pool's threads are the drains), and
with ``--profile`` a ``py-spy record --gil --native`` of the first worker (collapsed stacks in /tmp). ``--env
CTRELAY_READ_BATCH=250`` and the like set the workers' settings on both sides (a batch's fixed cost: compare).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

from bench_delivery import steady_rate  # noqa: E402
from bench_e2e import Side  # noqa: E402
from bench_ingest import WRITE_KEY, cpu_seconds  # noqa: E402
from delivery_e2e import Relay  # noqa: E402
from machine import checkout, load_average  # noqa: E402
from soak import PRODUCTION  # noqa: E402

from worker.cli.embedded import redis_server  # noqa: E402


def switches(pid: int) -> int:
    """Voluntary + involuntary context switches of ``pid`` and its threads (``/proc/<pid>/task/*/status``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU clock ticks (user + system) of each thread of ``pid``, by thread id."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            ticks[task.name] = int(fields[11]) + int(fields[12])
    return ticks


def thread_names(pid: int) -> dict[str, str]:
    """Python thread names by thread id (``py-spy dump``): MainThread (Celery's loop), the ticker, the pool's; none
    without py-spy (every thread is then "other")."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():  # (py-spy is not among the project's packages: `pip install py-spy` into the venv)
        return {}
    dump = subprocess.run([str(spy), "dump", "-p", str(pid)], capture_output=True, text=True, check=False).stdout
    names = {}
    for line in dump.splitlines():
        if line.startswith("Thread "):
            tid = line.split()[1]
            name = line.split('"')[1] if '"' in line else "?"
            names[tid] = "pool" if name.startswith("ThreadPoolExecutor") else name
    return names


def print_threads(name: str, pid: int, before: dict[str, int]) -> None:
    """Print the share of ``pid``'s CPU (since ``before``) each kind of thread took."""
    ticks, names = thread_ticks(pid), thread_names(pid)
    by_name: dict[str, int] = {}
    for tid, n in ticks.items():
        by_name[names.get(tid, "other")] = by_name.get(names.get(tid, "other"), 0) + n - before.get(tid, 0)
    total = sum(by_name.values()) or 1
    print(f"  {name}: worker 0's CPU by thread: "
          + ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])))  # fmt: skip


SPY_MODE = ["--native", "-r", "1000"]
"""How py-spy samples (``--spy-nonblocking``: ``--nonblocking -r 400``, which does not pause the worker at each sample,
but sees no native frames)."""


def profiler(side: Side, seconds: float) -> subprocess.Popen[bytes]:
    """``py-spy record`` of the first worker (samples taken while a thread holds the GIL, native frames), its
    collapsed stacks written to /tmp (``bench-worker-<side>-<pid>.txt``)."""
    out = Path(tempfile.gettempdir()) / f"bench-worker-{side.name}-{os.getpid()}.txt"
    spy = str(Path(sys.executable).parent / "py-spy")
    command = [spy, "record", "--gil", *SPY_MODE, "-f", "raw", "-d", str(int(seconds)), "-o", str(out)]
    return subprocess.Popen([*command, "-p", str(side.workers[0].process.pid)], stdout=subprocess.DEVNULL)


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


@contextlib.contextmanager
def relay_of(
    name: str, root: Path, scratch: Path, latency_ms: float, extra: dict[str, str], *, partitions: int = 16
) -> Iterator[Side]:
    tmp = scratch / name
    tmp.mkdir()
    env = dict(PRODUCTION, CTRELAY_LOG_LEVEL="warning", PYTHONPATH=str(root), **extra)
    with redis_server(shutil.which("redis-server") or "redis-server") as handle:
        client = redis.Redis.from_url(handle.url)
        redis_pid = int(client.info("server")["process_id"])
        client.close()
        relay = Relay(tmp, handle.url, partitions=partitions, env_extra=env, root=root)
        try:
            relay.start_sandbox()
            relay.destinations([{"write_key": WRITE_KEY, "account_id": "BENCH", "passcode": "bench"}])
            ingest, url = relay.start_ingest()
            one = Side(name, relay, redis_pid, int(url.rsplit(":", 1)[1]), ingest)
            one.latency(latency_ms)
            yield one
        finally:
            relay.stop_all()


def run(side: Side, messages: int, workers: int, profile_s: float, concurrent: bool) -> dict[str, float]:
    relay = side.relay
    side.workers = [relay.start_worker() for _ in range(workers)]
    side.send("batch", 2000, 1, 2, poll=True)  # warm-up: imports, connections, groups
    time.sleep(2)
    if concurrent:
        return concurrent_run(side, messages, profile_s)
    for w in side.workers:
        signal_group(w.process.pid, signal.SIGSTOP)
    side.send("batch", messages, 2, 8, poll=False)  # the backlog, through ingest
    side.ingest.stop()
    base = side.records()
    stats0 = relay.sandbox("/_sandbox/stats")
    cpu0 = sum(cpu_seconds(w.process.pid) for w in side.workers)
    redis0 = cpu_seconds(side.redis_pid)
    sw0 = sum(switches(w.process.pid) for w in side.workers)
    first = side.workers[0].process.pid
    ticks0 = thread_ticks(first)
    redis_client = redis.Redis.from_url(relay.redis_url)
    commands0 = redis_client.info("commandstats")
    started = time.monotonic()
    for w in side.workers:
        signal_group(w.process.pid, signal.SIGCONT)
    spy = None
    if profile_s:
        spy = profiler(side, profile_s)
    deadline = started + 600
    samples: list[tuple[float, int]] = []
    while not samples or samples[-1][1] < base + messages:
        if time.monotonic() > deadline:
            raise SystemExit(f"{side.name}: the backlog was not drained in 600 s")
        time.sleep(0.05)
        samples.append((time.monotonic(), side.records()))
    elapsed = time.monotonic() - started
    cpu = sum(cpu_seconds(w.process.pid) for w in side.workers) - cpu0
    sw = sum(switches(w.process.pid) for w in side.workers) - sw0
    print_threads(side.name, first, ticks0)
    stats = relay.sandbox("/_sandbox/stats")
    if spy is not None:
        spy.wait(timeout=profile_s + 60)
    requests = stats.get("requests", 0) - stats0.get("requests", 0)
    commands = redis_client.info("commandstats")
    redis_client.close()
    calls = {k: v["calls"] - commands0.get(k, {}).get("calls", 0) for k, v in commands.items()}
    print(f"  {side.name}: Redis commands per upload: "
          + ", ".join(f"{k.removeprefix('cmdstat_')} {n / max(requests, 1):.2f}"
                      for k, n in sorted(calls.items(), key=lambda kv: -kv[1]) if n))  # fmt: skip
    return {
        "worker_us": cpu / messages * 1e6,
        "redis_us": (cpu_seconds(side.redis_pid) - redis0) / messages * 1e6,
        "rate": messages / elapsed,
        "steady": steady_rate(samples, base, messages),
        "switches": sw / messages,
        "per_upload": messages / requests if requests else 0.0,
    }


def concurrent_run(side: Side, messages: int, profile_s: float) -> dict[str, float]:
    """The load and the drain at once (as bench_e2e): the workers' CPU while ingest feeds them."""
    spy = None
    if profile_s:
        spy = profiler(side, profile_s)
    stats0 = side.relay.sandbox("/_sandbox/stats")
    sw0 = sum(switches(w.process.pid) for w in side.workers)
    ticks0 = thread_ticks(side.workers[0].process.pid)
    figures = side.send("batch", messages, 2, 8, poll=True)
    sw = sum(switches(w.process.pid) for w in side.workers) - sw0
    print_threads(side.name, side.workers[0].process.pid, ticks0)
    stats = side.relay.sandbox("/_sandbox/stats")
    if spy is not None:
        spy.wait(timeout=profile_s + 60)
    requests = stats.get("requests", 0) - stats0.get("requests", 0)
    return {
        "worker_us": figures["worker_us"],
        "redis_us": figures["redis_us"],
        "ingest_us": figures["ingest_us"],
        "rate": figures["rate"],
        "steady": figures["steady"],
        "switches": sw / messages,
        "per_upload": messages / requests if requests else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="c55367e", help="the commit to compare with")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy the first worker this many seconds")
    parser.add_argument("--spy-nonblocking", action="store_true", help="py-spy without pausing the worker")
    parser.add_argument("--head-only", action="store_true")
    parser.add_argument("--partitions", type=int, default=16, help="CTRELAY_PARTITIONS (16: the default)")
    parser.add_argument("--concurrent", action="store_true", help="load and drain at once (as bench_e2e)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the workers (both sides)")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    if args.spy_nonblocking:
        SPY_MODE[:] = ["--nonblocking", "-r", "400"]
    scratch = Path(tempfile.mkdtemp(prefix="bench-worker-proc-"))
    best: dict[str, dict[str, float]] = {}
    print(f"workers draining a backlog of {args.messages:,} messages, sandbox {args.latency_ms:.0f} ms, "
          f"{args.workers} workers; load average {load_average()} before")  # fmt: skip
    with contextlib.ExitStack() as stack:
        roots = {"head": ROOT}
        if not args.head_only:
            roots = {"base": stack.enter_context(checkout(args.base)), "head": ROOT}
        for name, root in roots.items():
            commit = ["git", "log", "-1", "--format=%h %ci %s"]
            print(f"  {name}: " + subprocess.run(commit, cwd=root, capture_output=True, text=True).stdout.strip()[:100])
        for round_ in range(args.rounds):
            for name, root in roots.items():
                with relay_of(
                    f"{name}{round_}", root, scratch, args.latency_ms, extra, partitions=args.partitions
                ) as side:
                    figures = run(side, args.messages, args.workers, args.profile, args.concurrent)
                print(f"  round {round_} {name}: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items()), flush=True)
                if name not in best or figures["worker_us"] < best[name]["worker_us"]:
                    best[name] = figures
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"  best of {args.rounds} (lowest worker CPU); load average {load_average()} after")
    keys = ["worker_us", "redis_us", "rate", "steady", "switches", "per_upload"]
    print(f"    {'':24}" + "".join(f"{n:>12}" for n in best) + ("   head/base" if len(best) == 2 else ""))
    for key in keys:
        row = "".join(f"{best[n][key]:>12,.2f}" for n in best)
        if len(best) == 2 and best["base"][key]:
            row += f"{best['head'][key] / best['base'][key]:>12.2f}"
        print(f"    {key:24}{row}")


if __name__ == "__main__":
    main()
