"""The transform's fast paths give exactly what the rules give (hypothesis), key order and counts included.

- :func:`~worker.transform.records.transform` (its checks reordered and inlined for the common message) against
  ``transform_as_written`` below: the rules as first written, every check through its helper;
- Order Completed's data (one pass: :func:`~worker.transform.values.clean_finding`) against the rule as first
  written: :func:`~worker.transform.values.clean`, then the last key that converts to ``products``;
- :func:`~worker.transform.timestamps.epoch_seconds` (its string case takes ``_parse_iso``'s first step itself)
  against ``_parse_iso`` then ``_whole_seconds``.

``transform_as_written`` is a reference, kept here only: the mapping rules in their plainest form, each check
through its helper, as they stood before the product's transform was written for speed. A change of a rule goes
into both (the product's :mod:`worker.transform.records` and this reference); the comparison then says that the
fast form still means what the plain one says.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_transform_properties import DESTINATIONS, json_values, messages, properties

from worker.core.destinations import Destination
from worker.core.messages import CALL_TYPES, identifier
from worker.transform import records
from worker.transform.deletions import Delete, asks_deletion
from worker.transform.integrations import turned_off
from worker.transform.keycase import convert_key
from worker.transform.records import Invalid, Skip, TransformStats, transform
from worker.transform.timestamps import _parse_iso, _whole_seconds, epoch_seconds
from worker.transform.traits import profile
from worker.transform.values import DROP, MAX_KEY_LENGTH, clean, clean_finding, kept, truncate

NOW = 1_700_000_000.0
DESTINATIONS_ALL = [
    *DESTINATIONS,
    Destination(account_id="p", allow_delete_events=True, delete_event_name="E"),
    Destination(account_id="p", send_anonymous_id_as_object_id=False),
]


def dumped(result: Any) -> Any:
    """A result as bytes-to-compare: records as JSON text (key order counts), other outcomes as they are."""
    return json.dumps(result) if isinstance(result, list) else result


def transform_as_written(
    message: Any, destination: Destination, now: float, stats: TransformStats | None = None
) -> list[dict[str, Any]] | Skip | Invalid | Delete:
    """The transform as the rules were first written (each check through its helper, in the rules' order)."""
    if not isinstance(message, Mapping):
        return Invalid("message: must be a JSON object")
    kind = message.get("type")
    if kind not in CALL_TYPES:
        return Invalid("type: required" if kind is None else f"type: must be one of {', '.join(CALL_TYPES)}")
    user_id = identifier(message.get("userId"))
    anonymous_id = identifier(message.get("anonymousId"))
    if user_id is None and anonymous_id is None:
        return Invalid(records._IDS_REQUIRED)
    problem = records._check(message, kind)
    if problem is not None:
        return problem
    if turned_off(message.get("integrations")):
        return Skip("disabled_by_integrations")
    if kind == "group":
        return Skip("unsupported_type")
    object_ids = destination.send_anonymous_id_as_object_id
    if asks_deletion(message, destination):
        return Delete.of(user_id, anonymous_id, object_ids=object_ids)
    record: dict[str, Any]
    if kind == "alias":
        if not destination.alias:
            return Skip("alias_disabled")
        if not object_ids:
            return Skip("alias_needs_object_id")
        record = {"type": "profile", "identity": user_id, "objectId": identifier(message.get("previousId"))}
    else:
        record = {"type": "profile" if kind == "identify" else "event"}
        if not object_ids:
            record["identity"] = user_id or anonymous_id
        else:
            if user_id is not None:
                record["identity"] = user_id
            if anonymous_id is not None:
                record["objectId"] = anonymous_id
    record["ts"] = records._timestamp(message, now)
    if kind == "identify":
        record["profileData"] = profile(records._identify_traits(message), destination.profile_keys, stats)
    elif kind == "alias":
        record["profileData"] = {}
    elif kind == "track":
        event: str = message["event"]
        props = records._object(message.get("properties"))
        if event == records.CHARGED_SOURCE:
            record["evtName"], record["evtData"] = "Charged", records._charged(props, stats)
        else:
            record["evtName"], record["evtData"] = truncate(event, stats), clean(props, stats)
    else:
        data = clean(records._object(message.get("properties")), stats)
        if kind == "page":
            record["evtName"] = destination.page_event_name
            data.update(clean({"name": message.get("name"), "category": message.get("category")}, stats))
        else:
            record["evtName"] = destination.screen_event_name
            data.update(clean({"name": message.get("name")}, stats))
        record["evtData"] = data
    token = records._push_token(message, anonymous_id)
    return [record] if token is None else [record, token]


def same_as_rules(message: Any) -> None:
    for destination in DESTINATIONS_ALL:
        fast_stats, rules_stats = TransformStats(), TransformStats()
        fast = transform(message, destination, NOW, fast_stats)
        rules = transform_as_written(message, destination, NOW, rules_stats)
        assert dumped(fast) == dumped(rules)
        assert fast_stats == rules_stats


ids = st.none() | st.just("") | st.text(max_size=5) | st.integers() | st.booleans()
integrations = (
    st.none()
    | st.sampled_from([{"All": False}, {"CleverTap": False}, {"All": False, "CleverTap": True}])
    | st.fixed_dictionaries({}, optional={"All": st.booleans(), "CleverTap": json_values})
)
stamps = st.datetimes().map(lambda d: d.isoformat(timespec="milliseconds") + "Z") | st.text(max_size=30) | st.integers()
common = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "identify", "page", "screen", "alias", "group"]),
        "userId": ids,
        "messageId": st.text(max_size=5),
        "timestamp": stamps,
    },
    optional={
        "anonymousId": ids,
        "previousId": ids,
        "groupId": ids,
        "event": st.sampled_from(["Order Completed", "Delete User", "E", "", 7]) | st.text(max_size=600),
        "properties": properties
        | st.none()
        | st.fixed_dictionaries(
            {"products": st.lists(properties | json_values, max_size=3)},
            optional={"order_id": json_values, "Products": json_values, "total": json_values, "revenue": json_values},
        ),
        "traits": properties,
        "name": json_values,
        "category": json_values,
        "receivedAt": stamps,
        "integrations": integrations,
        "context": st.none()
        | st.just([])
        | st.fixed_dictionaries(
            {},
            optional={
                "device": st.none()
                | st.fixed_dictionaries({"token": st.text(max_size=4), "type": st.sampled_from(["android", "x"])}),
                "os": st.fixed_dictionaries({"name": st.sampled_from(["iOS", "Linux"])}),
                "traits": properties,
            },
        ),
    },
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(common)
@example({"type": "track", "event": "Order Completed", "userId": "u", "properties": {"products": [{"a": 1}]}})
@example({"type": "track", "event": "E", "anonymousId": "a", "context": {"device": {"token": "t", "type": "android"}}})
@example({"type": "track", "event": "E", "userId": "", "anonymousId": "a", "integrations": {"CleverTap": False}})
def test_the_common_message_as_the_rules_say(message: dict[str, Any]) -> None:
    same_as_rules(message)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages | st.builds(lambda message, off: {**message, "integrations": off}, messages, integrations))
