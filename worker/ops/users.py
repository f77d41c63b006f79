"""Operator operations on users, shared by ``ctrelay users`` and the admin API (``/admin/users``): delete a
user, lift a suppression, list the suppressed users.

:func:`delete_user` does what a ``Delete User`` track does, at once: in one MULTI it suppresses the user
(:mod:`worker.store.suppressions`) and queues a ``Delete User`` track (the destination's ``delete_event_name``, with
``context.ctrelay.deletion`` = ``cli`` or ``admin``) in the user's partition stream. The worker then makes
CleverTap's delete call for it in the partition's order, after any upload of that user already in flight,
with the retries and dead letters of any upload (a dead-lettered deletion is replayed like any letter).

On a Redis Cluster (the suppressions' hash and the stream have different hash tags) the two are ordered writes
(:mod:`worker.store.ordered`): the suppression first, the XADD after. A failure between them is reported to the
operator (an error, exit 2 or a 5xx) with the user suppressed and no deletion queued: running the command again
queues it. Nothing accepted is lost.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.core.destinations import Destination
from worker.core.errors import OperatorError
from worker.core.keys import Keys
from worker.store.ordered import write_in_order
from worker.store.producer import Producer
from worker.store.suppressions import Suppressions, fields_of
from worker.transform.deletions import MARK, Delete
from worker.transform.records import transform


@dataclass(frozen=True, slots=True)
class Deletion:
    """An accepted deletion: the queued message's id, the ids CleverTap is asked to delete, the suppression end."""

    destination: str
    message_id: str
    identity: list[str]
    guid: list[str]
    suppressed_until: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": True,
            "destination": self.destination,
            "message_id": self.message_id,
            "identity": self.identity,
            "guid": self.guid,
            "suppressed_until": self.suppressed_until,
        }


def _ids(user_id: str | None, anonymous_id: str | None) -> dict[str, str]:
    user_id, anonymous_id = (user_id or "").strip() or None, (anonymous_id or "").strip() or None
    if (user_id is None) == (anonymous_id is None):
        raise OperatorError("give exactly one of user id (--user-id / user_id) and anonymous id (--anonymous-id)")
    return {"userId": user_id} if user_id is not None else {"anonymousId": anonymous_id or ""}


def deletion_message(destination: Destination, ids: dict[str, str], via: str, now: float) -> dict[str, Any]:
    """The ``Delete User`` track an operator's deletion queues (as ingest would have enriched it)."""
    moment = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "type": "track",
        "event": destination.delete_event_name,
        **ids,
        "messageId": f"ctrelay-delete-{uuid.uuid4().hex}",
        "timestamp": moment,
        "receivedAt": moment,
        "properties": {},
        "context": {MARK: {"deletion": via}},  # the operator's mark: a deletion whatever allow_delete_events
    }


def delete_user(
    client: redis.Redis,
    keys: Keys,
    producer: Producer,
    destination: Destination,
    *,
    user_id: str | None = None,
    anonymous_id: str | None = None,
    window_s: float,
    via: str,
    now: float | None = None,
) -> Deletion:
    """Suppress the user and queue their deletion (one MULTI, or ordered writes: see the module docstring)."""
    now = time.time() if now is None else now
    message = deletion_message(destination, _ids(user_id, anonymous_id), via, now)
    result = transform(message, destination, now)
    if not isinstance(result, Delete):  # cannot happen for a well-formed deletion message
        raise OperatorError(f"the deletion message was not read as a deletion: {result!r}")
    record = result.record()
    suppressions = Suppressions(client, keys, window_s, lambda: now)
    until = now + window_s
    write_in_order(
        client,
        (False, lambda pipe: suppressions.add(pipe, destination.write_key, record, now, via)),
        (True, lambda pipe: producer.add(pipe, [producer.entry(destination.write_key, message)])),
    )
    suppressions.active(destination.write_key, now)  # prune expired suppressions of this destination
    return Deletion(destination.name, message["messageId"], record["identity"], record["guid"], until)


def unsuppress(
    client: redis.Redis,
    keys: Keys,
    destination: Destination,
    *,
    user_id: str | None = None,
    anonymous_id: str | None = None,
) -> int:
    """Lift the suppression of one user (the ids a deletion of them would suppress); returns fields removed."""
    ids = _ids(user_id, anonymous_id)
    message = deletion_message(destination, ids, "cli", 0.0)
    result = transform(message, destination, 0.0)
    if not isinstance(result, Delete):
        raise OperatorError(f"the user could not be read: {result!r}")
    return Suppressions(client, keys, 0.0, time.time).lift(destination.write_key, fields_of(result.record()))


def suppressed(client: redis.Redis, keys: Keys, destination: Destination, now: float) -> list[dict[str, Any]]:
    """The destination's active suppressions, oldest first."""
    return [s.to_dict() for s in Suppressions(client, keys, 0.0, lambda: now).active(destination.write_key, now)]


def find_destination(destinations: Any, write_key: str) -> Destination:
    destination = destinations.get(write_key)
    if destination is None:
        raise OperatorError(f"destination {write_key!r}: no such write key in the destinations file")
    assert isinstance(destination, Destination)
    return destination
