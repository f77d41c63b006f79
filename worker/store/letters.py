"""A dead letter, as a value: its fields, its deterministic id, its JSON form; and the filter over letters.

No Redis here: :mod:`worker.store.deadletters` stores letters, :mod:`worker.ops.deadletters` operates on them.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from worker.core.errors import OperatorError

REASONS = ("invalid_message", "rejected", "retries_exhausted", "auth_failed")
"""Why a message is a dead letter; ``rejected`` comes with CleverTap's code and error."""


def letter_id(write_key: str, message_id: str) -> str:
    """The letter id of a message: 16 hex digits of SHA-256 over (write key, messageId)."""
    return hashlib.sha256(f"{write_key}\n{message_id}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter. Times are epoch seconds; ``status`` is the last HTTP status (None: no response)."""

    id: str
    write_key: str
    message: dict[str, Any]
    reason: str
    code: int | None = None
    error: str = ""
    status: int | None = None
    attempts: int = 1
    first_failure: float = 0.0
    last_failure: float = 0.0

    @classmethod
    def of(
        cls,
        write_key: str,
        message: Mapping[str, Any],
        reason: str,
        *,
        now: float,
        code: int | None = None,
        error: str = "",
        status: int | None = None,
        attempts: int = 1,
        first_failure: float | None = None,
    ) -> Letter:
        """A letter for ``message``, its id derived from (write key, messageId)."""
        message_id = message.get("messageId")
        if not isinstance(message_id, str) or not message_id:
            # ingest always assigns one; a foreign message is identified by its content instead
            message_id = "sha256:" + hashlib.sha256(orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return cls(
            id=letter_id(write_key, message_id),
            write_key=write_key,
            message=dict(message),
            reason=reason,
            code=code,
            error=error,
            status=status,
            attempts=attempts,
            first_failure=now if first_failure is None else first_failure,
            last_failure=now,
        )

    @property
    def type(self) -> str:
        """The Segment call type (``track``, ``identify``, ...), or '' when the message has none."""
        value = self.message.get("type")
        return value if isinstance(value, str) else ""

    @property
    def event(self) -> str | None:
        """The event name of a track call; None for other calls."""
        value = self.message.get("event")
        return value if isinstance(value, str) and self.type == "track" else None

    def to_dict(self) -> dict[str, Any]:
        """The letter as JSON-ready data, with the derived ``type`` and ``event`` (the export format)."""
        return {
            "id": self.id,
            "write_key": self.write_key,
            "reason": self.reason,
            "code": self.code,
            "error": self.error,
            "status": self.status,
            "attempts": self.attempts,
            "first_failure": self.first_failure,
            "last_failure": self.last_failure,
            "type": self.type,
            "event": self.event,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Letter:
        """Read :meth:`to_dict` output back (derived fields ignored); KeyError/TypeError/ValueError if malformed."""
        message = data["message"]
        if not isinstance(message, dict):
            raise TypeError("message: must be an object")
        code, status = data.get("code"), data.get("status")
        return cls(
            id=str(data["id"]),
            write_key=str(data["write_key"]),
            message=message,
            reason=str(data["reason"]),
            code=None if code is None else int(code),
            error=str(data.get("error") or ""),
            status=None if status is None else int(status),
            attempts=int(data.get("attempts", 1)),
            first_failure=float(data["first_failure"]),
            last_failure=float(data["last_failure"]),
        )

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def decode(cls, raw: bytes | str) -> Letter:
        return cls.from_dict(orjson.loads(raw))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_time(value: str | float | None, now: float) -> float | None:
    """A time bound: epoch seconds, an ISO 8601 time (UTC if no zone), or an age (``90s``, ``15m``, ``2h``, ``7d``)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OperatorError(
            f"time {value!r}: expected epoch seconds, an ISO 8601 time (2026-11-28T10:00:00Z) or an age (15m, 2h, 7d)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class Filter(BaseModel):
    """Which letters an operation applies to: the one declaration of the filters. The CLI's options
    (``ctrelay dlq ... --reason ...``), the admin API's query parameters and body fields, and the store's scan all
    come from these fields. Empty fields match everything; ``since``/``until`` bound the last failure and are read
    from epoch seconds, ISO 8601 or an age (against ``now`` in the validation context, else the clock)."""

    model_config = ConfigDict(frozen=True)

    reason: str | None = Field(None, description=f"why it is a dead letter: {', '.join(REASONS)}")
    code: int | None = Field(None, description="CleverTap's per-record code (e.g. 523)")
    event: str | None = Field(None, description="the track's event name")
    type: str | None = Field(None, description="the Segment call type (track, identify, ...)")
    destination: str | None = Field(None, description="the destination's write key")
    since: float | None = Field(None, description="last failure at or after: epoch s, ISO 8601, or an age (2h, 7d)")
    until: float | None = Field(None, description="last failure at or before (same forms as since)")
    limit: int | None = Field(None, ge=0, description="at most this many letters")
    ids: tuple[str, ...] = Field((), description="only these letters")

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        if value is not None and value not in REASONS:
            raise ValueError(f"reason {value!r}: expected one of {', '.join(REASONS)}")
        return value

    @field_validator("since", "until", mode="before")
    @classmethod
    def _time(cls, value: Any, info: ValidationInfo) -> float | None:
        now = info.context.get("now") if isinstance(info.context, dict) else None
        try:
            return parse_time(value, time.time() if now is None else now)
        except OperatorError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _range(self) -> Filter:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since is after until: nothing can match")
        return self

    def matches(self, letter: Letter) -> bool:
        return (
            (self.reason is None or letter.reason == self.reason)
            and (self.code is None or letter.code == self.code)
            and (self.event is None or letter.event == self.event)
            and (self.type is None or letter.type == self.type)
            and (self.destination is None or letter.write_key == self.destination)
            and (self.since is None or letter.last_failure >= self.since)
            and (self.until is None or letter.last_failure <= self.until)
        )


FILTER_FIELDS = tuple(name for name in Filter.model_fields if name != "ids")
"""The filters an operator gives by name (every field but ``ids``)."""


def explain(error: ValidationError) -> str:
    """One line naming each invalid filter and why."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def make_filter(*, now: float, ids: Iterable[str] = (), **options: Any) -> Filter:
    """A :class:`Filter` from an operator's options (times as given: epoch, ISO 8601, an age), checked against
    ``now``; raises :class:`~worker.core.errors.OperatorError` saying what is wrong."""
    try:
        return Filter.model_validate({**options, "ids": tuple(ids)}, context={"now": now})
    except ValidationError as exc:
        raise OperatorError(explain(exc)) from None
