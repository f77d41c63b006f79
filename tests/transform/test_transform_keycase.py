"""Key conversion: every example of the rule (README "Transform"), each step of ``to-snake-case``, the cache."""

from __future__ import annotations

import pytest

from worker.transform.keycase import CACHE_SIZE, MAX_CACHED_KEY, convert, convert_key, snake_case

DOCUMENTED_EXAMPLES = [
    ("Industry Of Traits", "industry_of_traits"),
    ("firstName", "first_name"),
    ("userID", "user_i_d"),
    ("address2", "address2"),
    ("utm.source", "utm_source"),
    ("some-key", "some_key"),
    ("plan__tier", "plan_tier"),
    ("$price", "price"),
    ("isPaid?", "is_paid"),
    ("ABC", "abc"),
    ("camelCase With Space", "camelcase_with_space"),
    ("prénom", "prénom"),
    ("名前", "名前"),
]


@pytest.mark.parametrize(("key", "expected"), DOCUMENTED_EXAMPLES)
def test_spec_examples(key: str, expected: str) -> None:
    assert convert(key) == expected
    assert snake_case(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # 1. whitespace: lower-cased, camelCase not split
        ("myKey  Name\tX", "mykey_name_x"),
        ("\u00a0leading nbsp", "leading_nbsp"),
        # 2. a separator (_ - . :): camelCase not split
        ("utm.sourceName", "utm_sourcename"),
        ("a:bC", "a_bc"),
        ("_private", "private"),
        ("trailing-", "trailing"),
        # 3. camel: a space before each capital, runs of capitals split letter by letter
        ("HTMLParser", "h_t_m_l_parser"),
        ("productID2", "product_i_d2"),
        ("iPhone", "i_phone"),
        ("Ab", "ab"),
        ("aB!c", "a_b_c"),
        # 4. otherwise lower-case only
        ("ADDRESS2", "address2"),
        ("a2b", "a2b"),
        # digits never split, non-word runs are one separator
        ("2024Sales", "2024_sales"),
        ("price ($)", "price"),
        ("a/b\\c", "a_b_c"),
        # nothing left
        ("", ""),
        ("$$$", ""),
        ("___", ""),
    ],
)
def test_each_step(key: str, expected: str) -> None:
    assert convert(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("ÉtéPlage", "été_plage"),  # Unicode capitals split camelCase
        ("straßeNr", "straße_nr"),
        ("ΑΒΓ", "αβγ"),  # a run of capitals only: no boundary, lower-cased
        ("ÀbcDÉF", "àbc_d_é_f"),
        ("prénom.nom", "prénom_nom"),
        ("名前です", "名前です"),
        ("٣Ab", "٣_ab"),  # a digit of another script is a word character
        ("émoji😀key", "émoji_key"),  # an emoji is not a word character
    ],
)
def test_unicode(key: str, expected: str) -> None:
    assert convert(key) == expected


def test_not_a_string_converts_to_nothing() -> None:
    assert convert(7) == ""
    assert convert(None) == ""


def test_the_cache_is_bounded_and_can_be_cleared() -> None:
    snake_case.cache_clear()
    assert snake_case("someKey") == "some_key"
    assert snake_case("someKey") == "some_key"
    info = snake_case.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, CACHE_SIZE)
    snake_case.cache_clear()
    assert snake_case.cache_info().currsize == 0


def test_long_keys_are_converted_without_the_cache() -> None:
    long_key = "someKey" + "x" * MAX_CACHED_KEY
    snake_case.cache_clear()
    assert convert_key(long_key) == "some_key" + "x" * MAX_CACHED_KEY
    assert convert_key("someKey") == "some_key"
    assert convert_key(7) == ""
    assert snake_case.cache_info().currsize == 1
