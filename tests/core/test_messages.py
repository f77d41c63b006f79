"""The message model: ids, required fields, null as absent, unknown keys kept."""

from __future__ import annotations

from typing import Any

import pytest

from worker.core.errors import MessageError
from worker.core.messages import parse


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
