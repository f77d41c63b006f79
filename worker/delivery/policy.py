"""The retry/dead-letter decision, in one place: pure functions of a report, the attempts and the clock.

:func:`classify` reads an upload :class:`~worker.delivery.clevertap.Report` into one :class:`Verdict` per
record, or :data:`SPLIT` when CleverTap rejected the request as a whole (a 4xx other than
401/403/429 for more than one record: the caller halves the batch to isolate the culprits).
:func:`decide` turns the verdicts of one message's records into its outcome: delivered, a dead
letter (with reason, code, error and status), or a retry of the records still failing, due after
:func:`backoff` (exponential with full jitter, ``Retry-After`` honoured), until the retry window
of the message's first failure has passed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from worker.delivery.clevertap import Report

Kind = Literal["delivered", "transient", "permanent", "auth"]
RETRIED_CODES: Final = frozenset({555})
"""Per-record codes that are transient (555: miscellaneous server error); every other code is permanent."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happened to one record. ``reason`` labels retries in metrics (throttled, server_error, ...)."""

    kind: Kind
    reason: str = ""
    status: int | None = None
    code: int | None = None
    error: str = ""
    retry_after: float | None = None


DELIVERED: Final = Verdict("delivered")


class _Split:
    def __repr__(self) -> str:
        return "SPLIT"


SPLIT: Final = _Split()
"""The request was rejected as a whole: split it to find the records CleverTap refuses."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry settings (see :class:`worker.core.settings.Settings`)."""

    window_s: float = 14_400.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 300.0
    auth_pause_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Delivered:
    """Every record of the message was delivered (or dropped as an already-sent token)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The message goes to the dead-letter store with this reason."""

    reason: str
    status: int | None = None
    code: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    """The records at ``pending`` (indices into the message's records) are retried at ``due``."""

    due: float
    pending: tuple[int, ...]
    reason: str
    status: int | None = None
    code: int | None = None
    error: str = ""


Outcome = Delivered | DeadLetter | Retry


def _transient_reason(report: Report) -> str:
    if report.status is None:
        return "timeout" if report.error == "timeout" else "network"
    if report.status == 429:
        return "throttled"
    if report.status >= 500:
        return "server_error"
    return "bad_response"


def classify(report: Report) -> list[Verdict] | _Split:
    """One verdict per record of the request, in order; or :data:`SPLIT`."""
    status, count = report.status, report.count
    batch: Verdict | None = None
    if status is None or status == 429 or status >= 500:
        batch = Verdict("transient", _transient_reason(report), status, None, report.error, report.retry_after)
    elif status in (401, 403):
        batch = Verdict("auth", "auth", status, None, report.error or "invalid credentials")
    elif 400 <= status < 500:
        if count > 1:
            return SPLIT
        batch = Verdict("permanent", "rejected", status, None, report.error or f"HTTP {status}")
    elif not 200 <= status < 300 or report.body_status is None:
        batch = Verdict("transient", "bad_response", status, None, report.error or "unreadable response")
    elif report.body_status == "fail" and not report.failures and not report.unmatched:
        # a request-level failure told in the body (e.g. {"status": "fail", "code": 401}): read its code as the status
        code = report.body_code
        if code in (401, 403):
            batch = Verdict("auth", "auth", code, None, report.error or "invalid credentials")
        elif code == 429:
            batch = Verdict("transient", "throttled", code, None, report.error, report.retry_after)
        else:
            batch = Verdict("transient", "bad_response", status, code, report.error or "upload failed")
    if batch is not None:
        return [batch] * count
    # 2xx with a body: every record not listed in `unprocessed` was delivered.
    unknown = Verdict("transient", "bad_response", status, None, "unprocessed records could not be matched")
    fallback = unknown if report.unmatched else DELIVERED
    verdicts: list[Verdict] = []
    for index in range(count):
        failure = report.failures.get(index)
        if failure is None:
            verdicts.append(fallback)
        elif failure.code is None or failure.code in RETRIED_CODES:
            verdicts.append(Verdict("transient", "record_error", status, failure.code, failure.error))
        else:
            verdicts.append(Verdict("permanent", "rejected", status, failure.code, failure.error))
    return verdicts


def all_delivered(report: Report) -> bool:
    """Whether :func:`classify` answers :data:`DELIVERED` for every record of ``report`` (a 2xx with a body, not a
    request-level ``fail``, nothing ``unprocessed``): the common answer, which the batch's fast path takes without
    a verdict per record."""
    status = report.status
    return (
        status is not None
        and 200 <= status < 300
        and report.body_status is not None
        and report.body_status != "fail"
        and not report.failures
        and not report.unmatched
    )


def backoff(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (1, 2, ...): full jitter under min·2^(attempt−1), capped at max."""
    ceiling = min(policy.backoff_max_s, policy.backoff_min_s * 2.0 ** min(max(attempt - 1, 0), 62))
    return rng.uniform(0.0, ceiling)


def decide(
    verdicts: Sequence[Verdict],
    *,
    attempts: int,
    first_failure: float | None,
    now: float,
    policy: RetryPolicy,
    rng: random.Random,
) -> Outcome:
    """The outcome of one message whose records got ``verdicts`` on attempt number ``attempts``.

    A permanent verdict on any record dead-letters the message (``rejected``). Otherwise the
    failing records are retried until ``first_failure + window``; then the message becomes
    ``auth_failed`` (when the last failure was a 401/403) or ``retries_exhausted``.
    """
    permanent = next((v for v in verdicts if v.kind == "permanent"), None)
    if permanent is not None:
        return DeadLetter("rejected", permanent.status, permanent.code, permanent.error)
    pending = tuple(i for i, v in enumerate(verdicts) if v.kind in ("transient", "auth"))
    if not pending:
        return Delivered()
    last = verdicts[pending[0]]
    auth = any(verdicts[i].kind == "auth" for i in pending)
    first = now if first_failure is None else first_failure
    deadline = first + policy.window_s
    if now >= deadline:
        return DeadLetter("auth_failed" if auth else "retries_exhausted", last.status, last.code, last.error)
    if auth:
        delay = policy.auth_pause_s
    else:
        hinted = max((verdicts[i].retry_after or 0.0) for i in pending)
        delay = max(backoff(attempts, policy, rng), hinted)
    return Retry(
        min(now + delay, deadline), pending, "auth" if auth else last.reason, last.status, last.code, last.error
    )
