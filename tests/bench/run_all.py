"""Regenerate the benchmark report: run every benchmark of tests/bench in turn, write tests/bench/REPORT.md.

Run: ``.venv/bin/python tests/bench/run_all.py [--only transform,ingest,...] [--quick] [--output FILE]``

Each benchmark runs as its own process (the command is in the report, so any figure can be re-measured
alone), one after the other, bounded in time. The report holds the machine (cores, CPU model, Python,
Redis, the date), the headline figures pulled from the outputs, then every benchmark's command, wall time,
load average before and after (the machine is shared: a high load lowers wall-clock rates), and its whole
output. ``--quick`` runs smaller sizes (a smoke check of the scripts, not figures to publish).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from machine import code_version, describe, load_average  # noqa: E402

PY = ".venv/bin/python"


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    args: tuple[str, ...]
    quick: tuple[str, ...]


BASE = "c55367e"
"""The commit the benchmarks that compare two trees measure against: where this release's CPU work started."""

BENCHES = [
    Bench("transform", "Transform, one core", ("bench_transform.py",), ("bench_transform.py", "--rounds", "2")),
    Bench("messages", "Message validation: plain checks vs the pydantic models", ("bench_messages.py",),
          ("bench_messages.py", "--messages", "5000", "--rounds", "2")),
    Bench("ingest", "Ingest vs raw XADD", ("bench_ingest.py",),
          ("bench_ingest.py", "--messages", "10000", "--singles", "1000", "--rounds", "1")),
    Bench("delivery", "End to end vs the naive Celery baseline and the CleverTap ceiling", ("bench_delivery.py",),
          ("bench_delivery.py", "--messages", "20000", "--naive-messages", "300", "--naive-messages-0ms", "600")),
    Bench("e2e", "End to end through HTTP ingest and single calls, against a base commit", ("bench_e2e.py",),
          ("bench_e2e.py", "--seconds", "0.5", "--slow-seconds", "0.5")),
    Bench("ingest_side", "Ingest's CPU per single call and per batched message, against a base commit",
          ("bench_ingest_side.py", "--base", BASE), ("bench_ingest_side.py", "--base", BASE, "--rounds", "1",
          "--singles", "1000", "--batches", "50")),
    Bench("drain", "The worker's CPU per message in a drain, 0 and 200 ms, against a base commit",
          ("bench_drain.py", "--base", BASE, "--messages", "50000", "--threads", "16", "--latency-ms", "200"),
          ("bench_drain.py", "--base", BASE, "--messages", "5000", "--rounds", "1")),
    Bench("enqueue", "Redis's CPU per message of the enqueue and the drain's store part, against a base commit",
          ("enqueue_cpu.py", "--base", BASE),
          ("enqueue_cpu.py", "--base", BASE, "--rounds", "1", "--messages", "2000")),
    Bench("workers", "One vs two workers", ("bench_workers.py",), ("bench_workers.py", "--messages", "10000")),
    Bench("redis_memory", "Redis memory per queued message, dedup marker, dead letter", ("bench_redis_memory.py",),
          ("bench_redis_memory.py", "10000")),
    Bench("celery_memory", "Memory per queued message vs one Celery message", ("bench_celery_memory.py",),
          ("bench_celery_memory.py", "2000")),
    Bench("deadletters", "Dead-letter store at scale", ("bench_deadletters.py",), ("bench_deadletters.py", "10000")),
    Bench("deletion", "The deleted-user screen's cost to a worker", ("bench_deletion.py",),
          ("bench_deletion.py", "--messages", "5000", "--rounds", "1")),
    Bench("sandbox", "Sandbox records/s (it must not be the bottleneck)", ("bench_sandbox.py",),
          ("bench_sandbox.py", "--seconds", "3")),
    Bench("soak", "Soak: steady rate, latency, memory, worker RSS", ("soak.py", "--seconds", "180", "--rate", "1000"),
          ("soak.py", "--seconds", "20", "--rate", "300", "--every", "5", "--backlog", "3000")),
]  # fmt: skip

