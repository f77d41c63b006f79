"""identify's special traits: Segment's reserved traits to CleverTap's profile system keys.

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
- when no ``Name`` is sent, ``first_name`` and/or ``last_name`` (any spelling that converts to those)
  joined by a space become ``Name``; they are sent as custom traits as well.

Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from worker.transform.timestamps import clevertap_date
from worker.transform.values import TransformStats, truncate

_GENDERS = {"m": "M", "male": "M", "f": "F", "female": "F"}
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@.]+")
_PHONE_NOISE = re.compile(r"[\s.\-()]")
_E164 = re.compile(r"\+[0-9]{6,15}")


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


# converted key → (system key, what the system key accepts: the value to send, or None to keep it custom)
_SYSTEM_KEYS: dict[str, tuple[str, Callable[[Any], str | None]]] = {
    "name": ("Name", _text),
    "email": ("Email", _email),
    "phone": ("Phone", _phone),
    "gender": ("Gender", _gender),
    "birthday": ("DOB", clevertap_date),
    "avatar": ("Photo", _text),
}


def profile_data(traits: dict[str, Any], stats: TransformStats | None = None) -> dict[str, Any]:
    """The profile data of cleaned ``traits`` (converted keys): system keys where valid."""
    if "phone" in traits:
        traits["phone"] = phone_text(traits["phone"])
    for custom, (system, accept) in _SYSTEM_KEYS.items():
        if custom in traits:
            value = accept(traits[custom])
            if value is not None:
                del traits[custom]
                traits[system] = value
    if "Name" not in traits:
        parts = [text.strip() for text in map(_text, (traits.get("first_name"), traits.get("last_name"))) if text]
        if parts:
            traits["Name"] = truncate(" ".join(parts), stats)
    return traits
