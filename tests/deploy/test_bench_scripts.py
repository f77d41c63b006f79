"""The benchmark scripts still load against today's code (a renamed module or function breaks them silently
otherwise: they are not run by the suite). Each is loaded in its own interpreter, its ``main`` not run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
LOAD = (
    "import importlib.util, sys\n"
    "path, folder = sys.argv[1:3]\n"
    "sys.argv = [path]\n"
    "sys.path.insert(0, folder)\n"
    "spec = importlib.util.spec_from_file_location('bench_script', path)\n"
    "module = sys.modules['bench_script'] = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
)


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda path: path.name)
def test_a_benchmark_script_loads(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOAD, str(script), str(BENCH)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
