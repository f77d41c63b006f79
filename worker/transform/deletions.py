"""User deletion as the transform reads it: which messages ask for a user's CleverTap profile to be deleted. Pure.

A track whose ``event`` is the destination's ``delete_event_name`` ("Delete User", the convention of Segment's
CleverTap (Actions) destination) is a deletion: never uploaded as an event, it becomes CleverTap's delete call
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


def asks_deletion(message: Mapping[str, Any], destination: Destination) -> bool:
    """Whether ``message`` is a track named the destination's ``delete_event_name``."""
    return message.get("type") == "track" and message.get("event") == destination.delete_event_name


def deletion_of(message: Mapping[str, Any], destination: Destination) -> Delete | None:
    """The deletion a valid message asks for, or ``None`` (not a deletion, no id, or CleverTap turned off)."""
    if not asks_deletion(message, destination) or turned_off(message.get("integrations")):
        return None
    user_id, anonymous_id = identifier(message.get("userId")), identifier(message.get("anonymousId"))
    if user_id is None and anonymous_id is None:
        return None
    return Delete.of(user_id, anonymous_id, object_ids=destination.send_anonymous_id_as_object_id)
