"""The transform, driven by the golden Segment → CleverTap pairs under ``tests/transform/golden/``.

Each golden file holds one rule: ``rule`` (the rule it proves), ``message``, optional
``settings`` (destination keys), ``now``, ``expected`` (``{"records": [...]}``, ``{"skipped": ...}`` or
``{"invalid": ...}``, as ``ctrelay transform`` prints it) and optional ``stats`` (keys dropped, values cut).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from worker.core.destinations import Destination
from worker.transform.records import Invalid, Skip, TransformStats, transform

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.json"))
NOW = 1_700_000_000.5


def outcome_of(result: list[dict[str, Any]] | Skip | Invalid) -> dict[str, Any]:
    if isinstance(result, Skip):
        return {"skipped": result.reason}
    if isinstance(result, Invalid):
        return {"invalid": result.reason}
    return {"records": result}


def run(message: Any, **settings: Any) -> list[dict[str, Any]] | Skip | Invalid:
    return transform(message, Destination(account_id="test", **settings), NOW)


def test_there_is_a_golden_file_for_every_section() -> None:
    sections = {json.loads(path.read_text())["rule"].split()[0] for path in GOLDEN}
    assert {"2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8"} <= sections


@pytest.mark.parametrize("path", GOLDEN, ids=[path.stem for path in GOLDEN])
def test_golden(path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    stats = TransformStats()
    destination = Destination(account_id="golden", **case.get("settings", {}))
    result = transform(case["message"], destination, case["now"], stats)
    assert outcome_of(result) == case["expected"], case["rule"]
    expected_stats = case.get("stats", {"keys_dropped": 0, "values_truncated": 0})
    assert {"keys_dropped": stats.keys_dropped, "values_truncated": stats.values_truncated} == expected_stats
    # Without a stats object the records are the same, and the message itself is never changed.
    assert outcome_of(transform(case["message"], destination, case["now"])) == case["expected"]
    assert case["message"] == json.loads(path.read_text(encoding="utf-8"))["message"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ([], "message: must be a JSON object"),
        ("track", "message: must be a JSON object"),
        ({"userId": "u"}, "type: required"),
        ({"type": ["track"], "userId": "u"}, "type: must be one of identify, track, page, screen, group, alias"),
        ({"type": "track", "userId": {"id": 1}, "anonymousId": True, "event": "E"}, "userId or anonymousId"),
        ({"type": "track", "userId": "u", "event": 5}, "event: required"),
        ({"type": "alias", "userId": "u", "previousId": ""}, "previousId: required"),
        ({"type": "alias", "anonymousId": "a", "previousId": "p"}, "userId: required"),
        ({"type": "group", "userId": "u"}, "groupId: required"),
    ],
)
def test_invalid_messages(message: Any, reason: str) -> None:
    result = run(message)
    assert isinstance(result, Invalid)
    assert result.reason.startswith(reason)


def test_invalid_wins_over_settings_that_would_skip() -> None:
    assert run({"type": "alias", "userId": "u"}, alias=False) == Invalid("previousId: required (a non-empty string)")


def test_skip_and_invalid_are_frozen_values() -> None:
    with pytest.raises(AttributeError):
        Skip("x").reason = "y"  # type: ignore[misc]
    assert Skip("a") == Skip("a")
    assert Invalid("a") != Skip("a")


def test_alias_sends_no_token_of_its_own_without_an_anonymous_id() -> None:
    context = {"device": {"token": "t", "type": "android"}}
    records = run({"type": "alias", "userId": "u", "previousId": "p", "context": context})
    assert isinstance(records, list)
    assert [r["type"] for r in records] == ["profile"]
    records = run({"type": "alias", "userId": "u", "anonymousId": "a", "previousId": "p", "context": context})
    assert isinstance(records, list)
    assert records[1] == {"type": "token", "objectId": "a", "tokenData": {"id": "t", "type": "fcm"}}


@pytest.mark.parametrize(
    "context",
    [
        "not an object",
        {"device": "not an object"},
        {"device": {"token": ""}, "os": {"name": "Android"}},
        {"device": {"token": 5, "type": "android"}},
        {"device": {"token": "t", "type": None}, "os": "Android"},
    ],
)
def test_no_token_record_without_a_usable_token_and_platform(context: Any) -> None:
    records = run({"type": "track", "anonymousId": "a", "event": "E", "context": context})
    assert isinstance(records, list)
    assert len(records) == 1


def test_os_name_is_read_before_device_type() -> None:
    context = {"device": {"token": "t", "type": "android"}, "os": {"name": " iPadOS "}}
    records = run({"type": "screen", "anonymousId": "a", "context": context})
    assert isinstance(records, list)
    assert records[1]["tokenData"] == {"id": "t", "type": "apns"}


def test_values_of_unusual_python_types_are_normalized_or_dropped() -> None:
    class Text(str):
        pass

    class Count(int):
        pass

    class Ratio(float):
        pass

    class Items(list[Any]):
        pass

    properties = {"t": Text("x" * 600), "c": Count(3), "r": Ratio(0.5), "nan": float("nan"), "inf": Ratio("inf")}
    properties |= {"tuple": (1, 2), "items": Items(["a"]), 7: "a key that is not a string"}
    stats = TransformStats()
    records = transform(
        {"type": "identify", "userId": "u", "traits": {**properties, "tags": Items(["a", 1]), "bad": Items([{}])}},
        Destination(account_id="test"),
        NOW,
        stats,
    )
    assert isinstance(records, list)
    data = records[0]["profileData"]
    assert data == {"t": "x" * 512, "c": 3, "r": 0.5, "items": ["a"], "tags": ["a", 1]}
    assert [type(data[k]) for k in ("t", "c", "r", "items")] == [str, int, float, list]
    assert stats.values_truncated == 1
    records = run({"type": "track", "userId": "u", "event": "E", "properties": {**properties, "b": True}})
    assert isinstance(records, list)
    assert records[0]["evtData"] == {"t": "x" * 512, "c": 3, "r": 0.5, "b": True}


def test_booleans_stay_booleans_and_boolean_arrays_are_dropped() -> None:
    records = run({"type": "identify", "userId": "u", "traits": {"a": True, "b": [True]}})
    assert isinstance(records, list)
    assert records[0]["profileData"] == {"a": True}


@pytest.mark.parametrize(
    ("total", "amount"),
    [
        (7, 7),
        (7.25, 7.25),
        ("+3", 3),
        ("-2.5e1", -25.0),
        (".5", 0.5),
        ("12345678901234567890123", 1.2345678901234568e22),
        ("1" * 400, None),
        ("1e999", None),
        ("nan", None),
        ("1_000", None),
        ("", None),
        (True, None),
        (float("inf"), None),
    ],
)
def test_amount_from_numbers_and_numeric_strings(total: Any, amount: Any) -> None:
    records = run({"type": "track", "userId": "u", "event": "Order Completed", "properties": {"total": total}})
    assert isinstance(records, list)
    assert records[0]["evtData"].get("Amount") == amount


def test_products_not_a_list_is_not_repeated_and_makes_no_items() -> None:
    properties = {"Products": "p1", "order_id": None, "revenue": 5}
    records = run({"type": "track", "userId": "u", "event": "Order Completed", "properties": properties})
    assert isinstance(records, list)
    assert records[0]["evtData"] == {"revenue": 5, "Amount": 5}


def test_the_last_spelling_of_products_wins() -> None:
    properties = {"products": [{"a": 1}], "Products": [{"b": 2}]}
    records = run({"type": "track", "userId": "u", "event": "Order Completed", "properties": properties})
    assert isinstance(records, list)
    assert records[0]["evtData"] == {"Items": [{"b": 2}]}


def test_long_event_names_are_cut_and_counted() -> None:
    stats = TransformStats()
    records = transform({"type": "track", "userId": "u", "event": "é" * 300}, Destination(account_id="t"), NOW, stats)
    assert isinstance(records, list)
    assert records[0]["evtName"] == "é" * 256
    assert stats.values_truncated == 1


def test_importing_the_transform_pulls_in_no_io_clock_or_environment() -> None:
    """In a fresh interpreter: no Redis/HTTP/Celery/Prometheus module, and no clock or environment read."""
    probe = r"""
