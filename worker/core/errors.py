"""The relay's exception tree. Expected outcomes (a message skipped or invalid) are values, not exceptions.

::

    RelayError
    ├── ConfigError          settings or the destinations file are invalid (raised at start-up)
    ├── OperatorError        an operator's dead-letter request is invalid (filter, letter id, import line)
    ├── MessageError         a Segment message breaks the wire contract; `reason` says why
    ├── NotReplicated        fewer replicas than CTRELAY_MIN_REPLICAS confirmed an enqueue in time (ingest: 503)
    ├── DrainStopped         a drain must stop mid-batch (lease lost, no upload slot in time); its entries stay pending
    └── RequestError         ingest refuses a whole HTTP request: `status`, `code`, `message` (the JSON body)
        └── Unavailable      503: Redis does not answer or the backlog is above its cap (with Retry-After)
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """Invalid settings or destinations: the process must not start."""


class MessageError(RelayError):
    """A message that breaks the wire contract. ``reason`` is short and safe to show a client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DrainStopped(RelayError):
    """A drain stops before its next upload or commit: it no longer holds its partition's lease (expired while
    Redis was unreachable, or taken over), or no upload slot came within its time budget. The batch's entries stay
    pending (reclaimed by the lease's new holder, or retried by the next drain); nothing is lost."""


class NotReplicated(RelayError):
    """An enqueue reached the primary but not ``wanted`` replicas in time (``acked`` did): not durable enough for a 200.
    The messages are written; the client's retry is deduplicated."""

    def __init__(self, acked: int, wanted: int) -> None:
        super().__init__(f"{acked} of {wanted} replicas confirmed the write in time")
        self.acked = acked
        self.wanted = wanted


class RequestError(RelayError):
    """Ingest refuses a whole request; nothing of it is enqueued. The client sees ``{"code", "message"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Unavailable(RequestError):
    """The queue cannot take the request now (Redis down, backlog full): 503, the client retries."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(503, code, message)


class OperatorError(RelayError):
    """An operator's request on the dead letters cannot be done as asked; the message says why and what to do."""
