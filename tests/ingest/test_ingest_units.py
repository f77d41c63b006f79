"""Ingest's pure parts: bounded decompression, write-key resolution, signatures, enrichment."""

from __future__ import annotations

import base64
import contextlib
import gzip
import zlib
from datetime import UTC, datetime, timedelta, timezone
from unittest import mock

import pytest
from hypothesis import given as generated
from hypothesis import strategies as st
from pydantic import SecretStr

from ingest import body
from ingest.tracking import auth
from ingest.tracking import enrich as enrich_module
from ingest.tracking.enrich import Request, enrich, format_time, instant, merge, parse_time
from worker.core.destinations import Destination, Destinations
from worker.core.errors import RequestError

RECEIVED = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def test_gzip_and_deflate_bodies_are_undone() -> None:
    data = b'{"batch": []}'
    assert body.decompress(gzip.compress(data), "gzip", 100) == data
    assert body.decompress(zlib.compress(data), "deflate", 100) == data
    assert body.decompress(data, None, 100) == data


def test_gzip_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)
    with pytest.raises(RequestError) as caught:
        body.decompress(bomb, "gzip", 1000)
    assert (caught.value.status, caught.value.code) == (400, "body_too_large")


@pytest.mark.parametrize(
    ("data", "encoding", "code"),
    [
        (b"not gzip", "gzip", "invalid_encoding"),
        (gzip.compress(b'{"a": 1}')[:-12], "gzip", "invalid_encoding"),
        (b"{}", "br", "unsupported_encoding"),
        (b"x" * 101, None, "body_too_large"),
    ],
)
def test_bad_encodings(data: bytes, encoding: str | None, code: str) -> None:
    with pytest.raises(RequestError) as caught:
        body.decompress(data, encoding, 100)
    assert caught.value.code == code


def test_invalid_json() -> None:
    for data in (b"", b"{", b"\xff"):
        with pytest.raises(RequestError) as caught:
            body.parse_json(data)
        assert (caught.value.status, caught.value.code) == (400, "invalid_json")


def basic(value: str) -> str:
    return "Basic " + base64.b64encode(value.encode()).decode()


def test_basic_write_key_with_or_without_colon() -> None:
    assert auth.basic_write_key(basic("wk:")) == "wk"
    assert auth.basic_write_key(basic("wk")) == "wk"
    assert auth.basic_write_key(None) is None
    assert auth.basic_write_key("Bearer abc") is None
    with pytest.raises(RequestError) as caught:
        auth.basic_write_key("Basic %%%")
    assert caught.value.status == 401


def test_resolve_write_keys() -> None:
    destinations = Destinations([Destination(write_key="wk", account_id="A")])
    assert auth.resolve(destinations, {"wk"}).account_id == "A"
    for given, code in (({"x"}, "unknown_write_key"), ({"wk", "x"}, "conflicting_write_keys"), (set(), "missing")):
        with pytest.raises(RequestError) as caught:
            auth.resolve(destinations, given)
        assert caught.value.status == 401
        assert caught.value.code.startswith(code)


def test_body_write_keys() -> None:
    assert auth.body_write_keys({"writeKey": "a"}, [{"writeKey": "b"}, {"writeKey": ""}, 3]) == {"a", "b"}
    with pytest.raises(RequestError, match="writeKey"):
        auth.body_write_keys(None, [{"writeKey": 5}])


def test_signature() -> None:
    hooked = Destination(write_key="wk", account_id="A", webhook_secret=SecretStr("s"))
    good = auth.sign("s", b"{}")
    auth.check_signature(hooked, b"{}", good)
    auth.check_signature(hooked, b"{}", good.upper())
    auth.check_signature(Destination(write_key="wk", account_id="A"), b"{}", None)
    for signature in (None, "00", auth.sign("other", b"{}")):
        with pytest.raises(RequestError) as caught:
            auth.check_signature(hooked, b"{}", signature)
        assert caught.value.status == 401


