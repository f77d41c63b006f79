"""The clock-skew correction on integer instants gives exactly what it gave on datetimes (hypothesis).

:func:`~ingest.tracking.enrich.enrich` corrects ``timestamp = receivedAt - (sentAt - originalTimestamp)`` on
microseconds (:func:`~ingest.tracking.enrich.instant`, :func:`~ingest.tracking.enrich.text_of`);
``corrected_as_written`` below is the correction as it was written on datetimes (``parse_time``, the subtraction,
``format_time``, ``OverflowError``/``ValueError`` meaning out of range: ``receivedAt``), kept here only as the
reference. Generated: times over datetime's whole range (both ends), in any fixed offset (seconds and microseconds
of offset too) or naive, written in every ``isoformat`` precision, with ``Z`` or ``+00:00``; the batch's ``sentAt``
or an item's own or none; a received time in UTC (as ingest's clock gives it), in another zone, or naive.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest.tracking.enrich import Request, enrich, format_time, instant, parse_time, text_of

BRASILIA = timezone(timedelta(hours=-3))
FIRST = datetime.min
LAST = datetime.max
ZONES = st.one_of(
    st.none(),
    st.just(UTC),
    st.builds(
        timezone,
        st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)),
    ),
    st.sampled_from([timezone(timedelta(hours=14)), timezone(timedelta(hours=-12)), timezone(timedelta(0))]),
)


@st.composite
def times(draw: st.DrawFn, first: datetime = FIRST, last: datetime = LAST) -> str:
    """A time's text as clients write it."""
    moment = draw(st.datetimes(min_value=first, max_value=last)).replace(tzinfo=draw(ZONES))
    spec = draw(st.sampled_from(["auto", "seconds", "milliseconds", "microseconds"]))
    text = moment.isoformat(timespec=spec, sep=draw(st.sampled_from(["T", " "])))
    return text[:-6] + "Z" if text.endswith("+00:00") and draw(st.booleans()) else text


def corrected_as_written(original: object, sent_at: object, received: datetime, received_text: str) -> str:
    """The correction before integer instants: on datetimes."""
    client = parse_time(original)
    if client is None:
        return received_text
    sent = parse_time(sent_at)
    try:
        return format_time(client if sent is None else received - (sent - client))
    except (OverflowError, ValueError):
        return received_text


@settings(max_examples=600, deadline=None)
@given(st.datetimes(min_value=FIRST, max_value=LAST), ZONES)
@example(FIRST, None)
@example(LAST, None)
@example(datetime(2024, 2, 29, 23, 59, 59, 999_999), None)
@example(datetime(1, 1, 1, 0, 59), timezone(timedelta(hours=1)))  # (its UTC instant is out of range)
def test_text_of_an_instant_is_format_time_of_the_time(moment: datetime, zone: timezone | None) -> None:
    moment = moment.replace(tzinfo=zone)
    found = instant(moment.isoformat())
    aware = moment if zone is not None else moment.replace(tzinfo=UTC)
    assert found == (aware - datetime.min.replace(tzinfo=UTC)) // timedelta(microseconds=1)
    try:
        expected: str | None = format_time(aware)
    except OverflowError:  # (past the range's ends once in UTC)
        expected = None
    assert (text_of(found) if 0 <= found <= (LAST - FIRST) // timedelta(microseconds=1) else None) == expected


@settings(max_examples=1500, deadline=None)
@given(
    st.one_of(times(), st.sampled_from(["", "yesterday", "2026-13-01T00:00:00Z"]), st.integers(), st.none()),
    st.one_of(times(), st.sampled_from(["", "nope"]), st.none()),
    st.sampled_from(["batch", "own", "both", "none"]),
    st.one_of(
        st.datetimes(min_value=FIRST, max_value=LAST).map(lambda moment: moment.replace(tzinfo=UTC)),
        st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)).map(
            lambda moment: moment.replace(tzinfo=timezone(timedelta(hours=-3)))
        ),
        st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),  # (naive: the local zone)
    ),
)
@example("9999-12-31T23:59:59.999999+00:00", None, "none", datetime(2026, 11, 28, tzinfo=UTC))
@example("0001-01-01T00:00:00+01:00", None, "none", datetime(2026, 11, 28, tzinfo=UTC))
@example("0001-01-01T00:00:00", None, "none", datetime(2026, 11, 28, tzinfo=UTC))  # (the first instant: in range)
@example("0001-01-01T00:00:00", "0001-01-01T00:00:00.001", "batch", FIRST.replace(tzinfo=UTC))
@example(  # (in range in UTC, not in the received time's zone: out of range, as on datetimes)
    "0001-01-01T01:00:00Z", "2026-11-28T12:00:00Z", "batch", datetime(2026, 11, 28, 9, tzinfo=BRASILIA)
)
@example("9999-12-31T23:59:59Z", "2026-11-28T11:00:00Z", "own", datetime(2026, 11, 28, 12, tzinfo=UTC))
@example("2026-11-28T12:00:00.5+00:00:00.250000", "2026-11-28T12:00:01-11:00", "both", LAST.replace(tzinfo=UTC))
@example("2026-11-28T12:00:00Z", "2026-11-28T12:00:01Z", "batch", datetime(9998, 12, 31, 23, 59))
def test_the_skew_correction_is_the_one_on_datetimes(
    original: object, sent: str | None, where: str, received: datetime
) -> None:
    batch_sent = sent if where in ("batch", "both") else None
    own_sent = sent if where in ("own", "both") else None
    request = Request(received, batch_sent)
    message: dict[str, object] = {"type": "track", "userId": "u", "messageId": "m"}
    if original is not None:
        message["timestamp"] = original
    if own_sent is not None:
        message["sentAt"] = own_sent
    expected = corrected_as_written(
        original, own_sent if own_sent is not None else batch_sent, received, request.received_text
    )
    assert enrich(message, request, request.received_text)["timestamp"] == expected


def test_only_short_texts_are_cached_whatever_a_client_sends() -> None:
    """A huge ``timestamp`` (refused later as too large, or just not a time) is never kept by the cache of
    :func:`instant`: what it holds is bounded by entries *and* by their size."""
    from ingest.tracking import enrich as module

    huge = "2026-11-28T12:00:00Z" + " " * 400_000
    assert instant(huge) is None
    assert instant("") is None
    assert huge not in module._instants
    assert "" not in module._instants
    assert all(len(text) <= 64 for text in module._instants)
    assert instant("2026-11-28T12:00:00Z") == (datetime(2026, 11, 28, 12, tzinfo=UTC) - FIRST.replace(tzinfo=UTC)) // (
        timedelta(microseconds=1)
    )
