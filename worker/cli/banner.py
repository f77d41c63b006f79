"""What ``ctrelay dev`` prints once everything answers: where the relay listens, what it uses, and commands that
run as printed (each after ``$``: the venv's ``ctrelay`` by absolute path, with the environment it needs)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from worker.core.destinations import Destinations


@dataclass(frozen=True)
class Ports:
    """Where the dev relay listens (all on 127.0.0.1)."""

    ingest: int
    sandbox: int
    metrics: int


def ctrelay_command() -> str:
    """How a shell runs this ``ctrelay``: the console script next to this interpreter (the venv's), by its
    absolute path, else this interpreter with ``-m worker.cli``."""
    script = Path(sys.executable).with_name("ctrelay")
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m worker.cli"


def curl_line(ingest_url: str, write_key: str) -> str:
    """One shell line that sends a track call, as a Segment client would."""
    body = '{"userId":"user-1","event":"Signed Up","properties":{"plan":"pro"}}'
    return f"curl -s -u {write_key}: -H 'content-type: application/json' -d '{body}' {ingest_url}/v1/track"


@dataclass(frozen=True)
class Where:
    """What the banner tells about the Redis and the files in use."""

    redis_url: str
    redis_kind: str
    prefix: str
    destinations: Path
    partitions: int = 16
    routes: tuple[str, ...] = ()  # "write key → where it delivers", one per destination


def command_env(where: Where) -> str:
    """The environment an operator command needs to see this dev relay, as shell assignments."""
    pairs = {
        "REDIS_URL": where.redis_url,
        "CTRELAY_REDIS_PREFIX": where.prefix,
        "CTRELAY_DESTINATIONS": str(where.destinations),
        "CTRELAY_PARTITIONS": str(where.partitions),
    }
    return " ".join(f"{name}={shlex.quote(value)}" for name, value in pairs.items())


PROMPT = "  $ "
"""How the banner marks a command line (each runs as printed; a test runs every one)."""


def banner(ports: Ports, where: Where, write_key: str, roles: list[str]) -> str:
    """What ``ctrelay dev`` prints once everything answers: where things are and how to send a message."""
    ingest = f"http://127.0.0.1:{ports.ingest}"
    sandbox = f"http://127.0.0.1:{ports.sandbox}"
    ctrelay = f"{command_env(where)} {ctrelay_command()}"
    lines = [
        "",
        f"ctrelay dev is running ({', '.join(roles)}). Ctrl-C stops everything.",
        f"  ingest        {ingest}   (Segment clients: host={ingest}, write key {write_key})",
        f"  sandbox       {sandbox}/_sandbox/records   (what CleverTap would have received)",
        f"  metrics       {ingest}/metrics (ingest), http://127.0.0.1:{ports.metrics}/metrics (worker)",
        f"  redis         {where.redis_url} ({where.redis_kind}, key prefix {where.prefix})",
        f"  destinations  {where.destinations}",
        *(f"                {route}" for route in where.routes),
        "",
        "Send a message:",
        f"{PROMPT}{curl_line(ingest, write_key)}",
        "See what the sandbox received:",
        f"{PROMPT}curl -s {sandbox}/_sandbox/records",
        "Look at the queue:",
        f"{PROMPT}{ctrelay} status",
        "Check the destinations' credentials (one read-only call to CleverTap each):",
        f"{PROMPT}{ctrelay} check",
        "",
    ]
    return "\n".join(lines)


def routes(destinations: Destinations, sandbox_url: str) -> tuple[str, ...]:
    """One line per destination: write key → the sandbox, or the CleverTap account and host."""
    found = []
    for key, destination in destinations.items():
        target = "the sandbox" if destination.base_url == sandbox_url else destination.base_url
        found.append(f"{key} → {target} (account {destination.account_id})")
    return tuple(found)
