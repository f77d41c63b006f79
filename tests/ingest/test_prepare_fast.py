"""Ingest's one pass over a request's messages gives exactly what the rules give (hypothesis), bytes included.

- :func:`~ingest.tracking.prepare.prepare` (each message through ``parse(..., owned=True)``, whose first check
  decides the common message and returns the client's dict itself, and ``enrich`` with the request's ``sentAt``
  parsed once) against ``prepare_as_written`` below: every message through :func:`~worker.core.messages.parse`
  (a copy), then :func:`~ingest.tracking.enrich.enrich`, ``orjson.dumps``, the nesting and size bounds, and
  :meth:`~worker.store.producer.Producer.entry`; the same clock and the same generated messageIds on both sides.
  Compared: the entries (stream, partition, marker, write key and the message's bytes: key order counts), the call
  types, the refusals and their reasons, the deletions;
- :meth:`~worker.store.producer.Producer.maker` (partition and marker inlined) against
  :meth:`~worker.store.producer.Producer.entry`.

``prepare_as_written`` is a reference, kept here only: the loop as main wrote it (before issue 17's savings). A
change of a rule goes into the rule's module (``parse``, ``enrich``) alone; this comparison then says that the
savings (the client's dict kept, the bracket count, the entry maker) still mean what the loop meant.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest import body
from ingest.tracking import prepare as prepare_module
from ingest.tracking.enrich import Request as Enrichment
from ingest.tracking.enrich import enrich
from ingest.tracking.prepare import Kind, Outcome, prepare
from worker.core.destinations import Destination
from worker.core.errors import MessageError, RequestError
from worker.core.keys import Keys
from worker.core.messages import CALL_TYPES, MAX_MESSAGE_ID, parse
from worker.core.settings import Settings
from worker.store.producer import Entry, Producer
from worker.transform.deletions import MARK, asks_deletion

TESTS = Path(__file__).resolve().parents[1]
RECEIVED = datetime(2026, 12, 1, 10, 0, 1, 234567, tzinfo=UTC)
PRODUCER = Producer(Keys("t"), 16, 600)
DESTINATIONS = [
    Destination(write_key="wk", account_id="A", passcode="p"),
    Destination(write_key="wk2", account_id="B", passcode="p", allow_delete_events=True, delete_event_name="Gone"),
]


def prepare_as_written(
    items: list[Any],
    top: dict[str, Any] | None,
    kind: Kind,
    implied_type: str | None,
    destination: Destination,
    *,
    settings: Settings,
    digest: str | None,
    flat: bool,
) -> Outcome:
    """The loop as main wrote it: parse, (webhook,) enrich, encode, bound, entry; each message alike."""
    enrichment = Enrichment(
        received=prepare_module.datetime.now(UTC),  # (the clock the test fixes)
        sent_at=top.get("sentAt") if top is not None and isinstance(top.get("sentAt"), str) else None,
        context=top.get("context") if top is not None else None,
        integrations=top.get("integrations") if top is not None else None,
        correct_skew=kind != "webhook",
    )
    received_text = enrichment.received_text
    limit, depth = settings.max_message_bytes, settings.max_depth
    outcome = Outcome()
    for index, raw in enumerate(items):
        try:
            message = parse(raw, implied_type)
        except MessageError as exc:
            outcome.refuse("invalid_message", RequestError(400, "invalid_message", exc.reason))
            continue
        if kind == "webhook":
            message.pop("writeKey", None)
            if not message.get("messageId"):
                message["messageId"] = f"webhook-{digest}-{index}"
        enrich(message, enrichment, received_text)
        try:
            encoded = orjson.dumps(message)
            deep = not flat and not body.shallow(encoded, depth) and body.too_deep(message, depth)
        except orjson.JSONEncodeError as exc:
            deep = "ecursion" in str(exc)
            if not deep:
                outcome.refuse(
                    "invalid_message", RequestError(400, "invalid_message", f"message cannot be encoded: {exc}")
                )
                continue
        if deep:
            outcome.refuse("too_deep", body.deep_error(depth))
            continue
        if len(encoded) > limit:
            outcome.refuse(
                "message_too_large", RequestError(400, "message_too_large", f"message larger than {limit} bytes")
            )
            continue
        outcome.entries.append(PRODUCER.entry(destination.write_key, message, encoded))
        call = message["type"]
        outcome.types.append(call)
        if (
            call == "track"
            and message.get("event") == destination.delete_event_name
            and asks_deletion(message, destination)
        ):
            outcome.deletions[len(outcome.entries) - 1] = message
    return outcome


class _Clock(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return RECEIVED


@contextmanager
def fixed() -> Iterator[None]:
    """The same received time, and the same run of generated messageIds from the start of each side."""
    counter = itertools.count()
    ids = lambda: uuid.UUID(int=next(counter))  # noqa: E731
    with mock.patch.object(prepare_module, "datetime", _Clock), mock.patch.object(uuid, "uuid4", ids):
        yield


def summary(outcome: Outcome) -> Any:
    error = outcome.error
    return (
        outcome.entries,
        outcome.types,
        dict(outcome.rejected),
        {index: orjson.dumps(message) for index, message in outcome.deletions.items()},
        None if error is None else (error.status, error.code, error.message),
    )


def assert_same(
    items: list[Any],
    top: dict[str, Any] | None = None,
    kind: Kind = "batch",
    implied_type: str | None = None,
    *,
    destination: Destination = DESTINATIONS[0],
    depth: int = 64,
    limit: int = 32 * 1024,
) -> None:
    config = Settings(max_depth=depth, max_message_bytes=limit)
    data = json.dumps({"batch": items} if top is None else {**top, "batch": items}).encode()  # (any int)
    flat = body.shallow(data, depth)
    sides = []
    for run in ("reference", "product"):
        given_items, given_top = copy.deepcopy(items), copy.deepcopy(top)  # prepare keeps the client's dict
        with fixed():
            if run == "reference":
                outcome = prepare_as_written(
                    given_items, given_top, kind, implied_type, destination, settings=config, digest="d", flat=flat
                )
            else:
                outcome = prepare(
                    given_items,
                    given_top,
                    kind,
                    implied_type,
                    destination,
                    settings=config,
                    entry=PRODUCER.maker(destination.write_key),
                    digest="d",
                    flat=flat,
                )
        sides.append(summary(outcome))
    assert sides[0] == sides[1], (items, top, kind, implied_type)


# -- inputs ------------------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
texts = st.text(max_size=6) | st.just("") | st.none() | json_values
ids = (
    st.text(min_size=1, max_size=6)
    | st.just("")
    | st.none()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.text(min_size=MAX_MESSAGE_ID - 1, max_size=MAX_MESSAGE_ID + 2)
    | json_values
)
times = (
    st.datetimes(timezones=st.sampled_from([UTC, None])).map(lambda moment: moment.isoformat())
    | st.sampled_from(
        [
            "2026-12-01T10:00:00.000Z",
            "2026-12-01T10:00:00Z",
            "2026-12-01T12:00:00+02:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "2026-12-01",
            "not a time",
            "",
        ]
    )
    | texts
)
contexts = (
    st.dictionaries(st.sampled_from(["ip", "library", "page", MARK, "traits"]), json_values, max_size=3)
    | st.none()
    | json_values
)
objects = st.dictionaries(st.text(max_size=4), json_values, max_size=3) | st.none() | json_values
kinds = st.sampled_from(CALL_TYPES) | st.sampled_from(["", "Track", "bogus"]) | json_values
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "type": kinds, "userId": ids, "anonymousId": ids, "previousId": ids, "groupId": ids, "messageId": ids,
    "event": texts | st.sampled_from(["Delete User", "Gone", "Order Completed"]), "name": texts,
    "category": texts, "writeKey": texts, "timestamp": times, "originalTimestamp": times, "sentAt": times,
    "receivedAt": times, "context": contexts, "integrations": objects, "traits": objects, "properties": objects,
}  # fmt: skip
messages = st.builds(
    lambda known, unknown: unknown | known,
    st.fixed_dictionaries({}, optional=FIELDS),
    st.dictionaries(st.text(max_size=6), json_values, max_size=2),
)
# Valid ones more often than chance gives: a call type, a user, the type's required field.
valid_messages = st.builds(
    lambda kind, user, extra, more: (
        {"type": kind, "userId": user, "event": "E", "groupId": "g", "previousId": "p"} | extra | more
    ),
    st.sampled_from(CALL_TYPES),
    st.text(min_size=1, max_size=4),
    st.fixed_dictionaries(
        {}, optional={k: FIELDS[k] for k in ("messageId", "timestamp", "originalTimestamp", "sentAt", "context")}
    ),
    st.fixed_dictionaries(
        {},
        optional={
            k: FIELDS[k]
            for k in ("integrations", "properties", "traits", "writeKey", "groupId", "previousId", "anonymousId")
        },
    ),
)
tops = st.none() | st.fixed_dictionaries(
    {}, optional={"sentAt": times, "context": st.dictionaries(st.sampled_from(["ip", MARK, "library"]), json_values,
                                                               max_size=2),
                  "integrations": st.dictionaries(st.sampled_from(["All", "CleverTap"]), json_values, max_size=2)},
)  # fmt: skip
IMPLIED = (None, *CALL_TYPES)
RUN = settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@RUN
@given(
    items=st.lists(messages | valid_messages | json_values, max_size=5),
    top=tops,
    kind=st.sampled_from(["batch", "webhook"]),
    destination=st.sampled_from(DESTINATIONS),
    depth=st.sampled_from([2, 3, 4, 64]),
    limit=st.sampled_from([120, 32 * 1024]),
)
@example(items=[{"type": "track", "userId": "u", "event": "E", "messageId": ""}], top=None, kind="batch",
         destination=DESTINATIONS[0], depth=64, limit=32 * 1024)  # fmt: skip
def test_batches(  # noqa: PLR0917 (hypothesis gives the arguments by name)
    items: list[Any], top: dict[str, Any] | None, kind: Kind, destination: Destination, depth: int, limit: int
) -> None:
    assert_same(items, top if kind == "batch" else None, kind, destination=destination, depth=depth, limit=limit)


@RUN
@given(raw=messages | valid_messages, implied=st.sampled_from(IMPLIED), destination=st.sampled_from(DESTINATIONS))
@example(raw={"type": "track", "userId": "u", "event": "E", "previousId": 7, "groupId": 8.0}, implied=None,
         destination=DESTINATIONS[0])  # fmt: skip
@example(raw={"userId": "u", "event": "Gone", "anonymousId": True, "writeKey": "wk2"}, implied="track",
         destination=DESTINATIONS[1])  # fmt: skip
def test_single_calls(raw: Any, implied: str | None, destination: Destination) -> None:
    assert_same([raw], None, "single", implied, destination=destination)


def golden_messages() -> list[Any]:
    return [json.loads(path.read_text())["message"] for path in sorted((TESTS / "transform/golden").glob("*.json"))]


def test_the_golden_inputs() -> None:
    found = golden_messages()
    assert len(found) >= 80
    top = {"sentAt": "2026-12-01T10:00:05Z", "context": {"ip": "203.0.113.1", MARK: {"x": 1}}}
    for destination in DESTINATIONS:
        assert_same(found, None, destination=destination)
        assert_same(found, top, destination=destination)
        assert_same(found, None, "webhook", destination=destination)
        for raw in found:
            for implied in IMPLIED:
                assert_same([raw], None, "single", implied, destination=destination)


def test_the_first_check_is_taken_and_keeps_the_clients_dict() -> None:
    """The comparison above would hold with ``owned`` ignored: this says that the common message is decided by
    ``parse``'s first check and kept (the client's own dict, enriched in place) and that an odd one is not (it goes
    through the rules field by field, on ``parse``'s copy)."""
    plain = {"type": "track", "userId": "u", "event": "E", "messageId": "m", "timestamp": "2026-12-01T10:00:00Z"}
    odd = {"type": "track", "userId": 42, "event": "E", "messageId": "m2"}
    config = Settings()
    with fixed():
        outcome = prepare(
            [plain, odd],
            None,
            "batch",
            None,
            DESTINATIONS[1],
            settings=config,
            entry=PRODUCER.maker("wk2"),
            digest=None,
            flat=True,
        )
    assert plain["receivedAt"] == "2026-12-01T10:00:01.234Z"  # enriched in place: the first check decided
    assert "receivedAt" not in odd  # parse's copy was enriched
    assert [orjson.loads(entry.message)["userId"] for entry in outcome.entries] == ["u", "42"]


@pytest.mark.parametrize(
    ("write_key", "user", "message_id"),
    [("wk", "alice", "m1"), ("wk2", "", "x" * 100), ("ключ", "ünï", "🙂"), ("wk", "u", "0")],
)
def test_the_maker_makes_the_entry(write_key: str, user: str, message_id: str) -> None:
    encoded = b'{"a":1}'
    message = {"userId": user, "anonymousId": "anon", "messageId": message_id}
    made = PRODUCER.maker(write_key)(user or "anon", message_id, encoded)
    assert made == PRODUCER.entry(write_key, message, encoded)
    assert type(made) is Entry
    assert made.message is encoded


@settings(max_examples=300, deadline=None, database=None)
@given(write_key=st.text(min_size=1, max_size=8), user=st.text(min_size=1, max_size=8), message_id=st.text(max_size=8))
def test_the_maker_makes_the_entry_generated(write_key: str, user: str, message_id: str) -> None:
    make: Callable[[str, str, bytes], Any] = PRODUCER.maker(write_key)
    message = {"userId": user, "messageId": message_id}
    assert make(user, message_id, b"{}") == PRODUCER.entry(write_key, message, b"{}")
