"""A dead letter, as a value: its fields, its deterministic id, its JSON form; and the filter over letters.

Pure (no Redis): :mod:`worker.deadletters` stores letters, :mod:`worker.dlq` operates on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

REASONS = ("invalid_message", "rejected", "retries_exhausted", "auth_failed")
"""Why a message is a dead letter (SPEC §4); ``rejected`` comes with CleverTap's code and error."""


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


@dataclass(frozen=True, slots=True)
class Filter:
    """Which letters an operation applies to. Empty fields match everything; times bound last_failure."""

    reason: str | None = None
    code: int | None = None
    event: str | None = None
    type: str | None = None
    destination: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = None
    ids: tuple[str, ...] = field(default=())

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
