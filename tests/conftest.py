"""Shared fixtures: the Redis the integration tests use, a per-test key prefix, and the processes of the
end-to-end tests (a relay per test, an ingest per module).

Redis: the one at ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) when it answers PING, else an embedded
one started for the session (:func:`worker.cli.embedded.ensure_redis`): the ``redis-server`` binary when it is
on the PATH, else an in-process fakeredis. The pytest header says which one the run uses, and the summary at
the end which one it used.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from delivery_e2e import Relay
from ingest_process import Ingest, running_ingest

from worker.cli.embedded import RedisHandle, answers, ensure_redis
from worker.core.keys import Keys

_handle: RedisHandle | None = None
_PREFIXES: set[str] = set()
"""Every prefix the ``prefix`` fixture gave this session: their keys are deleted when the session's Redis is let go
(tests that write through a client of their own, async ones included, leave none behind in a shared Redis)."""


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def configured_redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture(scope="session")
def redis_handle() -> Iterator[RedisHandle]:
    with ensure_redis(configured_redis_url()) as handle:
        global _handle
        _handle = handle
        yield handle
        client = redis.Redis.from_url(handle.url)
        with contextlib.suppress(redis.RedisError, OSError):
            doomed = [
                key for key in client.scan_iter(match="test-*", count=1000) if key.split(b":")[0].decode() in _PREFIXES
            ]
            for start in range(0, len(doomed), 500):
                client.delete(*doomed[start : start + 500])
        client.close()


@pytest.fixture(scope="session")
def redis_url(redis_handle: RedisHandle) -> str:
    return redis_handle.url


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so that tests never see each other's keys (deleted at the session's end)."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    _PREFIXES.add(prefix)
    return prefix


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


def delete_keys(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix`` (SCAN, never KEYS)."""
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)


@pytest.fixture
def redis_client(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    """A client on the test Redis; every key under this test's prefix is deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    delete_keys(client, prefix)
    client.close()


@pytest.fixture
def relay(tmp_path: Path, redis_url: str, prefix: str, redis_client: redis.Redis) -> Iterator[Relay]:
    """The real processes of one end-to-end test (:mod:`delivery_e2e`), under this test's prefix; stopped
    afterwards, before ``redis_client`` deletes the prefix's keys."""
    relay = Relay(tmp_path, redis_url, prefix=prefix)
    yield relay
    relay.stop_all()


@pytest.fixture(scope="module")
def ingest_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    """A ``ctrelay ingest`` process (:mod:`ingest_process`) shared by a test module, with a prefix of its own
    whose keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    with running_ingest(redis_url, prefix, tmp_path_factory.mktemp("ingest")) as ingest:
        yield ingest
    client = redis.Redis.from_url(redis_url)
    delete_keys(client, prefix)
    client.close()


@pytest.fixture
def progress(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print one progress line of a long-running test on the terminal now, whatever pytest captures (``-q`` too)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    name = request.node.name

    def say(text: str) -> None:
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line(f"  {name}: {text}")

    return say


def pytest_report_header() -> str:
    """Which Redis this run's tests use: the configured one when it answers now, else the embedded kind."""
    import shutil

    url = configured_redis_url()
    if answers(url):
        return f"ctrelay: Redis for the tests: {url} (REDIS_URL{'' if 'REDIS_URL' in os.environ else ' default'})"
    binary = shutil.which("redis-server")
    kind = f"an embedded redis-server ({binary})" if binary else "an in-process fakeredis (no redis-server on PATH)"
    return f"ctrelay: Redis for the tests: nothing answers at {url}; the tests start {kind}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _handle is not None:
        terminalreporter.write_line(f"ctrelay: the tests used the Redis at {_handle.url} ({_handle.kind})")


@pytest.fixture
def http(ingest_server: Ingest) -> Iterator[httpx.Client]:
    """An HTTP client on the module's ``ctrelay ingest``."""
    with ingest_server.client() as client:
        yield client