def test_merge_is_deep_and_the_item_wins() -> None:
    base = {"library": {"name": "x", "version": "1"}, "ip": "1.1.1.1"}
    assert merge(base, {"library": {"version": "2"}, "locale": "fr"}) == {
        "library": {"name": "x", "version": "2"},
        "ip": "1.1.1.1",
        "locale": "fr",
    }
    assert base["library"] == {"name": "x", "version": "1"}


def test_clock_skew_is_corrected_for_clients() -> None:
    # The client's clock is 10 minutes fast: it stamped the event 1 s before sending.
    message = {"type": "track", "timestamp": "2026-11-28T12:10:00Z", "sentAt": "2026-11-28T12:10:01Z"}
    enrich(message, Request(received=RECEIVED), format_time(RECEIVED))
    assert message["timestamp"] == "2026-11-28T11:59:59.000Z"
    assert message["originalTimestamp"] == "2026-11-28T12:10:00Z"
    assert message["receivedAt"] == "2026-11-28T12:00:00.000Z"
    assert message["messageId"]


def test_batch_sent_at_context_and_integrations() -> None:
    request = Request(
        received=RECEIVED,
        sent_at="2026-11-28T12:00:05+00:00",
        context={"library": {"name": "lib"}, "ip": "1.2.3.4"},
        integrations={"All": True},
    )
    message = {"type": "track", "timestamp": "2026-11-28T12:00:04Z", "context": {"ip": "5.6.7.8"}, "messageId": "m1"}
    enrich(message, request, format_time(RECEIVED))
    assert message["timestamp"] == "2026-11-28T11:59:59.000Z"
    assert message["context"] == {"library": {"name": "lib"}, "ip": "5.6.7.8"}
    assert message["integrations"] == {"All": True}
    assert message["messageId"] == "m1"


@pytest.mark.parametrize("timestamp", ["yesterday", 12345, "", None, "0001-01-01T00:00:00+01:00"])
def test_malformed_or_missing_timestamp_falls_back_to_received_at(timestamp: object) -> None:
    message = {"type": "track", "timestamp": timestamp} if timestamp is not None else {"type": "track"}
    enrich(message, Request(received=RECEIVED, sent_at="2026-11-28T12:00:05Z"), format_time(RECEIVED))
    assert message["timestamp"] == "2026-11-28T12:00:00.000Z"


def test_a_correction_out_of_range_falls_back_to_received_at() -> None:
    message = {"type": "track", "timestamp": "9999-12-31T23:59:59Z"}
    enrich(message, Request(received=RECEIVED, sent_at="2026-11-28T11:00:00Z"), format_time(RECEIVED))
    assert message["timestamp"] == "2026-11-28T12:00:00.000Z"


def test_no_skew_correction_for_webhooks() -> None:
    message = {"type": "track", "timestamp": "2026-11-28T10:00:00.000Z", "sentAt": "2026-11-28T12:10:01Z"}
    enrich(message, Request(received=RECEIVED, correct_skew=False), format_time(RECEIVED))
    assert message["timestamp"] == "2026-11-28T10:00:00.000Z"
    assert "originalTimestamp" not in message