@example({"type": "alias", "userId": "u", "previousId": 7, "anonymousId": "a", "context": {"device": {"token": "t"}}})
@example({"type": "alias", "userId": "u"})
@example({"type": "alias", "userId": "u", "previousId": "p", "integrations": {"CleverTap": False}})
@example({"type": "group", "userId": 3, "groupId": "g"})
@example({"type": "group", "anonymousId": "a", "groupId": "g", "integrations": {"All": False}})
@example({"type": "track", "userId": 12, "event": "E", "context": {"ctrelay": {"deletion": "cli"}}})
@example({"type": "track", "userId": "u", "event": ["E"]})
@example({"type": ["track"], "userId": "u"})
@example({"userId": "u"})
def test_any_segment_message_as_the_rules_say(message: dict[str, Any]) -> None:
    same_as_rules(message)


class Message(Mapping[str, Any]):
    """A mapping that is not a dict: the transform takes any JSON object."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Any:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages | common)
def test_other_mappings_and_other_values_as_the_rules_say(message: dict[str, Any]) -> None:
    same_as_rules(Message(message))
    for other in (None, [message], "track", 3):
        same_as_rules(other)


def charged_as_written(props: Mapping[str, Any], stats: TransformStats | None) -> dict[str, Any]:
    """Order Completed's data as the rule was first written: clean, then a second pass for ``products``."""
    data = clean(props, stats)
    data.pop("products", None)
    order_id = data.pop("order_id", None)
    if order_id is not None:
        data["Charged ID"] = order_id
    for field in ("total", "revenue"):
        amount = records._amount(data.get(field))
        if amount is not None:
            data["Amount"] = amount
            break
    products: Any = None
    for key, value in props.items():
        if convert_key(key) == "products":
            products = value
    if isinstance(products, list):
        data["Items"] = [clean(product, stats) for product in products if isinstance(product, Mapping)]
    return data


