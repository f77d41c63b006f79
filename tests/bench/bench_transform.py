"""Transform throughput on one core, side by side in one run: with the key cache, and without it.

Run: ``.venv/bin/python tests/bench/bench_transform.py [--messages 20000] [--rounds 5]``

A realistic mix, in equal parts: identify with 15 traits (special ones included), track with 10
properties, Order Completed with 3 products, page, screen; every message has its own ids, values and
timestamp (as ingest stores them), the keys repeat as they do in real traffic. Three figures:

- cached: the bounded LRU key cache and the table of names (:data:`worker.transform.values._NAMES`) warm (the
  steady state of a worker);
- no names table: the key cache warm, the names table never kept (every key through the LRU cache and the length
  checks, as before the table): what the table saves;
- cold cache: ``snake_case.cache_clear()`` and the names table emptied before every round (the first messages
  after a start);
- uncached: every key converted again (:func:`worker.transform.keycase.convert` in place of the cache, no names
  table).

``--idle-ms N`` adds two figures, the cached transform in slices of 1000 messages (a drain's batch) back to back, and
with the CPU idle for N ms before each slice (``time.sleep``, as a drain waits for CleverTap's answer): the same
work costs more after an idle spell (cold caches, a vCPU woken; other processes ran meanwhile), which is why a
single drain's CPU per message grows with CleverTap's latency (``bench_drain.py --latency-ms``).

Rates are per second of this process's CPU time (what one core does, on a machine shared with other
work) and, beside them, per second of wall time. Rounds are interleaved and the best of each is shown;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import worker.transform.values  # noqa: E402
from worker.core.destinations import Destination  # noqa: E402
from worker.transform.keycase import convert, snake_case  # noqa: E402
from worker.transform.records import TransformStats, transform  # noqa: E402


def stamp(i: int) -> str:
    return f"2026-11-28T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"


def identify(i: int) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": f"user-{i}",
        "anonymousId": f"anon-{i:08x}",
        "messageId": f"m-{i}",
        "timestamp": stamp(i),
        "receivedAt": stamp(i),
        "traits": {
            "name": f"User {i}",
            "email": f"user{i}@example.com",
            "phone": f"+1 415 555 {i % 10000:04d}",
            "gender": "female" if i % 2 else "male",
            "birthday": "1990-05-17",
            "avatar": f"https://cdn.example.com/a/{i}.png",
            "firstName": "Ada",
            "lastName": "Lovelace",
            "plan": "pro",
            "createdAt": "2024-01-05T10:00:00Z",
            "companyName": "Acme Inc",
            "industry": "Software",
            "employees": 120 + i % 50,
            "isPaid": i % 3 == 0,
            "favouriteColors": ["red", "green"],
        },
        "context": {"library": {"name": "analytics-python", "version": "2.3.2"}, "ip": "10.0.0.1"},
    }


def track(i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": f"user-{i}",
        "anonymousId": f"anon-{i:08x}",
        "event": "Video Played",
        "timestamp": stamp(i),
        "properties": {
            "videoId": f"v{i}",
            "title": "Introduction to relays",
            "durationSeconds": 312,
            "position": i % 312,
            "quality": "1080p",
            "autoPlay": False,
            "Playlist Name": "Getting started",
            "utm.source": "newsletter",
            "sessionID": f"s-{i}",
            "volume": 0.8,
        },
        "context": {"device": {"type": "android", "token": f"fcm-{i}"}, "os": {"name": "Android"}},
    }


def order(i: int) -> dict[str, Any]:
    products = [
        {"product_id": f"p{i}-{n}", "sku": f"SKU-{n}", "name": "Widget", "price": 9.99 + n, "quantity": n + 1}
        for n in range(3)
    ]
    return {
        "type": "track",
        "userId": f"user-{i}",
        "event": "Order Completed",
        "timestamp": stamp(i),
        "properties": {
            "order_id": f"o-{i}",
            "total": 45.97,
            "revenue": 40.0,
            "shipping": 5.97,
            "currency": "USD",
            "coupon": "WELCOME",
            "products": products,
        },
    }


def page(i: int) -> dict[str, Any]:
    return {
        "type": "page",
        "anonymousId": f"anon-{i:08x}",
        "name": "Pricing",
        "category": "Marketing",
        "timestamp": stamp(i),
        "properties": {"url": "https://example.com/pricing", "path": "/pricing", "referrer": "", "title": "Pricing"},
    }


def screen(i: int) -> dict[str, Any]:
    return {
        "type": "screen",
        "userId": f"user-{i}",
        "anonymousId": f"anon-{i:08x}",
        "name": "Home",
        "timestamp": stamp(i),
        "properties": {"variation": "blue", "tabIndex": 0},
    }


def mix(count: int) -> list[dict[str, Any]]:
    makers = (identify, track, order, page, screen)
    return [makers[i % len(makers)](i) for i in range(count)]


def measure(messages: list[dict[str, Any]], before: Callable[[], None]) -> tuple[float, float]:
    """Messages per second of CPU time (this process only: fair on a shared machine) and of wall time."""
    destination = Destination(account_id="bench")
    stats = TransformStats()
    before()
    gc.disable()
    cpu, wall = time.process_time(), time.perf_counter()
    for message in messages:
        transform(message, destination, 1.8e9, stats)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    gc.enable()
    return len(messages) / cpu, len(messages) / wall


def measure_sliced(messages: list[dict[str, Any]], idle_s: float, slice_size: int = 1000) -> tuple[float, float]:
    """:func:`measure` in slices of ``slice_size``, the CPU idle for ``idle_s`` before each (CPU time only counted)."""
    destination = Destination(account_id="bench")
    stats = TransformStats()
    gc.disable()
    cpu = 0.0
    for start in range(0, len(messages), slice_size):
        if idle_s:
            time.sleep(idle_s)
        began = time.process_time()
        for message in messages[start : start + slice_size]:
            transform(message, destination, 1.8e9, stats)
        cpu += time.process_time() - began
    gc.enable()
    return len(messages) / cpu, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-ms", type=float, default=0.0, help="also: slices of 1000, idle this long before each")
    args = parser.parse_args()
    messages = mix(args.messages)

    values = worker.transform.values
    names, longest = values._NAMES, values.MAX_NAME_KEY

    def no_table() -> None:  # (no key is short enough to be kept: the table stays empty)
        values.snake_case = snake_case
        values._NAMES, values.MAX_NAME_KEY = {}, -1

    def uncached() -> None:
        no_table()
        values.snake_case = convert  # type: ignore[assignment]

    def cached() -> None:
        values.snake_case = snake_case
        values._NAMES, values.MAX_NAME_KEY = names, longest

    def cold() -> None:
        cached()
        snake_case.cache_clear()
        names.clear()

    best = {"cached": (0.0, 0.0), "no names table": (0.0, 0.0), "cold cache": (0.0, 0.0), "uncached": (0.0, 0.0)}
    measure(messages[:2000], cached)  # warm the interpreter and the cache
    variants = (("cached", cached), ("no names table", no_table), ("cold cache", cold), ("uncached", uncached))
    for _ in range(args.rounds):
        for name, before in variants:
            rate = measure(messages, before)
            best[name] = max(best[name], rate)
        if args.idle_ms:
            cached()
            for name, idle_s in (("slices", 0.0), ("idle first", args.idle_ms / 1000)):
                best[name] = max(best.get(name, (0.0, 0.0)), measure_sliced(messages, idle_s))
    cached()

    print(f"transform, {args.messages} messages (identify 15 traits, track 10 props, Order Completed 3 products,")
    print(f"page, screen, in equal parts), best of {args.rounds} rounds, one core, Python {sys.version.split()[0]}")
    print("                  per CPU second       per wall second")
    for name, (cpu, wall) in best.items():
        walled = f"{wall:>10,.0f} msg/s" if wall else "(slices of 1000, back to back)"
        if name == "idle first":
            walled = f"(slices of 1000, {args.idle_ms:g} ms idle before each)"
        print(f"  {name:<14} {cpu:>10,.0f} msg/s {1e6 / cpu:6.2f} µs   {walled}")
    print(f"  ratio cached / uncached (CPU): {best['cached'][0] / best['uncached'][0]:.2f}x")
    print(f"  ratio cached / no names table (CPU): {best['cached'][0] / best['no names table'][0]:.2f}x")


if __name__ == "__main__":
    main()
