"""Message validation per message, in one run: ``parse`` (plain checks) vs the pydantic models it replaced.

Run: ``.venv/bin/python tests/bench/bench_messages.py [--messages 20000] [--rounds 5]``

Both check the same messages in the same process, rounds interleaved, the best round of each shown (CPU
time of this process, so a loaded machine changes little): the ~300-byte track of ``bench_ingest.py`` (what
``/v1/batch`` carries), and the golden inputs of tests/transform (every call type, valid and not).
The models' side is tests/pydantic_messages.py, the oracle the equivalence tests use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

from bench_ingest import message  # noqa: E402
from pydantic_messages import model_parse  # noqa: E402

from worker.core.errors import MessageError  # noqa: E402
from worker.core.messages import parse  # noqa: E402


def cpu_per_message(check: Callable[..., Any], messages: list[Any]) -> float:
    """CPU seconds per message of ``check`` over ``messages`` (a rejection counts as a check)."""
    started = time.process_time()
    for raw in messages:
        with contextlib.suppress(MessageError):
            check(raw)
    return (time.process_time() - started) / len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per round and corpus")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of each is shown")
    args = parser.parse_args()
    golden = [json.loads(p.read_text())["message"] for p in sorted((ROOT / "tests/transform/golden").glob("*.json"))]
    corpora = {
        "track ~300 B (as /v1/batch carries)": [message(i) for i in range(args.messages)],
        f"golden inputs ({len(golden)}, all call types)": [golden[i % len(golden)] for i in range(args.messages)],
    }
    print(f"message validation: {args.messages} messages per corpus x {args.rounds} rounds, CPU time, best round")
    for name, messages in corpora.items():
        best = {"pydantic models (before)": float("inf"), "parse, plain checks (now)": float("inf")}
        for _ in range(args.rounds):
            best["pydantic models (before)"] = min(
                best["pydantic models (before)"], cpu_per_message(model_parse, messages)
            )
            best["parse, plain checks (now)"] = min(best["parse, plain checks (now)"], cpu_per_message(parse, messages))
        before, now = best.values()
        print(f"  {name}:")
        for label, seconds in best.items():
            print(f"    {label:28} {seconds * 1e6:6.2f} us/message")
        print(f"    {'before / now':28} {before / now:6.2f} x")


if __name__ == "__main__":
    main()
