"""Property maps to CleverTap data: converted keys, kept values, CleverTap's size limits.

- keys: snake_cased (:mod:`worker.transform.keycase`); a key that becomes empty is dropped; a key longer than
  120 characters after conversion is dropped and counted;
- values: strings, numbers and booleans are kept; ``null``, nested objects, and numbers JSON cannot
  carry (NaN, infinities) are dropped; arrays are dropped, except where the caller keeps them (profile
  data: only when every element is a string or a number, the CleverTap multi-value properties);
- every string longer than 512 bytes in UTF-8 is cut to 512 bytes on a character boundary, and counted;
- two kept keys that convert to the same key: the later one in the message wins; a dropped value does
  not compete.

Counts go to an optional :class:`TransformStats` the caller owns (the worker turns them into metrics and
debug logs); nothing here logs or reads a clock. This is the transform's hot path: the common value types
are tested by exact class first, subclasses and the rest take the slow path.

The same keys come again and again (a track's properties, an identify's traits), so :func:`clean` keeps a bounded table
by key (:data:`_NAMES`): a key whose name it kept before costs one dict lookup, no conversion call and no length
check (4 keys: ~0.8 of the time). (A table by the whole key set, which paired a dict's values with its names and
tested only the values, cost 1.01-1.32x this per dict of 8-24 keys once this table existed, 0.95-0.98x at 32,
and 0.94x over a mix of messages: it was removed.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.transform.keycase import MAX_CACHED_KEY, convert, snake_case

MAX_KEY_LENGTH = 120
MAX_VALUE_BYTES = 512
_ALWAYS_SHORT = MAX_VALUE_BYTES // 4  # at most 4 bytes per character: a string this long always fits
DROP = object()
"""What :func:`kept` returns for a value that is dropped."""
MAX_NAME_KEY = 64
"""A longer key (or one not a string) is not remembered in :data:`_NAMES`: it is converted each time."""
MAX_NAMES = 16_384
"""Keys remembered by the pass (:data:`_NAMES`); a full table is emptied and learns again (a key not in it is
converted through the cache of :mod:`worker.transform.keycase`, as without the table)."""
_NAMES: dict[str, str] = {}
"""Keys (strings of at most :data:`MAX_NAME_KEY` characters) whose converted name is kept (not empty, at most
:data:`MAX_KEY_LENGTH` characters), and that name: the pass's one dict lookup per key, instead of a call of the
conversion's LRU cache and the length checks (at most ~6 MB of ASCII keys and names when full, ~15 MB of
non-ASCII ones)."""


@dataclass(slots=True)
class TransformStats:
    """What the transform dropped or cut, summed over the calls that were given this object."""

    keys_dropped: int = 0
    values_truncated: int = 0


def truncate(value: str, stats: TransformStats | None = None) -> str:
    """``value`` cut to at most 512 bytes of UTF-8, on a character boundary (counted when cut)."""
    if len(value) <= _ALWAYS_SHORT:
        return value
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_VALUE_BYTES:
        return value
    end = MAX_VALUE_BYTES
    while encoded[end] & 0xC0 == 0x80:  # a continuation byte: the cut would split a character
        end -= 1
    if stats is not None:
        stats.values_truncated += 1
    return encoded[:end].decode("utf-8", "surrogatepass")


def _finite(value: float) -> bool:
    return value - value == 0  # False for NaN and both infinities


def _scalar_array(values: list[Any], stats: TransformStats | None) -> list[Any] | None:
    """A multi-value property: every element a string or a number (strings cut to size), else ``None``."""
    kept: list[Any] = []
    for element in values:
        cls = element.__class__
        if cls is str:
            kept.append(truncate(element, stats))
        elif cls is int or (cls is float and _finite(element)):
            kept.append(element)
        else:
            return None
    return kept


def _unusual(value: Any, keep_arrays: bool, stats: TransformStats | None) -> Any:
    """The slow path: ``null``, objects, and subclasses of the JSON types (normalized to the type itself)."""
    if isinstance(value, str):
        return truncate(str.__str__(value), stats)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if _finite(value) else DROP
    if keep_arrays and isinstance(value, list):
        array = _scalar_array(list(value), stats)
        return DROP if array is None else array
    return DROP  # null, objects, arrays where they are not kept, and anything JSON cannot hold


def kept(value: Any, stats: TransformStats | None = None, *, keep_arrays: bool = False) -> Any:
    """``value`` as :func:`clean` keeps it (strings cut to size), or :data:`DROP` when it is dropped.

    For keys that are not converted (a destination's ``profile_keys``); :func:`clean` inlines the same tests.
    """
    cls = value.__class__
    if cls is str:
        return truncate(value, stats)
    if cls is int or cls is bool or (cls is float and _finite(value)):
        return value
    if cls is list and keep_arrays:
        array = _scalar_array(value, stats)
        return DROP if array is None else array
    return _unusual(value, keep_arrays, stats)


def clean(data: Mapping[Any, Any], stats: TransformStats | None = None, *, keep_arrays: bool = False) -> dict[str, Any]:
    """``data`` with converted keys and kept values (see the module docstring)."""
    return _clean(data, stats, keep_arrays, None)[0]


def clean_finding(
    data: Mapping[Any, Any], find: str, stats: TransformStats | None = None
) -> tuple[dict[str, Any], Any]:
    """:func:`clean` (without arrays), and the raw value of the last key of ``data`` that converts to ``find``
    (``None`` when there is none), in the same pass: what Order Completed needs for its ``products``."""
    return _clean(data, stats, False, find)


def _name(key: Any) -> str:
    """The converted name of a key not in :data:`_NAMES` (remembered there when it is kept and the table has room)."""
    name = snake_case(key) if key.__class__ is str and len(key) <= MAX_CACHED_KEY else convert(key)
    if 0 < len(name) <= MAX_KEY_LENGTH and key.__class__ is str and len(key) <= MAX_NAME_KEY:
        if len(_NAMES) >= MAX_NAMES:  # full: learn again (a key's entry costs about one conversion)
            _NAMES.clear()
        _NAMES[key] = name
    return name


def _clean(
    data: Mapping[Any, Any], stats: TransformStats | None, keep_arrays: bool, find: str | None
) -> tuple[dict[str, Any], Any]:
    """The one pass of :func:`clean` and :func:`clean_finding`: every key converted (a kept one known by
    :data:`_NAMES` in one lookup), every value tested."""
    out: dict[str, Any] = {}
    found: Any = None
    names = _NAMES
    for key, item in data.items():
        name = names.get(key) if key.__class__ is str else None
        if name is None:  # not known kept: converted, and dropped when its name is empty or too long
            name = _name(key)
            if not 0 < len(name) <= MAX_KEY_LENGTH:
                if name and stats is not None:
                    stats.keys_dropped += 1
                continue
        if find is not None and name == find:
            found = item
        cls = item.__class__
        if cls is str:
            out[name] = truncate(item, stats) if len(item) > _ALWAYS_SHORT else item
        elif cls is int or cls is bool or (cls is float and item - item == 0):  # item - item: _finite, inlined
            out[name] = item
        elif item is None:  # null: dropped (the common drop: no call)
            continue
        elif cls is list and keep_arrays:
            value = _scalar_array(item, stats)
            if value is not None:
                out[name] = value
        else:
            value = _unusual(item, keep_arrays, stats)
            if value is not DROP:
                out[name] = value
    return out, found
