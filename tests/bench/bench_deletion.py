"""What the deleted-user screen costs a worker, side by side in one run.

Run: ``.venv/bin/python tests/bench/bench_deletion.py [--messages 20000] [--rounds 3]``

Every batch a worker delivers is screened against the destination's suppressed users (one ``HMGET``
per destination and batch, :meth:`worker.delivery.screen.Screen.screen`). This drains the same
``--messages`` tracks (1000 per batch, 5,000 users, an instant in-process CleverTap, the real Redis at
``REDIS_URL``) three ways, rounds interleaved, best round shown:

- no screen: :meth:`Screen.screen` replaced by a pass-through (the relay before user deletion);
- screen, none suppressed: the steady state of a relay without deletions;
- screen, 10,000 suppressed (1% of the messages dropped): a destination with many deleted users.

Figures are worker CPU µs per message (this process), messages/s of wall time, and the time spent inside
the screen per message: CPU of the draining thread, and wall (its Redis round trips included); nothing is
asserted. The first batch after a change to the suppressions re-reads the destination's hash (HGETALL).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import redis  # noqa: E402
import structlog  # noqa: E402
from delivery_fakes import FakeCleverTap, build, enqueue  # noqa: E402

from worker.core.destinations import Destination  # noqa: E402
from worker.core.keys import Keys  # noqa: E402
from worker.store.suppressions import Suppression, fields_of  # noqa: E402
from worker.transform.deletions import deletion_of  # noqa: E402

WK = "wk-bench"
DEST = Destination(write_key=WK, account_id="ACC-BENCH", passcode="secret", allow_delete_events=True)


def messages(count: int) -> list[dict[str, Any]]:
    return [
        {"type": "track", "event": "Clicked", "userId": f"user-{n % 5000}", "messageId": uuid.uuid4().hex,
         "timestamp": "2026-11-28T20:00:00Z", "properties": {"n": n, "plan": "pro"}}
        for n in range(count)
    ]  # fmt: skip


def deletion_record(message: dict[str, Any]) -> dict[str, Any]:
    deletion = deletion_of(message, DEST)
    assert deletion is not None
    return deletion.record()


def run(client: redis.Redis, mode: str, count: int) -> tuple[float, float, int, float, float]:
    keys = Keys(f"bench-del-{uuid.uuid4().hex[:8]}")
    fake = FakeCleverTap()
    drainer = build(client, keys, {WK: DEST}, fake)
    drainer.budget_s = 3600.0
    screener = drainer.deliverer.screen
    screen, spent = screener.screen, [0.0, 0.0]

    def timed(partition: int, works: Any, tally: Any, schedule: Any, **options: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return works if mode == "off" else screen(partition, works, tally, schedule, **options)
        finally:
            spent[0] += time.perf_counter() - wall
            spent[1] += time.thread_time() - cpu

    screener.screen = timed  # type: ignore[method-assign]
    if mode == "many":
        now = time.time()
        deleted = [{"type": "track", "event": "Delete User", "userId": f"gone-{n}"} for n in range(9950)]
        deleted += [{"type": "track", "event": "Delete User", "userId": f"user-{n}"} for n in range(50)]
        value = Suppression("", now + 3600, now, "track").encode()
        fields = {field: value for message in deleted for field in fields_of(deletion_record(message))}
        client.hset(keys.suppressed(WK), mapping=fields)  # type: ignore[arg-type]
    enqueue(client, keys, WK, messages(count))
    cpu, wall = time.process_time(), time.perf_counter()
    result = drainer.drain(0)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    for key in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
        client.delete(key)
    return cpu / count * 1e6, count / wall, result.tally.skipped, spent[0] / count * 1e6, spent[1] / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # the upload lines: off
    client = redis.Redis.from_url(args.redis_url)
    labels = {"off": "no screen", "none": "screen, none suppressed", "many": "screen, 10,000 suppressed"}
    best: dict[str, tuple[float, float, int, float, float]] = {}
    for _ in range(args.rounds):
        for mode in labels:
            figures = run(client, mode, args.messages)
            if mode not in best or figures[0] < best[mode][0]:
                best[mode] = figures
    print(f"deleted-user screen: {args.messages} tracks, 1000 per batch, best of {args.rounds} rounds")
    base = best["off"][0]
    for mode, label in labels.items():
        cpu, rate, skipped, inside, inside_cpu = best[mode]
        print(
            f"{label:28s} {cpu:6.1f} us CPU/message  {rate:8,.0f} msg/s  {cpu / base:4.2f}x CPU  "
            f"screen {inside_cpu:4.2f} us CPU ({inside:4.2f} us wall)/message  skipped {skipped}"
        )
    client.close()


if __name__ == "__main__":
    main()
