"""The chaos test's reconciliation and its report.

Every messageId ingest accepted (answered 200) must end in exactly one expected place:

- ``group``: skipped by rule (no record, no dead letter);
- ``Bad Event`` (the sandbox answers 528): dead-lettered ``rejected`` with code 528;
- ``Poison Pill`` (its request is a 400 as a whole): dead-lettered ``rejected`` with HTTP status 400, alone;
- everything else: delivered (its record at the sandbox, in the right account), or dead-lettered
  ``rejected`` with code 512 if the controller injected that permanent code.

Anything else is *missing* (nowhere) or *wrong* (somewhere it must not be). Extra copies at the sandbox
are duplicates; each is traced, through the controller's samples of the sandbox's record count, to the
fault under way when its first copy was stored (``unexplained`` when none was).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chaos_faults import PERMANENT_CODE, TIMEOUT_MS, Event, Sample
from chaos_load import BAD_CODE, record_mid

from worker.store.letters import Letter

UPLOAD_TIMEOUT_S = 2.0


@dataclass
class Reconciliation:
    accepted: int = 0
    delivered: int = 0
    skipped: int = 0
    dead: Counter[str] = field(default_factory=Counter)  # "reason code/status" → messages
    missing: list[str] = field(default_factory=list)
    lost_in_fsync_window: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    delivered_and_dead: list[str] = field(default_factory=list)
    duplicates: Counter[str] = field(default_factory=Counter)  # cause → extra copies
    duplicate_examples: dict[str, list[str]] = field(default_factory=dict)
    by_kind: Counter[str] = field(default_factory=Counter)


def reconcile(
    *,
    accepted: dict[str, tuple[str, str, dict[str, Any]]],  # messageId → (write key, kind, message)
    incarnations: list[list[dict[str, Any]]],
    accounts: dict[str, str],  # write key → account id
    letters: Iterable[Letter],
    events: list[Event],
    samples: list[Sample],
    accepted_at: dict[str, float],
    fsync: str,
) -> Reconciliation:
    result = Reconciliation(accepted=len(accepted))
    copies: Counter[str] = Counter()
    first: dict[str, tuple[int, int]] = {}
    wrong_account = 0
    for incarnation, records in enumerate(incarnations):
        for item in records:
            mid = record_mid(item["record"])
            if mid is None or mid not in accepted:
                continue
            copies[mid] += 1
            first.setdefault(mid, (incarnation, int(item["seq"])))
            wrong_account += item["account_id"] != accounts[accepted[mid][0]]
    if wrong_account:
        result.wrong.append(f"{wrong_account} records at the wrong account")
    by_mid = {str(letter.message.get("messageId")): letter for letter in letters}
    permanent_injected = any(e.kind == "record_permanent" for e in events)
    for mid, (write_key, kind, _) in accepted.items():
        result.by_kind[kind] += 1
        letter = by_mid.get(mid)
        delivered = copies[mid] > 0
        if letter is not None and letter.write_key != write_key:
            result.wrong.append(f"{mid}: letter under write key {letter.write_key}")
        if kind == "group":
            if delivered or letter is not None:
                result.wrong.append(f"{mid}: group delivered or dead-lettered")
            else:
                result.skipped += 1
            continue
        if kind in ("bad_event", "poison"):
            want = ("rejected", BAD_CODE, 200) if kind == "bad_event" else ("rejected", None, 400)
            if delivered:
                result.wrong.append(f"{mid}: {kind} delivered")
            elif letter is None:
                result.missing.append(mid)
            elif (letter.reason, letter.code, letter.status) != want:
                result.wrong.append(f"{mid}: {kind} dead-lettered {letter.reason} {letter.code} {letter.status}")
            else:
                result.dead[_label(letter)] += 1
            continue
        if delivered:
            result.delivered += 1
            if letter is not None:
                cause = _cause(first[mid], events, samples)
                result.delivered_and_dead.append(f"{mid} ({kind}): also {_label(letter)}; first copy: {cause}")
        elif letter is None:
            result.missing.append(mid)
        elif letter.reason == "rejected" and letter.code == PERMANENT_CODE and permanent_injected:
            result.dead[_label(letter)] += 1
        else:
            result.wrong.append(f"{mid}: {kind} dead-lettered {_label(letter)} ({letter.error})")
    if fsync != "always":  # appendfsync everysec: a SIGKILLed Redis may lose up to ~1 s of acknowledged writes
        kills = [e.start for e in events if e.kind == "restart_redis"]
        lost = {m for m in result.missing if any(k - 2.0 <= accepted_at.get(m, -1e9) <= k for k in kills)}
        result.lost_in_fsync_window = sorted(lost)
        result.missing = [m for m in result.missing if m not in lost]
    for mid, count in copies.items():
        if count > 1:
            cause = _cause(first[mid], events, samples)
            result.duplicates[cause] += count - 1
            result.duplicate_examples.setdefault(cause, [])
            if len(result.duplicate_examples[cause]) < 5:
                result.duplicate_examples[cause].append(mid)
    return result


def _label(letter: Letter) -> str:
    detail = f"code {letter.code}" if letter.code is not None else f"HTTP {letter.status}"
    return f"{letter.reason} ({detail})"


def _stored_between(where: tuple[int, int], samples: list[Sample]) -> tuple[float, float]:
    """When the record at (incarnation, seq) was stored: after one sample, no later than the next."""
    incarnation, seq = where
    before = 0.0
    for sample in samples:
        if sample.incarnation < incarnation or (sample.incarnation == incarnation and sample.stored <= seq):
            before = sample.at
        elif sample.incarnation == incarnation:
            return before, sample.at
    return before, float("inf")


def _cause(where: tuple[int, int], events: list[Event], samples: list[Sample]) -> str:
    low, high = _stored_between(where, samples)
    windows = []
    for event in events:
        end = event.start if event.end is None else event.end
        if event.kind == "timeouts" and event.detail.get("timeout_accepts"):
            windows.append((0, "timeout: stored by CleverTap, answer lost", event.start, end + TIMEOUT_MS / 1000 + 1))
        elif event.kind == "kill_worker":
            windows.append((1, "worker SIGKILLed between upload and commit", event.start - UPLOAD_TIMEOUT_S - 1,
                            event.start + 0.5))  # fmt: skip
        elif event.kind == "restart_redis":
            windows.append((2, "Redis restarted between upload and commit", event.start - UPLOAD_TIMEOUT_S - 1, end))
        elif event.kind == "exited_by_itself":
            windows.append((3, "a process exited by itself", event.start - 10, event.start))
    for _, cause, start, end in sorted(windows):
        if start <= high and low <= end:
            return cause
    return "unexplained"


def markdown(
    title: str,
    *,
    params: dict[str, Any],
    machine: dict[str, Any],
    senders: dict[str, Any],
    result: Reconciliation,
    events: list[Event],
    sandbox_stats: dict[str, Any],
    extra: dict[str, Any],
) -> str:
    """The report: parameters, machine, figures, outcomes, duplicates with causes, faults and their timeline."""
    faults = Counter(e.kind for e in events if e.kind != "exited_by_itself")
    exits = Counter(f"{e.detail['process'].split()[0]}: {e.detail.get('why', '')}" for e in events
                    if e.kind == "exited_by_itself")  # fmt: skip
    lines = [f"# {title}", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in {**params, **machine}.items()]
    lines += ["", "## Figures", "", "| figure | value |", "|---|---|"]
    figures = {
        **senders,
        "accepted by kind": dict(sorted(result.by_kind.items())),
        "delivered (record at the sandbox)": result.delivered,
        "skipped by rule (group)": result.skipped,
        "dead-lettered, by reason": dict(sorted(result.dead.items())),
        "**missing**": len(result.missing),
        "lost in the fsync window (accepted ≤ 2 s before a Redis SIGKILL; everysec only)": len(
            result.lost_in_fsync_window
        ),
        "**wrong place**": len(result.wrong),
        "delivered and also dead-lettered": len(result.delivered_and_dead),
        "duplicates at the sandbox (extra copies)": sum(result.duplicates.values()),
        "duplicates by cause": dict(result.duplicates.most_common()),
        "faults injected": dict(faults.most_common()),
        "processes that exited by themselves (restarted by the controller, as a supervisor would)": sum(exits.values()),
        "… and why": dict(exits.most_common()) or "none",
        **extra,
    }
    lines += [f"| {k} | {v} |" for k, v in figures.items()]
    verdict = "PASS" if not result.missing and not result.wrong else "FAIL"
    lines += ["", f"**{verdict}**: {len(result.missing)} missing, {len(result.wrong)} in a wrong place.", ""]
    for name, items in (("Missing", result.missing), ("Wrong", result.wrong),
                        ("Delivered and also dead-lettered", result.delivered_and_dead)):  # fmt: skip
        if items:
            lines += [f"## {name} (first 20 of {len(items)})", "", *[f"- {i}" for i in items[:20]], ""]
    if result.duplicate_examples:
        lines += ["## Duplicate examples (messageIds)", ""]
        lines += [f"- {cause}: {', '.join(mids)}" for cause, mids in result.duplicate_examples.items()] + [""]
    lines += ["## Sandbox counters (all incarnations)", "", "```", _compact(sandbox_stats), "```", ""]
    lines += [
        "## Fault timeline (seconds since the start)",
        "",
        "| start | end | fault | detail |",
        "|---|---|---|---|",
    ]
    for e in events:
        detail = {k: v for k, v in e.detail.items() if k != "log"}
        end = "" if e.end is None else f"{e.end:.1f}"
        lines.append(f"| {e.start:.1f} | {end} | {e.kind} | {detail or ''} |")
    logs = [e for e in events if e.kind == "exited_by_itself"]
    for e in logs:
        lines += [
            "",
            f"### {e.detail['process']} exited by itself at {e.start:.1f}s",
            "",
            "```",
            e.detail["log"],
            "```",
        ]
    return "\n".join(lines) + "\n"


def _compact(stats: dict[str, Any]) -> str:
    keep = ("requests", "uploads", "records", "status_counts", "unprocessed_codes", "too_many_concurrent", "timeouts",
            "abandoned", "dropped_connections", "max_concurrency_by_account")  # fmt: skip
    return "\n".join(f"{k}: {stats.get(k)}" for k in keep)


def sum_stats(all_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of several sandbox incarnations added up (maxima kept as maxima)."""
    total: dict[str, Any] = {}
    for stats in all_stats:
        for key, value in stats.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                total[key] = max(total.get(key, 0), value) if key.startswith("max") else total.get(key, 0) + value
            elif isinstance(value, dict):
                merged = Counter(total.get(key, {}))
                for k, v in value.items():
                    merged[k] = max(merged[k], v) if key.startswith("max") else merged[k] + v
                total[key] = dict(merged)
    return total
