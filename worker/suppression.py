"""A deleted user's suppression as a value: the fields it covers and how it is stored (pure: no Redis).

Ingest (:mod:`ingest.routes`, on accepting a ``Delete User`` track), the worker (:mod:`worker.deletion`) and
the operator's commands (:mod:`worker.users`) all write suppressions in this form: per destination, a hash
field ``i:<identity>`` or ``g:<guid>`` → ``"<until>|<at>|<via>"``, and the field ``v``, a version raised
(``HINCRBY``) after every change, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.destinations import Destination
from worker.transform import Delete, transform

VERSION_FIELD = "v"
"""A counter in each destination's hash, raised by every change, so that workers re-read the hash only then."""


def fields_of(record: Mapping[str, Any]) -> list[str]:
    """The suppression fields a record touches: ``i:<identity>``, ``g:<objectId>`` (a deletion: its lists)."""
    if record.get("type") == "delete":
        return [f"i:{v}" for v in record.get("identity") or ()] + [f"g:{v}" for v in record.get("guid") or ()]
    found = []
    identity, object_id = record.get("identity"), record.get("objectId")
    if identity is not None:
        found.append(f"i:{identity}")
    if object_id is not None:
        found.append(f"g:{object_id}")
    return found


@dataclass(frozen=True, slots=True)
class Suppression:
    """One suppressed identifier of one destination."""

    field: str
    until: float
    at: float
    via: str

    @property
    def kind(self) -> str:
        return "identity" if self.field.startswith("i:") else "guid"

    @property
    def value(self) -> str:
        return self.field[2:]

    def encode(self) -> str:
        return f"{self.until!r}|{self.at!r}|{self.via}"

    @classmethod
    def decode(cls, field: str, raw: bytes | str) -> Suppression:
        text = raw.decode() if isinstance(raw, bytes) else raw
        until, at, via = [*text.split("|", 2), "", ""][:3]
        return cls(field, float(until), float(at or 0), via)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.value, "until": self.until, "at": self.at, "via": self.via}


def suppression_fields(
    destination: Destination, messages: Iterable[Mapping[str, Any]], now: float, window_s: float, via: str = "track"
) -> dict[str, str]:
    """The hash fields (and their value) that suppress the users of the deletions among ``messages``."""
    value = Suppression("", now + window_s, now, via).encode()
    fields: dict[str, str] = {}
    for message in messages:
        result = transform(message, destination, now)
        if isinstance(result, Delete):
            fields.update(dict.fromkeys(fields_of(result.record()), value))
    return fields
