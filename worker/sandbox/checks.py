"""The sandbox's per-record checks: which CleverTap code an upload record earns, if any.

Cheap on purpose (a few dict look-ups per record): the sandbox must accept tens of thousands of
records a second. What is checked, by record type:

- any: a JSON object whose ``type`` is ``event``, ``profile`` or ``token``, else 524.
- event / profile: ``objectId``, when given, a non-empty string of at most 512 bytes without
  whitespace, else 526; ``identity`` (a non-empty string or an integer) or ``objectId`` (or
  ``FBID``/``GPID``), else 523; ``ts``, when given, whole epoch seconds, after 0 and at most one
  day ahead, else 525 (milliseconds are thus rejected).
- event: ``evtName`` a non-empty string, else 509; ``evtData`` (optional) an object whose values are
  scalars or arrays (objects only inside arrays, as Charged's ``Items``), else 512; a restricted
  system event name, 513; more than 256 properties, 522.
- profile: ``profileData`` (optional) an object, else 512; ``Gender`` M/F/O/U, 514; ``Email``
  ``local@domain.tld`` without spaces, 515; ``Phone`` ``+`` and 6-15 digits, 516; ``Employed``
  Y/N, 517; ``Education`` School/College/Graduate, 518; ``Married`` Y/N, 519; ``Age`` an integer
  0-150, 520; the communication preferences ``MSG-email``, ``MSG-push``, ``MSG-sms``, ``MSG-whatsapp``,
  ``MSG-dndPhone``, ``MSG-dndEmail`` booleans, and ``Customer Type`` a string, else 512 (CleverTap
  documents the values, not a code of their own: the sandbox's choice).
- token: ``objectId`` as above, 530; ``tokenData`` an object, 531; its ``id`` present, 532, and a
  non-empty string of at most 4096 characters, 535; its ``type`` present, 533, and one of
  fcm/apns/gcm/xps/wns/hps/bps, 534.

Keys longer than 120 characters and string values longer than 512 bytes are not rejected (CleverTap
documents the limits, not a code); they are counted in the stats so that tests can see them.
"""

from __future__ import annotations

import re
from typing import Any

RESTRICTED_EVENTS = frozenset(
    {
        "App Launched",
        "App Installed",
        "App Uninstalled",
        "Notification Sent",
        "Notification Viewed",
        "Notification Clicked",
        "UTM Visited",
        "Stayed",
        "Reply Received",
        "Geocluster Entered",
        "Geocluster Exited",
    }
)
"""System events CleverTap raises itself; uploading one is answered 513."""

TOKEN_TYPES = frozenset({"fcm", "apns", "gcm", "xps", "wns", "hps", "bps"})
MAX_EVENT_PROPERTIES = 256
MAX_KEY_CHARS = 120
MAX_VALUE_BYTES = 512
FUTURE_SKEW_S = 86_400

_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@.]+")
_PHONE = re.compile(r"\+\d{6,15}")
_GENDERS = frozenset({"M", "F", "O", "U"})
_YES_NO = frozenset({"Y", "N"})
_EDUCATION = frozenset({"School", "College", "Graduate"})
_PREFERENCES = frozenset({"MSG-email", "MSG-push", "MSG-sms", "MSG-whatsapp", "MSG-dndPhone", "MSG-dndEmail"})
_SCALARS = frozenset({str, int, float, bool, type(None)})
_ARRAY_ITEMS = _SCALARS | {dict}
_SPACE = re.compile(r"\s")
_SHORT = MAX_VALUE_BYTES // 4  # a string this short is within MAX_VALUE_BYTES whatever its characters


