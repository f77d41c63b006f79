"""Property key conversion: Segment's cloud-mode snake_case rule, with a bounded cache.

The reference is the JavaScript ``to-snake-case`` (``to-no-case`` then ``to-space-case``), step by step:

1. the key contains whitespace: lower-case it (camelCase is **not** split);
2. else it contains ``_``, ``-``, ``.`` or ``:``: separators become spaces, then lower-case (not split);
3. else it has a lower→upper or upper→lower boundary: a space before **each** capital, then lower-case;
4. else: lower-case;

then every run of non-word characters or ``_`` becomes one space, the ends are trimmed, and the words
are joined with ``_``. Steps 1 and 2 differ from 4 only in what the final pass removes, so the code
needs one decision: split camelCase or not. Digits are word characters and never split.

**Decision:** letters and digits of any script are word characters and case follows Unicode
(``prénom`` → ``prénom``, ``名前`` → ``名前``), where the JavaScript original drops them.

Keys repeat massively across messages, so :func:`convert_key` converts a key through a bounded LRU cache
(:func:`snake_case`) unless the key is long; :func:`convert` is the uncached algorithm. Pure.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import pairwise

CACHE_SIZE = 65_536
MAX_CACHED_KEY = 200  # characters; with CACHE_SIZE this bounds the cache to some 30 MB in the worst case

_WHITESPACE = re.compile(r"\s")
_SEPARATOR = re.compile(r"[_\-.:]")
_ASCII_CAMEL = re.compile(r"[a-z][A-Z]|[A-Z][a-z]")
_ASCII_CAPITAL = re.compile(r"(?<=.)([A-Z])", re.DOTALL)
_NON_WORD_RUN = re.compile(r"[\W_]+")


def _capital(char: str) -> bool:
    """An upper-case letter that lower-casing changes (``𝐴``, a mathematical capital, has no lower case: lower-casing
    keeps it, so it is never split off, or a converted key would not be a fixed point of the conversion)."""
    return char.isupper() and char.lower() != char


def _has_camel(key: str) -> bool:
    """A lower-to-upper or upper-to-lower boundary anywhere in ``key`` (Unicode case)."""
    if key.isascii():
        return _ASCII_CAMEL.search(key) is not None
    return any((a.islower() and _capital(b)) or (_capital(a) and b.islower()) for a, b in pairwise(key))


def _split_capitals(key: str) -> str:
    """A space before each capital letter (a run of capitals is split letter by letter)."""
    if key.isascii():
        return _ASCII_CAPITAL.sub(r" \1", key)
    return "".join(" " + char if _capital(char) else char for char in key)


def convert(key: object) -> str:
    """The snake_case of ``key`` (uncached); ``""`` when nothing is left (or ``key`` is not a string).

    >>> [convert(k) for k in ("Industry Of Traits", "firstName", "userID", "$price", "isPaid?", "ABC")]
    ['industry_of_traits', 'first_name', 'user_i_d', 'price', 'is_paid', 'abc']
    """
    if not isinstance(key, str):
        return ""
    if _WHITESPACE.search(key) is None and _SEPARATOR.search(key) is None and _has_camel(key):
        key = _split_capitals(key)
    return "_".join(word for word in _NON_WORD_RUN.split(key.lower()) if word)


snake_case = lru_cache(maxsize=CACHE_SIZE)(convert)
"""The cached :func:`convert`, for keys of at most ``MAX_CACHED_KEY`` characters (``cache_clear()`` empties it)."""


def convert_key(key: object) -> str:
    """The snake_case of ``key``: cached when it is short, converted every time when it is long, so that the
    cache holds at most ``CACHE_SIZE`` keys of ``MAX_CACHED_KEY`` characters whatever clients send.
    (:func:`worker.transform.values.clean` inlines this test: it is the transform's hot path.)
    """
    return snake_case(key) if key.__class__ is str and len(key) <= MAX_CACHED_KEY else convert(key)
