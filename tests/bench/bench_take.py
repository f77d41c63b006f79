"""Ingest's CPU per batched message before the write, in process: this tree against a base checkout, side by side.

Run: ``.venv/bin/python tests/bench/bench_take.py --base-root /path/to/base/checkout [--rounds 5]``

What one ``/v1/batch`` request of 100 ~300-byte tracks (the body ``bench_e2e.py`` sends) costs ingest between its
body read and its Redis write: ``Ingest._take`` (decompress, parse, auth, validate, enrich, encode, bound, make
the entries), no HTTP and no Redis, so the figure is steady to a few percent on a loaded machine (CPU time of the
process). Each side runs in a child process of its own (the base side with its checkout first on ``sys.path``);
rounds alternate base and head, the lowest of each side is shown with head/base. With ``--side`` it is one such
child: it prints its figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def distinct(n: int) -> str:
    """Message ``n``'s own timestamp, as analytics-python writes one per call (microseconds, ``+00:00``)."""
    return f"2026-11-28T12:{n // 600_000 % 60:02d}:{n // 10_000 % 60:02d}.{n * 97 % 1_000_000:06d}+00:00"


def side(batches: int, repeats: int, timestamps: str) -> float:
    """This process's CPU seconds per message of ``_take`` over ``batches`` bodies, the lowest of ``repeats``."""
    import orjson

    sys.path.insert(0, str(HERE))
    from bench_ingest import message

    from ingest.tracking.routes import Ingest
    from worker.core.destinations import Destination, Destinations
    from worker.core.keys import Keys
    from worker.core.settings import Settings
    from worker.store.producer import Producer

    settings = Settings(redis_prefix="bench-take", partitions=16)
    destinations = Destinations([Destination(write_key="wk_bench", account_id="BENCH", passcode="x")])
    producer = Producer(Keys("bench-take"), 16, 600)
    ingest = Ingest(settings, destinations, None, producer)  # type: ignore[arg-type]  # (no write: no client)
    scope = {"type": "http", "headers": [(b"authorization", b"Basic d2tfYmVuY2g6")], "query_string": b""}
    headers = {b"authorization": "Basic d2tfYmVuY2g6"}

    def item(n: int) -> dict[str, object]:
        made = message(n)
        if timestamps == "distinct":
            made["timestamp"] = distinct(n)
        return made

    bodies = [
        orjson.dumps({"batch": [item(n) for n in range(s * 100, s * 100 + 100)], "sentAt": "2026-12-01T10:00:01Z"})
        for s in range(batches)
    ]
    take = ingest._take
    for raw in bodies[:20]:  # warm-up: caches, makers
        take(scope, headers, raw, "batch", None)
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for raw in bodies:
            take(scope, headers, raw, "batch", None)
        best = min(best, (time.process_time() - started) / (len(bodies) * 100))
    return best


def run(root: Path, batches: int, repeats: int, timestamps: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(root), CTRELAY_LOG_LEVEL="warning")
    command = [sys.executable, str(Path(__file__).resolve()), "--side", "--batches", str(batches)]
    command += ["--repeats", str(repeats), "--timestamps", timestamps]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{root}: {done.stderr}")
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-root", type=Path, help="a checkout of the base commit (its own code is imported)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200, help="requests of 100 messages per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per round, the lowest kept")
    parser.add_argument("--side", action="store_true", help="be one side: print its CPU seconds per message")
    parser.add_argument(
        "--timestamps",
        choices=["same", "distinct", "both"],
        default="both",
        help="every message the same timestamp (bench_ingest.py's), or each its own (as SDKs send them)",
    )
    args = parser.parse_args()
    if args.side:
        print(side(args.batches, args.repeats, args.timestamps))
        return
    if args.base_root is None:
        raise SystemExit("--base-root is needed")
    kinds = ["same", "distinct"] if args.timestamps == "both" else [args.timestamps]
    best = {(side, kind): float("inf") for side in ("base", "head") for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            for name, root in (("base", args.base_root.resolve()), ("head", ROOT)):
                best[name, kind] = min(best[name, kind], run(root, args.batches, args.repeats, kind))
    print(f"Ingest._take, /v1/batch x100 (~300-byte tracks), CPU us/message, lowest of {args.rounds} rounds")
    for kind in kinds:
        base, head = best["base", kind] * 1e6, best["head", kind] * 1e6
        print(f"  timestamps {kind:9} base {base:6.2f}  head {head:6.2f}  head/base {head / base:.3f}")


if __name__ == "__main__":
    main()
