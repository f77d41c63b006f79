"""What the CORS middleware costs a request: the ASGI middleware around a trivial app, against the bare app.

Run: ``.venv/bin/python tests/bench/bench_cors.py [--requests 200000]``

A ``POST /v1/track`` scope with the headers a client sends, with and without ``Origin``, under the default
(any origin) and under a list of origins. Figures are microseconds of this process's CPU time per request
(best of 3 rounds); compare them with ingest's ~285 µs of CPU per single call (tests/bench/RESULTS.md).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ingest.cors import CORS, parse_origins  # noqa: E402


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"success":true}'})


async def ignore(_: Any) -> None:
    return None


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


def scope(origin: bool) -> dict[str, Any]:
    headers = [(b"host", b"relay"), (b"content-type", b"text/plain"), (b"authorization", b"Basic eDo=")]
    if origin:
        headers.append((b"origin", b"https://shop.example.com"))
    return {"type": "http", "method": "POST", "path": "/v1/track", "headers": headers}


async def per_request(app: Any, request: dict[str, Any], count: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(count):
            await app(request, receive, ignore)
        best = min(best, (time.process_time() - started) / count * 1e6)
    return best


async def main(count: int) -> None:
    apps = {
        "bare app": bare,
        "CORS, any origin": CORS(bare, parse_origins("*"), []),
        "CORS, a list": CORS(bare, parse_origins("https://shop.example.com,https://app.example.com"), []),
    }
    print(f"CORS middleware: {count} requests x 3 rounds, best round, CPU time")
    for label, app in apps.items():
        for origin in (False, True):
            cost = await per_request(app, scope(origin), count)
            print(f"{label:18} {'with' if origin else 'without'} Origin  {cost:5.2f} us/request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().requests))