HEADLINES = [  # (figure, benchmark, pattern, template over the groups)
    ("transform, key cache warm (per CPU second)", "transform", r"^\s*cached\s+([\d,]+) msg/s", "{0} msgs/s"),
    ("transform, uncached (per CPU second)", "transform", r"^\s*uncached\s+([\d,]+) msg/s", "{0} msgs/s"),
    ("message validation, ~300 B track: models → plain checks", "messages",
     r"track ~300 B.*?\(before\)\s+([\d.]+) us.*?\(now\)\s+([\d.]+) us", "{0} → {1} µs/message"),
    ("raw pipelined XADD (the ingest ceiling)", "ingest", r"raw XADD, pipelines of 100\s+([\d,]+) msg/s", "{0} msgs/s"),
    ("ingest /v1/batch x100", "ingest", r"/v1/batch x100\s+([\d,]+) msg/s\s+([\d.]+) of ceiling",
     "{0} msgs/s = {1} of raw XADD"),
    ("ingest /v1/track (single calls)", "ingest", r"/v1/track \(single calls\)\s+([\d,]+) msg/s", "{0} msgs/s"),
    ("idle latency, one track → sandbox", "delivery", r"median (\d+) ms, max (\d+) ms", "median {0} ms, max {1} ms"),
    ("end to end, sandbox 200 ms", "delivery", r"latency 200 ms:\n\s+this relay\s+([\d,]+) msgs/s", "{0} msgs/s"),
    ("naive one-Celery-task-per-message, 200 ms", "delivery",
     r"latency 200 ms:(?:\n.*?)*?NAIVE one task/msg\s+([\d,]+) msgs/s\n\s+relay / naive\s+([\d,.]+) x",
     "{0} msgs/s: the relay does {1}x"),
    ("relay / CleverTap ceiling (15 × 1000 / 200 ms = 75,000/s)", "delivery",
     r"ceiling cap×1000/0.2 s\s+[\d,]+ msgs/s\s+relay / ceiling = ([\d.]+) \(steady state ([\d.]+)\)",
     "{0} (steady state {1})"),
    ("through HTTP ingest, 200 ms: relay / ceiling, base → head", "e2e",
     r"latency 200 ms.*?relay / ceiling\s+([\d.]+)\s+([\d.]+)", "{0} → {1}"),
    ("through HTTP ingest, 200 ms: relay CPU µs/msg, base → head", "e2e",
     r"latency 200 ms.*?relay CPU us/msg \(the three\)\s+([\d.]+)\s+([\d.]+)", "{0} → {1} µs"),
    ("through HTTP ingest, 1 s: relay / ceiling, base → head", "e2e",
     r"latency 1000 ms.*?relay / ceiling\s+([\d.]+)\s+([\d.]+)", "{0} → {1}"),
    ("single calls /v1/track: ingest CPU µs/request, base → head", "e2e",
     r"ingest CPU us/request\s+([\d.]+)\s+([\d.]+)", "{0} → {1} µs"),
    ("single calls /v1/track (one ingest process): CPU µs/request, base → head", "ingest_side",
     r"/v1/track text/plain, us/request\s+([\d.]+)\s+([\d.]+)", "{0} → {1} µs"),
    ("/v1/batch ×100 (one ingest process): CPU µs/message, base → head", "ingest_side",
     r"/v1/batch x100, us/message\s+([\d.]+)\s+([\d.]+)", "{0} → {1} µs"),
    ("enqueue, Redis CPU µs/message (steady state), base → head", "enqueue",
     r"steady enqueue base\s+([\d.]+)\s+head\s+([\d.]+)", "{0} → {1} µs"),
    ("two workers / one, CPU-bound", "workers", r"CPU-bound.*?ratio 2 / 1\s+([\d.]+) x", "{0}x"),
    ("two workers / one, concurrency-bound", "workers", r"concurrency-bound.*?ratio 2 / 1\s+([\d.]+) x", "{0}x"),
    ("Redis per queued message (stream entry)", "celery_memory", r"relay stream entry:\s+used_memory\s+(\d+)",
     "{0} B"),
    ("Redis per Celery task message", "celery_memory", r"one Celery message:\s+used_memory\s+(\d+)", "{0} B"),
    ("Celery message / stream entry", "celery_memory", r"ratio Celery / stream \(used_memory\): ([\d.]+) x", "{0}x"),
    ("dedup marker per accepted message", "redis_memory", r"dedup marker: MEMORY USAGE (\d+) B/\w+", "{0} B"),
    ("dead letter", "redis_memory", r"dead letter: used_memory delta (\d+) B/letter", "{0} B"),
    ("deleted-user screen, none suppressed", "deletion",
     r"screen, none suppressed\s+[\d.]+ us CPU/message.*?screen ([\d.]+) us CPU", "{0} µs of worker CPU per message"),
    ("sandbox records/s at 0 ms (one process)", "sandbox", r"0 ms latency:\s+([\d,]+) records/s", "{0} records/s"),
    ("soak throughput in / out", "soak", r"throughput in ([\d,]+) msgs/s.*?out ([\d,]+) msgs/s", "{0} / {1} msgs/s"),
    ("soak end-to-end latency", "soak", r"p50 (\d+) ms, p99 (\d+) ms", "p50 {0} ms, p99 {1} ms"),
    ("soak worker RSS", "soak", r"worker 0 RSS: .*?growth ([+-][\d.]+) MB .*?: (flat: PASS|GROWING: FAIL)",
     "worker 0 {0} MB over the run: {1}"),
]  # fmt: skip


