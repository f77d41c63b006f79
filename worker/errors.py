"""The relay's exception tree. Expected outcomes (a message skipped or invalid) are values, not exceptions.

::

    RelayError
    ├── ConfigError          settings or the destinations file are invalid (raised at start-up)
    ├── OperatorError        an operator's dead-letter request is invalid (filter, letter id, import line)
    └── MessageError         a Segment message breaks the wire contract (SPEC §1); `reason` says why
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


class OperatorError(RelayError):
    """An operator's request on the dead letters cannot be done as asked; the message says why and what to do."""
