"""A real ``ctrelay ingest`` process for tests, and readers of what it wrote to the streams."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from worker.cli.embedded import free_port, stop_process
from worker.core.keys import Envelope, Keys

ROOT = Path(__file__).resolve().parents[1]
CTRELAY = str(Path(sys.executable).parent / "ctrelay")

DESTINATIONS = """
[[destinations]]
write_key = "wk_one"
account_id = "ACC-ONE"
passcode = "pass-one"

[[destinations]]
write_key = "wk_two"
account_id = "ACC-TWO"
passcode = "pass-two"

[[destinations]]
write_key = "wk_hook"
account_id = "ACC-HOOK"
passcode = "pass-hook"
webhook_secret = "hook-secret"
"""


@dataclass
class Ingest:
    """A running ingest process: its base URL and the prefix of its keys."""

    url: str
    prefix: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kw)


@contextlib.contextmanager
def running_ingest(
    redis_url: str, prefix: str, workdir: Path, env: dict[str, str] | None = None, workers: int = 1
) -> Iterator[Ingest]:
    """Start ``ctrelay ingest`` on a free port; wait until it answers /healthz; stop it afterwards."""
    destinations = workdir / "destinations.toml"
    destinations.write_text(DESTINATIONS)
    port = free_port()
    environment = dict(os.environ, REDIS_URL=redis_url, CTRELAY_REDIS_PREFIX=prefix)
    environment |= {"CTRELAY_DESTINATIONS": str(destinations), "CTRELAY_LOG_FORMAT": "json"}
    environment |= env or {}
    command = [CTRELAY, "ingest", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    log = (workdir / "ingest.log").open("wb")
    process = subprocess.Popen(command, env=environment, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ingest exited: {(workdir / 'ingest.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("ingest did not answer /healthz within 30 s")
            time.sleep(0.1)
        yield Ingest(url=url, prefix=prefix, process=process, log=workdir / "ingest.log")
    finally:
        stop_process(process, timeout_s=10)
        log.close()


def queued(client: redis.Redis, prefix: str, partitions: int = 16) -> list[Envelope]:
    """Every envelope in the prefix's partition streams."""
    keys = Keys(prefix)
    found = []
    for partition in range(partitions):
        for _, fields in client.xrange(keys.stream(partition)):
            found.append(Envelope.decode(fields))
    return found