@dataclass
class Run:
    bench: Bench
    command: str
    seconds: float
    load_before: str
    load_after: str
    returncode: int
    output: str


def run(bench: Bench, quick: bool, timeout_s: float) -> Run:
    args = bench.quick if quick else bench.args
    command = f"{PY} tests/bench/{' '.join(args)}"
    load_before, started = load_average(), time.monotonic()
    print(f"[run_all] {command}", flush=True)
    try:
        done = subprocess.run(
            [sys.executable, str(HERE / args[0]), *args[1:]], cwd=ROOT, capture_output=True, text=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip
        output, code = (
            done.stdout + (f"\n[stderr, last lines]\n{_tail(done.stderr)}" if done.returncode else ""),
            done.returncode,
        )
    except subprocess.TimeoutExpired as exc:
        output, code = f"{exc.stdout or ''}\n[timed out after {timeout_s:.0f} s]", -1
    result = Run(bench, command, time.monotonic() - started, load_before, load_average(), code, output.strip())
    print(result.output, flush=True)
    return result


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def headlines(runs: dict[str, Run]) -> list[str]:
    rows = ["| figure | value | benchmark |", "|---|---|---|"]
    for figure, name, pattern, template in HEADLINES:
        if name not in runs:
            continue
        found = re.search(pattern, runs[name].output, re.MULTILINE | re.DOTALL)
        value = template.format(*found.groups()) if found else "not in the output (see below)"
        rows.append(f"| {figure} | {value} | [{name}](#{name}) |")
    return rows


def report(runs: list[Run], machine: dict[str, str], quick: bool, command: str) -> str:
    lines = ["# Benchmark report", "", f"Regenerated by `{command}` (every figure below, in one go; "
             "each benchmark's own command re-measures it alone)." + (" **Quick mode: smoke sizes.**" if quick else ""),
             "", "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in machine.items()],
             f"| load average (1/5/15 min) at the end | {load_average()} |", "",
             "The 2 cores are shared with other work (other engineers' test suites): the load average before and "
             "after each benchmark is given with it. Rates per CPU second (transform, sandbox, ingest CPU per "
             "message) do not depend on that load; wall-clock rates do, and are lower bounds.", "",
             "## Headline figures", "", *headlines({r.bench.name: r for r in runs}), ""]  # fmt: skip
    chaos = HERE / "chaos-report.md"
    if chaos.exists():
        lines += [
            "Chaos (faults under load, every accepted message reconciled): [chaos-report.md](chaos-report.md).",
            "",
        ]
    for r in runs:
        status = "" if r.returncode == 0 else f" — **exit {r.returncode}**"
        timing = f"`{r.command}`: {r.seconds:.0f} s, load average {r.load_before} before, {r.load_after} after"
        lines += [f"## {r.bench.name}", "", f"{r.bench.title}{status}", "", timing, "", "```", r.output, "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", help="comma-separated names: " + ",".join(b.name for b in BENCHES))
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the scripts run")
    parser.add_argument("--output", type=Path, default=HERE / "REPORT.md")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per benchmark")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else {b.name for b in BENCHES}
    unknown = wanted - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    machine = describe() | {"code (git)": code_version()}
    runs = [run(bench, args.quick, args.timeout) for bench in BENCHES if bench.name in wanted and
            (HERE / bench.args[0]).exists()]  # fmt: skip
    command = " ".join([PY, "tests/bench/run_all.py", *sys.argv[1:]])
    args.output.write_text(report(runs, machine, args.quick, command))
    print(f"[run_all] wrote {args.output}")
    sys.exit(1 if any(r.returncode for r in runs) else 0)


if __name__ == "__main__":
    main()