order_keys = st.sampled_from(["products", "Products", "PRODUCTS", "order_id", "orderId", "total", "revenue", "x" * 130])
order_properties = st.dictionaries(order_keys | st.text(max_size=8), json_values | st.text(min_size=120, max_size=200))


@settings(max_examples=400, deadline=None)
@given(order_properties)
def test_charged_in_one_pass_as_written(props: dict[str, Any]) -> None:
    one, two = TransformStats(), TransformStats()
    assert json.dumps(records._charged(props, one)) == json.dumps(charged_as_written(props, two))
    assert one == two
    found = [value for key, value in props.items() if convert_key(key) == "products"]
    cleaned, last = clean_finding(props, "products")
    assert json.dumps(cleaned) == json.dumps(clean(props))
    assert last is (found[-1] if found else None)


def seconds_as_written(value: str) -> int | None:
    if len(value) > 64:
        return None
    moment = _parse_iso(value)
    return None if moment is None else _whole_seconds(moment)


ISO_SHAPED = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,12})?)?[zZ]?"


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes().map(lambda d: d.isoformat(timespec=st_timespec(d)) + "Z")
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    | st.text(max_size=70)
    | st.from_regex(ISO_SHAPED, fullmatch=True)
)
@example("2026-12-01T10:00:00.000Z")
@example("2026-02-30T10:00:00.000Z")
@example(" 2026-12-01t10:00:00.1234567891z ")
def test_epoch_seconds_of_strings_as_written(value: str) -> None:
    assert epoch_seconds(value) == seconds_as_written(value)


def st_timespec(moment: Any) -> str:
    return ("seconds", "milliseconds", "microseconds")[moment.microsecond % 3]


def test_numbers_still_take_the_number_rules() -> None:
    assert epoch_seconds(1_700_000_000_123) == 1_700_000_000
    assert epoch_seconds(math.nan) is None
    assert epoch_seconds(True) is None


def clean_as_written(data: Mapping[Any, Any], stats: TransformStats | None, keep_arrays: bool) -> dict[str, Any]:
    """values.clean as first written: every value through kept()'s tests, the key through convert_key."""
    out: dict[str, Any] = {}
    for key, item in data.items():
        name = convert_key(key)
        if not 0 < len(name) <= MAX_KEY_LENGTH:
            if name and stats is not None:
                stats.keys_dropped += 1
            continue
        value = kept(item, stats, keep_arrays=keep_arrays)
        if value is not DROP:
            out[name] = value
    return out


@settings(max_examples=400, deadline=None)
@given(order_properties, st.booleans())
@example({"a": None, "A": 1, "b": math.nan, "c": [1, "x"], "d": {}, "e": True, "f": 2.5, "g": "é" * 200}, True)
def test_clean_as_written(data: dict[str, Any], keep_arrays: bool) -> None:
    one, two = TransformStats(), TransformStats()
    assert json.dumps(clean(data, one, keep_arrays=keep_arrays)) == json.dumps(clean_as_written(data, two, keep_arrays))
    assert one == two


