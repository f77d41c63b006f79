"""Run the chaos test N times (a seed each) and print every run's figures, then a summary.

    .venv/bin/python tests/bench/chaos_loop.py --runs 20 --duration 30

Each run is ``tests/delivery/test_chaos.py`` with ``CHAOS_STRICT=1``: it fails when an accepted message is
missing or misplaced, the queue does not drain, a process exits by itself, or everything is done later than
lease TTL + 5 s (10 s) after the last fault. The line ``CHAOS-FIGURES`` of each run is printed as it ends.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of faults per run (CHAOS_DURATION_S)")
    parser.add_argument("--rate", type=float, default=40.0, help="messages/s per write key (CHAOS_RATE)")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first run; run i uses seed + i")
    args = parser.parse_args()
    failed = 0
    figures: list[str] = []
    for run in range(args.runs):
        env = dict(os.environ, CHAOS_STRICT="1", CHAOS_SEED=str(args.seed + run))
        env |= {"CHAOS_DURATION_S": str(args.duration), "CHAOS_RATE": str(args.rate)}
        command = [sys.executable, "-m", "pytest", "-q", "-s", "-m", "chaos", "tests/delivery/test_chaos.py"]
        started = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        found = re.search(r"^CHAOS-FIGURES (.*)$", done.stdout, re.MULTILINE)
        line = found[1] if found else "no figures (see the output)"
        verdict = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        failed += done.returncode != 0
        figures.append(line)
        print(f"run {run + 1}/{args.runs}: {verdict} in {time.monotonic() - started:.0f} s: {line}", flush=True)
        if done.returncode != 0:
            print("\n".join(done.stdout.splitlines()[-40:]), flush=True)
    recovered = [float(m[1]) for line in figures if (m := re.search(r"recovered_s=([\d.]+)", line))]
    if recovered:
        print(
            f"recovered after the last fault: max {max(recovered):.1f} s, mean {sum(recovered) / len(recovered):.1f} s"
        )
    print(f"{args.runs - failed} of {args.runs} runs passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