import datetime, os, sys, time

from worker.core.destinations import Destination  # pydantic and the settings model load before the guards
from worker.core.messages import parse

class Forbidden(Exception):
    pass

def forbid(*args, **kwargs):
    raise Forbidden("clock read")

class GuardedDateTime(datetime.datetime):
    now = utcnow = today = classmethod(forbid)

class GuardedEnviron(dict):
    def __getitem__(self, key): raise Forbidden("environment read")
    get = __contains__ = keys = items = copy = __getitem__

datetime.datetime = GuardedDateTime
time.time = time.time_ns = time.monotonic = time.perf_counter = time.localtime = time.gmtime = forbid
os.environ = GuardedEnviron()
os.getenv = forbid

import worker.transform.records
from worker.transform.records import transform

destination = Destination(account_id="x")
ctx = {"device": {"token": "t", "type": "ios"}}
messages = [
    {"type": "identify", "userId": "u", "anonymousId": "a", "context": ctx,
     "traits": {"email": "a@b.co", "birthday": "1990-01-01", "phone": 5, "firstName": "A", "tags": ["x"]}},
    {"type": "track", "userId": "u", "event": "Order Completed", "timestamp": "2024-01-05T10:00:00.1+01:00",
     "properties": {"total": "5", "products": [{"sku": "s" * 600}]}},
    {"type": "page", "anonymousId": "a", "name": "N", "originalTimestamp": 1704448800},
    {"type": "screen", "anonymousId": "a", "receivedAt": "bad"},
    {"type": "alias", "userId": "u", "previousId": "p"},
    {"type": "group", "userId": "u", "groupId": "g"},
    {"type": "nope"},
]
for message in messages:
    transform(message, destination, 1.0)
