"""A bad destinations file (or bad settings) ends every command with one line ``error: ...`` and exit status 2,
never a traceback: run as an operator runs them, through the ``ctrelay`` console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CTRELAY = str(Path(sys.executable).parent / "ctrelay")

COMMANDS = [
    ["worker"],
    ["ingest", "--port", "0"],
    ["status"],
    ["dlq", "replay", "--all", "--dry-run"],
    ["users", "delete", "--destination", "wk", "--user-id", "u1"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_bad_destinations_file_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str], redis_url: str, prefix: str
) -> None:
    bad = tmp_path / "destinations.toml"
    bad.write_text('[[destinations]]\nwrite_key = "wk"\naccount_id = "ACC"\npasscode = "p"\nregion = "mars"\n')
    env = dict(os.environ, CTRELAY_DESTINATIONS=str(bad), REDIS_URL=redis_url, CTRELAY_REDIS_PREFIX=prefix)
    done = subprocess.run([CTRELAY, *command], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert "region" in lines[0]
    assert "mars" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr


def test_bad_settings_are_one_line_and_exit_2(tmp_path: Path) -> None:
    env = dict(os.environ, CTRELAY_PARTITIONS="many")
    done = subprocess.run([CTRELAY, "worker"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert (
        done.stderr.strip() == "error: settings: partitions: Input should be a valid integer, unable to parse "
        "string as an integer"
    )
