"""Segment timestamps to CleverTap's whole epoch seconds, and ISO dates to ``$D_`` dates .

ISO 8601 strings with any offset (``Z``, ``+05:30``, ``+0530``, ``+05``, none = UTC) and any fraction
(milliseconds, microseconds, the nanoseconds Engage sends; ``.`` or ``,``), extended or basic format.
**Decision:** a JSON number is accepted too, as epoch seconds, or epoch milliseconds when it is above
10^11 (that is after the year 5138 in seconds). Anything else is "no timestamp" (``None``), never an error.

Pure: no clock is read here; arithmetic is exact (no float rounding at the second).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY = 86_400
_MILLISECONDS_ABOVE = 1e11
_FIRST_SECOND, _LAST_SECOND = -62_135_596_800, 253_402_300_799  # years 1 to 9999, as for ISO strings
_LARGEST_MILLISECONDS = 1e16  # above any epoch in milliseconds of the years 1 to 9999
_LONG_FRACTION = re.compile(r"([.,]\d{6})\d+")
_fromisoformat = datetime.fromisoformat


def _parse_iso(text: str) -> datetime | None:
    """An ISO 8601 date or date-time, as written (offset kept, not converted); ``None`` when it is not one."""
    try:
        return _fromisoformat(text)
    except ValueError:
        return _loose(text)


def _loose(text: str) -> datetime | None:
    """What fromisoformat rejects but ISO allows: lower-case designators, padding, more than 9 fraction digits."""
    cleaned = _LONG_FRACTION.sub(r"\1", text.strip().upper())
    try:
        return _fromisoformat(cleaned)
    except ValueError:
        return None


def _whole_seconds(moment: datetime) -> int:
    """Whole epoch seconds (floor) of ``moment``; a moment without an offset is UTC."""
    delta: timedelta = moment - (_EPOCH_NAIVE if moment.tzinfo is None else _EPOCH)
    return delta.days * _DAY + delta.seconds


def epoch_seconds(value: object) -> int | None:
    """Whole epoch seconds of a Segment timestamp, or ``None`` when ``value`` is not a usable one.

    >>> epoch_seconds("2024-01-05T10:00:00.123456789+01:00"), epoch_seconds("2024-01-05T09:00:00Z")
    (1704445200, 1704445200)
    """
    if isinstance(value, str):  # (_parse_iso's first step here: the worker's hot path, one call less)
        if len(value) > 64:
            return None
        try:
            moment: datetime | None = _fromisoformat(value)
        except ValueError:
            moment = _loose(value)
        return None if moment is None else _whole_seconds(moment)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not -_LARGEST_MILLISECONDS <= value <= _LARGEST_MILLISECONDS:  # also False for NaN
        return None
    whole = math.floor(value / 1000 if abs(value) > _MILLISECONDS_ABOVE else value)
    return whole if _FIRST_SECOND <= whole <= _LAST_SECOND else None


def clevertap_date(value: object) -> str | None:
    """CleverTap's date value ``$D_<epoch seconds at 00:00 UTC>`` of an ISO date, or of the date part of an
    ISO date-time as written (its offset ignored); ``None`` when ``value`` is not one.

    >>> clevertap_date("1990-05-17"), clevertap_date("1990-05-17T23:30:00-05:00")
    ('$D_642902400', '$D_642902400')
    """
    if not isinstance(value, str) or len(value) > 64:
        return None
    moment = _parse_iso(value)
    if moment is None:
        return None
    return f"$D_{(moment.toordinal() - _EPOCH_ORDINAL) * _DAY}"