class Oversize:
    """Counts of keys and values over CleverTap's documented limits (not rejected)."""

    __slots__ = ("keys", "values")

    def __init__(self) -> None:
        self.keys = 0
        self.values = 0

    def scan(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            if len(key) > MAX_KEY_CHARS:
                self.keys += 1
            if type(value) is str and len(value) > _SHORT and len(value.encode()) > MAX_VALUE_BYTES:
                self.values += 1


def _valid_object_id(value: Any) -> bool:
    return (
        type(value) is str
        and value != ""
        and (len(value) <= _SHORT or len(value.encode()) <= MAX_VALUE_BYTES)
        and _SPACE.search(value) is None
    )


def _has_other_id(record: dict[str, Any]) -> bool:
    return bool(record.get("FBID")) or bool(record.get("GPID"))


def _check_event(record: dict[str, Any], oversize: Oversize) -> int | None:
    name = record.get("evtName")
    if type(name) is not str or not name.strip():
        return 509
    data = record.get("evtData", {})
    if type(data) is not dict:
        return 512
    if name in RESTRICTED_EVENTS:
        return 513
    if len(data) > MAX_EVENT_PROPERTIES:
        return 522
    for key, value in data.items():  # one pass: structure and the oversize counts
        kind = type(value)
        if kind is str:
            if len(value) > _SHORT and len(value.encode()) > MAX_VALUE_BYTES:
                oversize.values += 1
        elif kind is list:
            if not all(type(v) in _ARRAY_ITEMS for v in value):
                return 512
        elif kind not in _SCALARS:
            return 512
        if len(key) > MAX_KEY_CHARS:
            oversize.keys += 1
    return None


def _check_profile(record: dict[str, Any], oversize: Oversize) -> int | None:
    data = record.get("profileData", {})
    if type(data) is not dict:
        return 512
    if data:
        if "Gender" in data and data["Gender"] not in _GENDERS:
            return 514
        if "Email" in data and not (type(data["Email"]) is str and _EMAIL.fullmatch(data["Email"])):
            return 515
        if "Phone" in data and not (type(data["Phone"]) is str and _PHONE.fullmatch(data["Phone"])):
            return 516
        if "Employed" in data and data["Employed"] not in _YES_NO:
            return 517
        if "Education" in data and data["Education"] not in _EDUCATION:
            return 518
        if "Married" in data and data["Married"] not in _YES_NO:
            return 519
        if "Age" in data and not (type(data["Age"]) is int and 0 <= data["Age"] <= 150):
            return 520
        if any(type(data[key]) is not bool for key in _PREFERENCES & data.keys()):
            return 512
        if "Customer Type" in data and type(data["Customer Type"]) is not str:
            return 512
        oversize.scan(data)
    return None


def _check_token(record: dict[str, Any]) -> int | None:
    if not _valid_object_id(record.get("objectId")):
        return 530
    data = record.get("tokenData")
    if type(data) is not dict:
        return 531
    if "id" not in data:
        return 532
    token = data["id"]
    if type(token) is not str or not token or len(token) > 4096:
        return 535
    if "type" not in data:
        return 533
    if data["type"] not in TOKEN_TYPES:
        return 534
    return None


def check_record(record: Any, max_ts: int, oversize: Oversize) -> int | None:
    """The CleverTap code ``record`` earns, or None when it would be accepted.

    ``max_ts`` is the latest acceptable ``ts`` (now plus a day), passed in so that one request
    reads the clock once.
    """
    if type(record) is not dict:
        return 524
    kind = record.get("type")
    if kind == "token":
        return _check_token(record)
    if kind not in ("event", "profile"):
        return 524
    object_id = record.get("objectId")
    if object_id is not None or "objectId" in record:
        if not _valid_object_id(object_id):
            return 526
    else:
        identity = record.get("identity")
        if not ((type(identity) is str and identity.strip()) or type(identity) is int or _has_other_id(record)):
            return 523
    ts = record.get("ts")
    if (ts is not None or "ts" in record) and (type(ts) is not int or not 0 < ts <= max_ts):
        return 525
    if kind == "event":
        return _check_event(record, oversize)
    return _check_profile(record, oversize)


def is_token(record: Any) -> bool:
    """Whether a record counts against the 100-token limit (everything else against the 1000)."""
    return type(record) is dict and record.get("type") == "token"
