"""``parse`` (plain checks) against the pydantic models it replaced, side by side: the golden inputs, every message
literal of the ingest and message tests, and generated messages. Same normalised dict, or the same reason; with
``owned`` too."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_messages import model_parse

from worker.core.errors import MessageError
from worker.core.messages import CALL_TYPES, MAX_MESSAGE_ID, parse

TESTS = Path(__file__).resolve().parents[1]
IMPLIED = (None, *CALL_TYPES)


def outcome(check: Any, raw: object, implied_type: str | None) -> tuple[str, Any]:
    try:
        return "accepted", check(raw, implied_type)
    except MessageError as exc:
        return "rejected", exc.reason


def parse_owned(raw: object, implied_type: str | None) -> dict[str, Any]:
    return parse(copy.deepcopy(raw), implied_type, owned=True)


def assert_same(raw: object, implied_type: str | None = None) -> None:
    expected = outcome(model_parse, raw, implied_type)
    assert outcome(parse, raw, implied_type) == expected, (raw, implied_type)
    assert outcome(parse_owned, raw, implied_type) == expected, (raw, implied_type, "owned")


def golden_messages() -> list[Any]:
    return [json.loads(path.read_text())["message"] for path in sorted((TESTS / "transform/golden").glob("*.json"))]


def literals_of(path: Path) -> list[Any]:
    """Every dict literal in a test module (messages, batches, their parts): ``ast.literal_eval`` of each."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            try:
                found.append(ast.literal_eval(node))
            except ValueError:
                continue  # not a literal (names, calls, f-strings)
    return found


TEST_INPUTS = [
    raw
    for path in sorted([*(TESTS / "ingest").glob("test_*.py"), TESTS / "core/test_messages.py"])
    for raw in literals_of(path)
]


def test_the_inputs_are_there() -> None:
    assert len(golden_messages()) >= 80
    assert len(TEST_INPUTS) >= 150
    kinds = {outcome(parse, raw, None)[0] for raw in TEST_INPUTS}
    assert kinds == {"accepted", "rejected"}


@pytest.mark.parametrize("implied_type", IMPLIED)
def test_golden_inputs(implied_type: str | None) -> None:
    for raw in golden_messages():
        assert_same(raw, implied_type)


@pytest.mark.parametrize("implied_type", IMPLIED)
def test_inputs_of_the_ingest_tests(implied_type: str | None) -> None:
    for raw in TEST_INPUTS:
        assert_same(raw, implied_type)


# -- generated messages -----------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
ids = (
    st.text(max_size=6)
    | st.just("")
    | st.integers()
    | st.integers(min_value=10**98, max_value=10**102)
    | st.floats()
    | st.booleans()
    | st.text(min_size=MAX_MESSAGE_ID - 1, max_size=MAX_MESSAGE_ID + 2)
    | json_values
)
texts = st.text(max_size=6) | st.just("") | json_values
objects = st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values
kinds = st.sampled_from(CALL_TYPES) | st.sampled_from(["", "Track", "bogus"]) | json_values
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "type": kinds, "userId": ids, "anonymousId": ids, "previousId": ids, "groupId": ids, "messageId": ids,
    "event": texts, "name": texts, "category": texts, "writeKey": texts,
    "timestamp": texts, "originalTimestamp": texts, "sentAt": texts, "receivedAt": texts,
    "context": objects, "integrations": objects, "traits": objects, "properties": objects,
}  # fmt: skip
messages = st.builds(
    lambda known, unknown: unknown | known,
    st.fixed_dictionaries({}, optional=FIELDS),
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
)


@settings(max_examples=800, deadline=None, database=None)
@given(raw=messages | json_values, implied_type=st.sampled_from(IMPLIED))
def test_generated_messages(raw: Any, implied_type: str | None) -> None:
    assert_same(raw, implied_type)


@settings(max_examples=300, deadline=None, database=None)
@given(kind=st.sampled_from(CALL_TYPES), user=ids, anonymous=ids, other=ids, event=texts)
def test_generated_ids_of_each_call(kind: str, user: Any, anonymous: Any, other: Any, event: Any) -> None:
    """Ids of every JSON type in otherwise valid calls of each type (so ids, not other fields, decide)."""
    raw = {"type": kind, "userId": user, "anonymousId": anonymous, "previousId": other, "groupId": other}
    assert_same(raw | {"event": event})
    assert_same(raw | {"event": "E", "messageId": other})
