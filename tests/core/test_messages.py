"""The message model: ids, required fields, null as absent, unknown keys kept."""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core import messages as messages_module
from worker.core.errors import MessageError
from worker.core.messages import CALL_TYPES, MAX_MESSAGE_ID, parse


def test_numbers_as_ids_become_strings_and_nulls_are_absent() -> None:
    message = parse({"type": "track", "userId": 42, "anonymousId": None, "event": "E", "extra": {"k": 1}})
    assert message == {"type": "track", "userId": "42", "event": "E", "extra": {"k": 1}}


def test_implied_type_wins() -> None:
    assert parse({"type": "track", "anonymousId": "a"}, implied_type="identify")["type"] == "identify"


def test_float_ids() -> None:
    assert parse({"type": "identify", "userId": 7.0})["userId"] == "7"
    assert parse({"type": "identify", "userId": 7.5})["userId"] == "7.5"


def test_nulls_inside_objects_are_kept() -> None:
    assert parse({"type": "identify", "userId": "u", "traits": {"a": None}})["traits"] == {"a": None}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([], "must be a JSON object"),
        ({"userId": "u"}, "type: required"),
        ({"type": "bogus", "userId": "u"}, "type: must be one of"),
        ({"type": "identify"}, "userId or anonymousId"),
        ({"type": "identify", "userId": ""}, "userId or anonymousId"),
        ({"type": "identify", "userId": True}, "userId"),
        ({"type": "track", "userId": "u"}, "event: required"),
        ({"type": "track", "userId": "u", "event": ""}, "event"),
        ({"type": "group", "userId": "u"}, "groupId: required"),
        ({"type": "alias", "userId": "u"}, "previousId: required"),
        ({"type": "alias", "anonymousId": "a", "previousId": "p"}, "userId: required"),
        ({"type": "identify", "userId": "u", "traits": [1]}, "traits"),
        ({"type": "identify", "userId": "u", "context": "x"}, "context"),
        ({"type": "identify", "userId": "u", "messageId": "m" * 101}, "messageId"),
    ],
)
def test_invalid_messages(raw: Any, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        parse(raw)


def test_group_id_number() -> None:
    assert parse({"type": "group", "userId": "u", "groupId": 5})["groupId"] == "5"


# -- the first check, and owned ----------------------------------------------------------------------------

PLAIN = {"type": "track", "userId": "u", "event": "E", "messageId": "m", "properties": {"a": None}}


def test_owned_returns_the_plain_message_itself() -> None:
    raw = {"event": "E", "anonymousId": "a", "context": {"ip": "x"}}
    message = parse(raw, "track", owned=True)
    assert message is raw
    assert list(message) == ["event", "anonymousId", "context", "type"]  # (the type set in place, last as a copy)
    given = dict(PLAIN)
    assert parse(given, owned=True) is given


def test_owned_copies_what_the_rules_normalize_and_leaves_it() -> None:
    for raw, normalized in [
        ({"type": "track", "userId": 42, "event": "E"}, {"type": "track", "userId": "42", "event": "E"}),
        ({"type": "track", "userId": "u", "anonymousId": None, "event": "E"},
         {"type": "track", "userId": "u", "event": "E"}),
        ({"type": "track", "userId": "u", "event": "E", "previousId": 7.0},
         {"type": "track", "userId": "u", "event": "E", "previousId": "7"}),
    ]:  # fmt: skip
        before = copy.deepcopy(raw)
        message = parse(raw, owned=True)
        assert message is not raw
        assert message == normalized
        assert raw == before


def test_owned_refuses_as_parse_does() -> None:
    for raw in ({"type": "track", "userId": "u"}, {"type": "alias", "userId": "u", "previousId": ""}, {"type": 1}):
        with pytest.raises(MessageError) as owned:
            parse(copy.deepcopy(raw), owned=True)
        with pytest.raises(MessageError) as copied:
            parse(raw)
        assert owned.value.reason == copied.value.reason


def test_without_owned_a_new_dict_and_the_given_one_unchanged() -> None:
    given = copy.deepcopy(PLAIN)
    message = parse(given, "identify")
    assert message is not given
    assert given == PLAIN
    assert message == {**PLAIN, "type": "identify"}


class _Sub(dict[str, Any]):
    pass


def test_a_dict_subclass_becomes_a_dict_even_owned() -> None:
    message = parse(_Sub(PLAIN), owned=True)
    assert type(message) is dict
    assert message == PLAIN


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
values = json_values | st.text(max_size=3) | st.just("") | st.text(min_size=MAX_MESSAGE_ID, max_size=MAX_MESSAGE_ID + 1)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(CALL_TYPES) | json_values},
    optional={
        name: values | st.dictionaries(st.text(max_size=3), json_values, max_size=2)
        for name in (
            "userId",
            "anonymousId",
            "previousId",
            "groupId",
            "messageId",
            "event",
            "name",
            "category",
            "writeKey",
            "context",
            "integrations",
            "traits",
            "properties",
        )
    },
)


@settings(max_examples=1500, deadline=None, database=None)
@given(raw=messages, implied_type=st.sampled_from((None, *CALL_TYPES)))
def test_the_first_check_decides_only_what_the_rules_accept_unchanged(raw: dict[str, Any], implied_type: Any) -> None:
    """Whenever the first check decides, the rules field by field (the check switched off) accept the message and
    return the same dict; and parse's outcome never depends on the check."""

    def slow(given: dict[str, Any]) -> tuple[str, Any]:
        with mock.patch.object(messages_module, "_plain", return_value=False):
            try:
                return "accepted", parse(given, implied_type)
            except MessageError as exc:
                return "rejected", exc.reason

    def fast(given: dict[str, Any]) -> tuple[str, Any]:
        try:
            return "accepted", parse(given, implied_type, owned=True)
        except MessageError as exc:
            return "rejected", exc.reason

    kind = raw.get("type") if implied_type is None else implied_type
    without_nulls = {key: value for key, value in raw.items() if value is not None}
    if messages_module._plain(without_nulls, kind):
        expected = {**without_nulls, "type": kind} if implied_type is not None else without_nulls
        assert slow(copy.deepcopy(raw)) == ("accepted", expected)
    assert fast(copy.deepcopy(raw)) == slow(copy.deepcopy(raw))
