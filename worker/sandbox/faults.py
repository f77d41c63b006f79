"""The sandbox's fault injection: what to break, how often, and the seeded dice that decide it.

Faults are set by flags when the sandbox starts and changed at run time over HTTP
(``POST /_sandbox/faults`` with a partial JSON object: only the keys given change;
``DELETE /_sandbox/faults`` goes back to the start-up values). Every random choice comes from one
``random.Random`` seeded by ``--seed`` (or the ``seed`` key), so that a fault run can be replayed.

What each key does, in the order a request meets them:

- ``outage`` + ``outage_mode``: ``"503"`` answers every call 503 at once; ``"drop"`` sends a status
  line and then closes the connection mid-response (the client sees a network/protocol error).
- ``cap``: concurrent requests per account (CleverTap: 15); one more is answered 429.
- ``latency_ms`` (+ uniform ``jitter_ms``): a request past the cap is answered no sooner than this
  after it came in (the sandbox's own work happens inside it); records are stored when it ends.
- ``timeout_rate`` / ``timeout_ms``: that share of requests is held ``timeout_ms`` (longer than the
  client's timeout). A client that hangs up frees its slot; its records are dropped unless
  ``timeout_accepts`` (then they are stored although the client never saw the answer: the
  "processed but the answer was lost" case that makes duplicates).
- ``error_rates``: ``{"429": 0.1, "500": 0.05}``: that share of requests gets that HTTP status
  (records not stored); ``retry_after_s`` adds a ``Retry-After`` header to injected 429/503.
- ``poison_events``: a request holding an event with one of these ``evtName`` gets 400 as a whole.
- ``event_codes``: ``{"Bad Event": 513}``: events with that name are answered with that code.
- ``record_555_rate``: that share of otherwise valid records is answered 555 (transient).
- ``record_error_rate`` / ``record_error_code``: that share is answered with a permanent code.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

RECORD_ERRORS: dict[int, str] = {
    509: "Event name mandatory",
    512: "Invalid event structure",
    513: "Raised a restricted system event",
    514: "Gender invalid",
    515: "Email invalid",
    516: "Phone number invalid",
    517: "Employment status invalid",
    518: "Education status invalid",
    519: "Marital status invalid",
    520: "Age invalid",
    522: "Event properties limit exceeded",
    523: "Missing identity",
    524: "Data neither event nor profile",
    525: "Timestamp not in UNIX epoch format",
    526: "objectId invalid",
    528: "Discarded event is raised",
    530: "Invalid objectId",
    531: "Invalid token data",
    532: "Token id is not present",
    533: "Token type is not present",
    534: "Token type is not valid for objectId",
    535: "Invalid token data",
    555: "Miscellaneous server error",
}
"""CleverTap's per-record codes and their documented messages (developer.clevertap.com, API errors)."""

Rate = float


class Faults(BaseModel):
    """The fault settings. Validated the same way from flags and from the HTTP API."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cap: int = Field(default=15, ge=1, le=10_000)
    latency_ms: float = Field(default=0.0, ge=0, le=600_000)
    jitter_ms: float = Field(default=0.0, ge=0, le=600_000)
    error_rates: dict[int, Rate] = Field(default_factory=dict)
    retry_after_s: int | None = Field(default=None, ge=0, le=86_400)
    outage: bool = False
    outage_mode: Literal["503", "drop"] = "503"
    timeout_rate: Rate = Field(default=0.0, ge=0, le=1)
    timeout_ms: float = Field(default=30_000.0, ge=0, le=3_600_000)
    timeout_accepts: bool = False
    record_555_rate: Rate = Field(default=0.0, ge=0, le=1)
    record_error_rate: Rate = Field(default=0.0, ge=0, le=1)
    record_error_code: int = 512
    poison_events: list[str] = Field(default_factory=list)
    event_codes: dict[str, int] = Field(default_factory=dict)

    @field_validator("error_rates")
    @classmethod
    def _check_rates(cls, rates: dict[int, float]) -> dict[int, float]:
        for status, rate in rates.items():
            if not 400 <= status <= 599:
                raise ValueError(f"{status} is not an HTTP error status (400-599)")
            if not 0 <= rate <= 1:
                raise ValueError(f"the rate for {status} must be between 0 and 1")
        if sum(rates.values()) > 1 + 1e-9:
            raise ValueError("the rates add up to more than 1")
        return rates

    @field_validator("record_error_code")
    @classmethod
    def _check_code(cls, code: int) -> int:
        if code not in RECORD_ERRORS or code == 555:
            raise ValueError(f"{code} is not a permanent CleverTap record code")
        return code

    @field_validator("event_codes")
    @classmethod
    def _check_event_codes(cls, codes: dict[str, int]) -> dict[str, int]:
        for name, code in codes.items():
            if code not in RECORD_ERRORS:
                raise ValueError(f"{code} (for {name!r}) is not a CleverTap record code")
        return codes


class FaultState:
    """The current faults, the start-up faults to go back to, and the seeded dice."""

    def __init__(self, faults: Faults, seed: int | None = None) -> None:
        self.initial = faults
        self.faults = faults
        self.seed = seed
        self._random = random.Random(seed)

    def update(self, changes: dict[str, Any]) -> Faults:
        """Apply a partial update (raises pydantic's ValidationError, leaving the faults as they were)."""
        changes = dict(changes)
        if "seed" in changes:
            seed = changes.pop("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
                raise ValueError("seed must be an integer or null")
            self.seed = seed
            self._random = random.Random(seed)
        merged = self.faults.model_dump() | changes
        self.faults = Faults.model_validate(merged)
        return self.faults

    def reset(self) -> Faults:
        """Back to the faults the sandbox started with (and the start-up seed's sequence)."""
        self.faults = self.initial
        self._random = random.Random(self.seed)
        return self.faults

    @staticmethod
    def explain(error: ValidationError) -> str:
        """One line naming each invalid fault and why."""
        return "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()
        )

    def describe(self) -> dict[str, Any]:
        """The current faults as JSON-able data (``GET /_sandbox/faults``)."""
        return {**self.faults.model_dump(mode="json"), "seed": self.seed}

    def delay(self) -> float:
        """Seconds to hold an accepted request (latency plus jitter)."""
        faults = self.faults
        ms = faults.latency_ms
        if faults.jitter_ms:
            ms += self._random.uniform(0, faults.jitter_ms)
        return ms / 1000.0

    def timeout(self) -> float:
        """Seconds to hold this request as a timeout, or 0 when it is not picked."""
        faults = self.faults
        if faults.timeout_rate and self._random.random() < faults.timeout_rate:
            return faults.timeout_ms / 1000.0
        return 0.0

    def error_status(self) -> int | None:
        """An injected HTTP status for this request, or None."""
        rates = self.faults.error_rates
        if not rates:
            return None
        roll = self._random.random()
        for status, rate in sorted(rates.items()):
            if roll < rate:
                return status
            roll -= rate
        return None

    def record_code(self) -> int | None:
        """An injected code for one otherwise valid record (555 or the permanent code), or None."""
        faults = self.faults
        if faults.record_555_rate and self._random.random() < faults.record_555_rate:
            return 555
        if faults.record_error_rate and self._random.random() < faults.record_error_rate:
            return faults.record_error_code
        return None
