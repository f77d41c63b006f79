"""Every process refuses another partition count than Redis's: ingest, the worker, the operator commands."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis
from ingest_process import CTRELAY, DESTINATIONS, running_ingest
from typer.testing import CliRunner

from worker.cli.main import app
from worker.core.keys import Keys

pytestmark = pytest.mark.integration


def env_for(redis_url: str, prefix: str, tmp_path: Path, partitions: int) -> dict[str, str]:
    destinations = tmp_path / "destinations.toml"
    destinations.write_text(DESTINATIONS)
    return {
        "REDIS_URL": redis_url,
        "CTRELAY_REDIS_PREFIX": prefix,
        "CTRELAY_PARTITIONS": str(partitions),
        "CTRELAY_DESTINATIONS": str(destinations),
    }


def test_processes_refuse_another_count(redis_client: redis.Redis, redis_url: str, prefix: str, tmp_path: Path) -> None:
    redis_client.set(Keys(prefix).partitions(), 8)
    env = env_for(redis_url, prefix, tmp_path, 4)

    worker = subprocess.run([CTRELAY, "worker"], env=dict(os.environ, **env), capture_output=True, timeout=60)
    assert worker.returncode != 0
    assert b"laid out in 8 partitions" in worker.stderr + worker.stdout

    refused = pytest.raises(RuntimeError, match="laid out in 8 partitions")  # ingest exits at start-up
    with refused, running_ingest(redis_url, prefix, tmp_path, {"CTRELAY_PARTITIONS": "4"}):
        pass

    for command in (["status"], ["dlq", "stats"]):
        result = CliRunner().invoke(app, command, env=env)
        assert result.exit_code == 2, (command, result.output)
        assert "laid out in 8 partitions" in result.output

    result = CliRunner().invoke(app, ["partitions"], env=env)
    assert (result.exit_code, result.output.strip()) == (0, "8")
    result = CliRunner().invoke(app, ["partitions", "--set", "4"], env=env)  # the queue is empty
    assert result.exit_code == 0, result.output
    assert redis_client.get(Keys(prefix).partitions()) == b"4"
    assert CliRunner().invoke(app, ["status"], env=env).exit_code == 0


def test_ingest_with_the_stored_count_starts(
    redis_client: redis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    with running_ingest(redis_url, prefix, tmp_path, {"CTRELAY_PARTITIONS": "16"}):
        assert redis_client.get(Keys(prefix).partitions()) == b"16"  # stored on first use