def test_every_call_type_has_its_record_type() -> None:
    assert sorted(records._RECORD_TYPES) == sorted(CALL_TYPES)
    assert {kind for kind, record_type in records._RECORD_TYPES.items() if not record_type} == {"alias", "group"}


shape_keys = st.sampled_from(
    ["name", "Name", "firstName", "first_name", "products", "Products", "x", "", "$", "utm.source", "a" * 130]
) | st.text(max_size=6)
shape_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=3)
    | st.text(min_size=120, max_size=200)
    | st.sampled_from(["é" * 200, "é" * 300, "x" * 128, "x" * 129, "x" * 600])
    | st.lists(st.integers() | st.text(max_size=3) | st.none(), max_size=3)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)


def typed(value: Any) -> Any:
    """``value`` with the class of every scalar in it (``1``, ``True`` and ``1.0`` compare equal)."""
    if isinstance(value, dict):
        return [(key, typed(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (value.__class__, value)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(shape_keys, max_size=8, unique=True), st.lists(shape_values, min_size=8, max_size=8), st.data())
def test_a_key_known_by_the_names_table_gives_what_its_conversion_gives(
    keys: list[str], items: list[Any], data: Any
) -> None:
    """The pass with every key converted (an empty names table) against the same pass with the keys known (the table
    filled by the first): the same dict, key order, value classes, found value and counts, with and without arrays
    kept, with and without ``products`` asked for, for the same values and for others under the same keys."""
    from worker.transform import values

    keep_arrays = data.draw(st.booleans())
    find = data.draw(st.sampled_from([None, "products"]))
    saved = values._NAMES
    try:
        for round_values in (items, data.draw(st.permutations(items))):
            message = dict(zip(keys, round_values, strict=False))
            one, two = TransformStats(), TransformStats()
            values._NAMES = {}
            cold, cold_found = values._clean(message, one, keep_arrays, find)
            warm, warm_found = values._clean(message, two, keep_arrays, find)  # (its keys known now, when kept)
            assert typed(warm) == typed(cold)
            assert warm_found is cold_found
            assert one == two
    finally:
        values._NAMES = saved


def test_the_general_pass_remembers_kept_names_only_and_stays_bounded(monkeypatch: Any) -> None:
    """The general pass's table of names holds a key only when its name is kept (not empty, not too long) and the
    key is a short string; a full table is emptied and learns again; the answers are the conversion's either way."""
    from worker.transform import values

    monkeypatch.setattr(values, "_NAMES", {})
    monkeypatch.setattr(values, "MAX_NAMES", 3)
    data = {"firstName": 1, "$": 2, "x" * 121: 3, "k" * 65: 4, "Order ID": 5}
    for _ in range(2):  # learnt, then known
        assert values._clean(data, None, False, None)[0] == {"first_name": 1, "k" * 65: 4, "order_id": 5}
        assert values._NAMES == {"firstName": "first_name", "Order ID": "order_id"}
    stats = TransformStats()
    values._clean(data, stats, False, None)
    assert stats.keys_dropped == 1  # (the key too long; "$" converts to nothing: not counted)
    values._clean({"a": 1, "b": 2}, None, False, None)  # the fourth: full, emptied, learns again
    assert values._NAMES == {"b": "b"}
    assert values.clean_finding({"Products": [1], "x": 1}, "products") == ({"x": 1}, [1])
    assert values.clean_finding({"Products": [2], "x": 1}, "products") == ({"x": 1}, [2])  # (a known name found)
    products = [{"sku": "s"}]
    assert values.clean_finding({"x": 1, "Products": products}, "products")[1] is products  # (the value itself)
    assert values.clean_finding({"x": 1, "y": products}, "products") == ({"x": 1}, None)
    for slow in ({"firstName": 1, "first_name": 2}, {"$": 1}):  # (two keys, one name: the later wins; empty: dropped)
        assert values.clean(slow) == ({"first_name": 2} if "firstName" in slow else {})
