"""User deletion as the transform reads it: which messages ask for a user's CleverTap profile to be deleted. Pure.

A track whose ``event`` is the destination's ``delete_event_name`` ("Delete User", the convention of Segment's
CleverTap (Actions) destination) is a deletion when the destination has ``allow_delete_events = true``, or when
an operator queued it (``ctrelay users delete``, ``POST /admin/users/delete``: :mod:`worker.ops.users` marks it
``context.ctrelay.deletion``; ingest drops any ``context.ctrelay`` a client sends, so the mark cannot be forged).
Browser and mobile write keys are public, so by default a client's ``Delete User`` is an ordinary event.
A deletion is never uploaded as an event, it becomes CleverTap's delete call
for the ids the user's records carry (``identity`` = ``userId``, ``guid`` = ``anonymousId``, the objectId; with
``send_anonymous_id_as_object_id`` off, the ``anonymousId`` of an anonymous user is its identity). Ingest asks
:func:`deletion_of` to suppress the user as the track is accepted; the transform returns the same
:class:`Delete`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.core.messages import identifier
from worker.transform.integrations import turned_off

if TYPE_CHECKING:
    from worker.core.destinations import Destination


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete this user's CleverTap profile. At least one of ``identity`` and ``guid`` is set."""

    identity: str | None
    guid: str | None

    @classmethod
    def of(cls, user_id: str | None, anonymous_id: str | None, *, object_ids: bool) -> Delete:
        """The ids a deletion names, as the user's records carry them."""
        return cls(user_id, anonymous_id) if object_ids else cls(user_id or anonymous_id, None)

    def record(self) -> dict[str, Any]:
        """The deletion as the worker queues and retries it: ``{"type": "delete", "identity": [..], "guid": [..]}``."""
        return {
            "type": "delete",
            "identity": [self.identity] if self.identity else [],
            "guid": [self.guid] if self.guid else [],
        }


MARK = "ctrelay"
"""The ``context`` key only the relay writes (the operator's deletion mark); ingest drops it from client messages."""


def operator_mark(message: Mapping[str, Any]) -> str | None:
    """How an operator queued this deletion (``cli``, ``admin``), or None when no operator did."""
    context = message.get("context")
    mark = context.get(MARK) if isinstance(context, dict) else None
    via = mark.get("deletion") if isinstance(mark, dict) else None
    return via if isinstance(via, str) and via else None


def asks_deletion(message: Mapping[str, Any], destination: Destination) -> bool:
    """Whether ``message`` is a track named the destination's ``delete_event_name`` that may delete: the
    destination allows client deletions, or an operator queued it."""
    if message.get("type") != "track" or message.get("event") != destination.delete_event_name:
        return False
    return destination.allow_delete_events or operator_mark(message) is not None


def deletion_of(message: Mapping[str, Any], destination: Destination) -> Delete | None:
    """The deletion a valid message asks for, or ``None`` (not a deletion, no id, or CleverTap turned off)."""
    if not asks_deletion(message, destination) or turned_off(message.get("integrations")):
        return None
    user_id, anonymous_id = identifier(message.get("userId")), identifier(message.get("anonymousId"))
    if user_id is None and anonymous_id is None:
        return None
    return Delete.of(user_id, anonymous_id, object_ids=destination.send_anonymous_id_as_object_id)