forbidden = {"redis", "httpx", "celery", "prometheus_client", "kombu", "structlog", "fastapi", "uvicorn"}
loaded = sorted(name for name in sys.modules if name.split(".")[0] in forbidden)
print("LOADED", loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LOADED []"


def test_any_mapping_is_an_object() -> None:
    from types import MappingProxyType

    message = MappingProxyType(
        {
            "type": "track",
            "anonymousId": "a",
            "event": "Order Completed",
            "properties": MappingProxyType({"products": [MappingProxyType({"sku": "s"})]}),
            "context": MappingProxyType({"device": MappingProxyType({"token": "t", "type": "ios"})}),
        }
    )
    records = run(message)
    assert isinstance(records, list)
    assert records[0]["evtData"] == {"Items": [{"sku": "s"}]}
    assert records[1]["tokenData"] == {"id": "t", "type": "apns"}


@pytest.mark.parametrize(
    ("integrations", "skipped"),
    [
        ("not an object", False),
        ({}, False),
        ({"CleverTap": True, "All": False}, False),
        ({"CleverTap": 0}, False),  # only false turns a destination off
        ({"All": True, "CleverTap": False}, True),
        ({"clevertap": False}, False),  # Segment matches the destination's name exactly
    ],
)
def test_integrations(integrations: Any, skipped: bool) -> None:
    result = run({"type": "screen", "userId": "u", "integrations": integrations})
    assert (result == Skip("disabled_by_integrations")) is skipped


def test_invalid_wins_over_integrations_and_integrations_over_group() -> None:
    assert isinstance(run({"type": "track", "userId": "u", "integrations": {"All": False}}), Invalid)
    group = {"type": "group", "userId": "u", "groupId": "g", "integrations": {"CleverTap": False}}
    assert run(group) == Skip("disabled_by_integrations")


def test_lone_surrogates_and_long_keys_never_raise() -> None:
    stats = TransformStats()
    properties = {"\ud800key": "\udfff" * 300, "k" * 5000: 1, "ok" + "$" * 300: "v"}
    records = transform(
        {"type": "track", "userId": "u", "event": "E", "properties": properties},
        Destination(account_id="t"),
        NOW,
        stats,
    )
    assert isinstance(records, list)
    data = records[0]["evtData"]
    assert data["ok"] == "v"
    assert data["key"] == "\udfff" * 170  # 3 bytes each in surrogatepass: cut at 510 bytes
    assert stats.keys_dropped == 1
