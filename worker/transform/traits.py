"""identify's profile data: Segment's reserved traits and CleverTap's own profile fields to CleverTap's keys.

A trait is special when its converted key is one of ``name``, ``email``, ``phone``,
``gender``, ``birthday``, ``avatar``; it becomes ``Name``, ``Email``, ``Phone``, ``Gender``, ``DOB``,
``Photo``. CleverTap rejects a whole profile for one invalid system field, so a value that would be
rejected stays under its custom (converted) key instead and the rest of the profile is sent.

- ``Gender``: ``m``/``male`` → ``M``, ``f``/``female`` → ``F`` (case-insensitive, trimmed);
- ``Email``: ``local@domain.tld``, no whitespace;
- ``Phone``: numbers become strings; ``+`` then 6 to 15 digits once spaces, dashes, dots and parentheses
  are removed (they are removed from what is sent); no country code is invented;
- ``DOB``: an ISO date, or the date part of an ISO date-time as written → ``$D_<epoch s at 00:00 UTC>``;
- ``Name`` and ``Photo``: **Decision:** a non-empty string (anything else stays custom);
- ``DOB`` from a number: **Decision:** epoch seconds (milliseconds when above 10^11), its UTC date;
- when no ``Name`` is sent, ``first_name`` and/or ``last_name`` (any spelling that converts to those)
  joined by a space become ``Name``; they are sent as custom traits as well.

CleverTap's own profile fields pass through under CleverTap's exact key (not snake_cased). One is matched on
the converted key with its underscores removed, so ``msgEmail``, ``msg_email``, ``MSG-email``, ``MSG email``
and ``MSGEmail`` (all ``msg_email``, then ``msgemail``) are all ``MSG-email``, and ``MSG-dndPhone``
(``msg_dndphone``) and ``msgDndPhone`` (``msg_dnd_phone``) both reach ``MSG-dndPhone``. Values CleverTap
would reject stay under the custom key, as for ``Gender``:

- ``MSG-email``, ``MSG-push``, ``MSG-sms``, ``MSG-whatsapp``, ``MSG-dndPhone``, ``MSG-dndEmail`` (the
  communication preferences; ``false`` is an opt-out): a boolean, or the string ``true``/``false``
  (case-insensitive, trimmed) as that boolean;
- ``Customer Type``: a non-empty string;
- ``Education``: ``School``, ``College`` or ``Graduate``, case-insensitive and trimmed, sent capitalized;
- ``Married``, ``Employed``: ``Y`` or ``N`` (case-insensitive, trimmed); ``true``/``false`` become ``Y``/``N``.

Two trait keys that reach the same CleverTap key: the later one (in the converted traits) wins.

A destination's ``profile_keys`` (trait key exactly as sent → CleverTap key) overrides all of this for
the keys it names (:func:`profile`): their values go under the CleverTap key as given, after the value
rules of :mod:`worker.transform.values` only, and win over any other trait that reaches the same key.

Pure. The rule of a key is looked up once per trait key, through a bounded cache (it depends on the key only).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from worker.transform.keycase import CACHE_SIZE
from worker.transform.timestamps import clevertap_date, epoch_seconds
from worker.transform.values import DROP, TransformStats, clean, kept, truncate

_GENDERS = {"m": "M", "male": "M", "f": "F", "female": "F"}
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@.]+")
_PHONE_NOISE = re.compile(r"[\s.\-()]")
_E164 = re.compile(r"\+[0-9]{6,15}")
_DAY = 86_400
_FLAGS = {"true": True, "false": False}
_EDUCATION = {"school": "School", "college": "College", "graduate": "Graduate"}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _gender(value: Any) -> str | None:
    return _GENDERS.get(value.strip().lower()) if isinstance(value, str) else None


def _email(value: Any) -> str | None:
    return value if isinstance(value, str) and _EMAIL.fullmatch(value) else None


def phone_text(value: Any) -> Any:
    """A phone number as sent: numbers become strings (``4155550100.0`` → ``"4155550100"``), the rest as is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _phone(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    compact = _PHONE_NOISE.sub("", value)
    return compact if _E164.fullmatch(compact) else None


def _birthday(value: Any) -> str | None:
    """``DOB`` of an ISO date (or date-time, as written), or of a number of epoch seconds (ms above 10^11)."""
    if value.__class__ is str:
        return clevertap_date(value)
    seconds = epoch_seconds(value)  # None for booleans, strings and numbers out of range
    return None if seconds is None else f"$D_{seconds - seconds % _DAY}"


def _flag(value: Any) -> bool | None:
    if value is True or value is False:
        return bool(value)
    if isinstance(value, str):
        return _FLAGS.get(value.strip().lower())
    return None


def _yes_no(value: Any) -> str | None:
    if value is True or value is False:
        return "Y" if value else "N"
    if isinstance(value, str):
        text = value.strip().upper()
        return text if text in ("Y", "N") else None
    return None


def _education(value: Any) -> str | None:
    return _EDUCATION.get(value.strip().lower()) if isinstance(value, str) else None


Accept = Callable[[Any], Any]
"""What a CleverTap key accepts: the value to send, or ``None`` to keep the trait under its custom key."""

SYSTEM_KEYS: dict[str, tuple[str, Accept]] = {
    "name": ("Name", _text),
    "email": ("Email", _email),
    "phone": ("Phone", _phone),  # after phone_text (profile_data)
    "gender": ("Gender", _gender),
    "birthday": ("DOB", _birthday),
    "avatar": ("Photo", _text),
}
"""Segment's reserved traits: converted key → (CleverTap system key, what it accepts)."""

PROFILE_FIELDS: dict[str, tuple[str, Accept]] = {
    **{
        key.replace("-", "").lower(): (key, _flag)
        for key in ("MSG-email", "MSG-push", "MSG-sms", "MSG-whatsapp", "MSG-dndPhone", "MSG-dndEmail")
    },
    "customertype": ("Customer Type", _text),
    "education": ("Education", _education),
    "married": ("Married", _yes_no),
    "employed": ("Employed", _yes_no),
}
"""CleverTap's own profile fields: converted key without underscores → (CleverTap key, what it accepts)."""


@lru_cache(maxsize=CACHE_SIZE)
def rule_of(key: str) -> tuple[str, Accept] | None:
    """The CleverTap key a converted trait key may go to, and what that key accepts; ``None``: custom."""
    return SYSTEM_KEYS.get(key) or PROFILE_FIELDS.get(key.replace("_", ""))


def profile_data(traits: dict[str, Any], stats: TransformStats | None = None) -> dict[str, Any]:
    """The profile data of cleaned ``traits`` (converted keys): CleverTap keys where the value is valid."""
    if "phone" in traits:
        traits["phone"] = phone_text(traits["phone"])
    moves = [(key, rule) for key in traits if (rule := rule_of(key)) is not None]
    for key, (target, accept) in moves:
        value = accept(traits[key])
        if value is not None:
            del traits[key]
            traits[target] = value
    if "Name" not in traits:
        parts = [text.strip() for text in map(_text, (traits.get("first_name"), traits.get("last_name"))) if text]
        if parts:
            traits["Name"] = truncate(" ".join(parts), stats)
    return traits


def profile(
    traits: Mapping[str, Any], profile_keys: Mapping[str, str], stats: TransformStats | None = None
) -> dict[str, Any]:
    """An identify's profile data from its raw ``traits``: :func:`profile_data` of the cleaned traits, then
    the traits ``profile_keys`` names under their CleverTap keys, verbatim (they win over every other rule).
    """
    if not profile_keys:
        return profile_data(clean(traits, stats, keep_arrays=True), stats)
    named = [(profile_keys[key], value) for key, value in traits.items() if key in profile_keys]
    if not named:
        return profile_data(clean(traits, stats, keep_arrays=True), stats)
    rest = {key: value for key, value in traits.items() if key not in profile_keys}
    data = profile_data(clean(rest, stats, keep_arrays=True), stats)
    for target, raw in named:
        value = kept(raw, stats, keep_arrays=True)
        if value is not DROP:
            data[target] = value
    return data