def test_the_requests_sent_at_is_parsed_once_for_its_messages() -> None:
    request = Request(received=RECEIVED, sent_at="2026-11-28T12:00:05Z")
    sent = datetime(2026, 11, 28, 12, 0, 5, tzinfo=UTC)
    assert request.sent_instant == (sent - datetime.min.replace(tzinfo=UTC)) // timedelta(microseconds=1)
    assert request.received_text == format_time(RECEIVED) == "2026-11-28T12:00:00.000Z"
    assert Request(received=RECEIVED, sent_at="not a time").sent_instant is None
    assert Request(received=RECEIVED).sent_instant is None
    stamps = []
    with mock.patch.object(enrich_module, "instant", wraps=instant) as parsed:  # (each time is read as an instant)
        for own in (None, None, "2026-11-28T12:00:03Z"):
            message = {"type": "track", "timestamp": "2026-11-28T12:00:01Z"}
            if own is not None:
                message["sentAt"] = own  # an item's own wins
            stamps.append(enrich(message, request, request.received_text)["timestamp"])
    assert stamps == ["2026-11-28T11:59:56.000Z", "2026-11-28T11:59:56.000Z", "2026-11-28T11:59:58.000Z"]
    assert [call.args[0] for call in parsed.call_args_list] == [
        "2026-11-28T12:00:01Z",  # the timestamps, and the item's own sentAt only
        "2026-11-28T12:00:01Z",
        "2026-11-28T12:00:01Z",
        "2026-11-28T12:00:03Z",
    ]


def test_an_original_timestamp_given_as_null_is_kept_as_given() -> None:
    """(``enrich`` of a message ``parse`` did not normalize: a present ``originalTimestamp`` wins, even null.)"""
    message = {"type": "track", "originalTimestamp": None, "timestamp": "2026-11-28T11:00:00Z"}
    enrich(message, Request(received=RECEIVED), format_time(RECEIVED))
    assert message["timestamp"] == "2026-11-28T12:00:00.000Z"


def test_parse_time_naive_means_utc() -> None:
    assert parse_time("2026-11-28T12:00:00") == RECEIVED
    assert parse_time("nope") is None


@pytest.mark.parametrize("size", [0, 1, 300, 16 * 1024, 16 * 1024 + 1, 200_000])
@pytest.mark.parametrize("brackets", [0, 31, 32, 33])
def test_shallow_counts_the_brackets_of_a_small_and_a_big_body_alike(size: int, brackets: int) -> None:
    """At most ``limit`` brackets (``{`` and ``[``; ``}``, ``]`` and text do not count), whatever the body's size."""
    opening = (b"{[" * brackets)[:brackets]
    data = opening + b'"}]x' * max(0, (size - brackets) // 4)
    assert body.shallow(data, 32) is (brackets <= 32)
    assert body.shallow(data, brackets) is True
    if brackets:
        assert body.shallow(data, brackets - 1) is False


@generated(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.lists(st.integers(min_value=-2500, max_value=2500), min_size=1, max_size=12),
    st.booleans(),
)
def test_a_requests_received_text_is_format_times_within_a_millisecond_and_across(
    moment: datetime, steps: list[int], aware: bool
) -> None:
    """Requests received in one millisecond share its text (the one kept): each one's is still format_time's of its
    own moment, on either side of a millisecond's edge, back in time too, and for a naive or non-UTC moment."""
    moment = moment.replace(tzinfo=UTC) if aware else moment
    for step in steps:
        with contextlib.suppress(OverflowError):
            moment += timedelta(microseconds=step)
        received = moment if aware or step % 2 else moment.replace(tzinfo=timezone(timedelta(hours=-3)))
        assert Request(received=received).received_text == format_time(received)


def test_the_received_text_is_kept_for_its_millisecond_only() -> None:
    first = datetime(2026, 11, 28, 12, 0, 0, 123_999, tzinfo=UTC)
    with mock.patch.object(enrich_module, "format_time", wraps=format_time) as formatted:
        texts = [Request(received=first - timedelta(microseconds=step)).received_text for step in (0, 1, 999, 0)]
        assert texts == ["2026-11-28T12:00:00.123Z"] * 4
        assert formatted.call_count == 1
        assert Request(received=first + timedelta(microseconds=1)).received_text == "2026-11-28T12:00:00.124Z"
        assert Request(received=first - timedelta(microseconds=1000)).received_text == "2026-11-28T12:00:00.122Z"
        assert formatted.call_count == 3
    last = datetime.max.replace(tzinfo=UTC)
    assert Request(received=last).received_text == "9999-12-31T23:59:59.999Z"
