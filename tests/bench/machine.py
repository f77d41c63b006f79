"""What a benchmark ran on: cores, CPU model, Python, Redis, load average and the date (UTC); and the code of a base
commit, checked out for a side-by-side run (:func:`checkout`)."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def redis_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    for word in out.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return out.stdout.strip() or "unknown"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe() -> dict[str, str]:
    """The machine, as a flat dict of strings (for a report's table)."""
    return {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "cores (nproc)": str(os.cpu_count()),
        "CPU": cpu_model(),
        "Python": platform.python_version(),
        "Redis": redis_version(),
        "load average (1/5/15 min) at the start": load_average(),
    }


def code_version() -> str:
    """The commit measured (``git log -1``), flagged when the tree has uncommitted changes to tracked files."""
    here = Path(__file__).resolve().parent
    try:
        last = subprocess.run(["git", "log", "-1", "--format=%h %cd", "--date=iso"], capture_output=True, text=True,
                              cwd=here, timeout=10, check=False).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=10, check=False).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return last + (" (with uncommitted changes in the tree)" if dirty else "")


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """``rev`` in a temporary ``git worktree`` of this repository, removed afterwards (the base side of a benchmark
    that compares two trees in one run)."""
    root = Path(__file__).resolve().parents[2]
    scratch = Path(tempfile.mkdtemp(prefix="bench-base-"))
    path = scratch / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), rev], cwd=root, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=root, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
