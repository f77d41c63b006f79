"""Special traits and timestamps at the edges the golden files do not reach."""

from __future__ import annotations

from typing import Any

import pytest

from worker.transform.keycase import CACHE_SIZE, convert
from worker.transform.timestamps import clevertap_date, epoch_seconds
from worker.transform.traits import phone_text, profile, profile_data, rule_of


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        (4155550100, "4155550100"),
        (4155550100.0, "4155550100"),
        (4155550100.5, "4155550100.5"),
        (True, True),
        ("x", "x"),
    ],
)
def test_phone_numbers_become_strings(value: Any, sent: Any) -> None:
    assert phone_text(value) == sent


@pytest.mark.parametrize(
    ("phone", "data"),
    [
        ("+1 415.555.0100", {"Phone": "+14155550100"}),
        ("+12345", {"phone": "+12345"}),  # 5 digits: too short
        ("+1234567890123456", {"phone": "+1234567890123456"}),  # 16 digits: too long
        ("++14155550100", {"phone": "++14155550100"}),
        ("+١٢٣٤٥٦٧", {"phone": "+١٢٣٤٥٦٧"}),  # E.164 digits are ASCII digits
        (["+14155550100"], {"phone": ["+14155550100"]}),
        (False, {"phone": False}),
    ],
)
def test_phone(phone: Any, data: dict[str, Any]) -> None:
    assert profile_data({"phone": phone}) == data


@pytest.mark.parametrize(
    ("email", "valid"),
    [
        ("a@b.co", True),
        ("first.last+tag@sub.example.org", True),
        ("a@b", False),
        ("a@b.", False),
        ("a @b.co", False),
        ("a@b.co ", False),
        ("a@@b.co", False),
        ("@b.co", False),
        (5, False),
    ],
)
def test_email(email: Any, valid: bool) -> None:
    assert profile_data({"email": email}) == ({"Email": email} if valid else {"email": email})


@pytest.mark.parametrize(
    ("gender", "sent"), [("M", "M"), (" male", "M"), ("FEMALE ", "F"), ("f", "F"), ("x", None), ("", None), (1, None)]
)
def test_gender(gender: Any, sent: str | None) -> None:
    assert profile_data({"gender": gender}) == ({"Gender": sent} if sent else {"gender": gender})


def test_name_from_first_and_last_ignores_blank_and_non_string_parts() -> None:
    assert profile_data({"first_name": "  ", "last_name": "Lovelace"})["Name"] == "Lovelace"
    assert "Name" not in profile_data({"first_name": 5, "last_name": ["x"]})
    assert profile_data({"name": True, "first_name": "Ada"}) == {"name": True, "first_name": "Ada", "Name": "Ada"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2024-01-05T10:00:00Z", 1704448800),
        ("2024-01-05t10:00:00.5z", 1704448800),
        (" 2024-01-05T10:00:00+00:00 ", 1704448800),
        ("2024-01-05T10:00:00.1234567890123456+00:00", 1704448800),
        ("2024-01-05T10:00:00+0100", 1704445200),
        ("2024-01-05T10:00:00-05", 1704466800),
        ("2024-01-05", 1704412800),
        ("1969-12-31T23:59:59.5Z", -1),  # whole seconds are the floor
        ("2024-01-05T24:00:00Z", None),
        ("2024-01-05T10:00:00Z" + " " * 60, None),  # longer than any timestamp
        ("", None),
        (1704448800.9, 1704448800),
        (-1.5, -2),
        (1704448800123, 1704448800),
        (10**20, None),
        (1e300, None),
        (float("nan"), None),
        (-(10**400), None),
        (True, None),
        (None, None),
        ({"t": 1}, None),
    ],
)
def test_epoch_seconds(value: Any, seconds: int | None) -> None:
    assert epoch_seconds(value) == seconds


@pytest.mark.parametrize(
    ("value", "date"),
    [
        ("1970-01-02", "$D_86400"),
        ("1969-12-31T23:00:00-05:00", "$D_-86400"),
        ("2000-02-29 12:00", "$D_951782400"),
        ("2001-02-29", None),
        ("19900517", "$D_642902400"),
        ("1990-05-17" + "x" * 60, None),
        (642902400, None),
        (None, None),
    ],
)
def test_clevertap_date(value: Any, date: str | None) -> None:
    assert clevertap_date(value) == date


@pytest.mark.parametrize(
    ("key", "field"),
    [
        *[(key, "MSG-email") for key in ("msgEmail", "msg_email", "MSG-email", "MSG email", "MSGEmail", "msg-EMAIL")],
        *[(key, "MSG-dndPhone") for key in ("MSG-dndPhone", "msgDndPhone", "msg_dnd_phone", "MSG dndPhone")],
        *[(key, "MSG-whatsapp") for key in ("msgWhatsApp", "MSG-whatsapp", "msg_whats_app")],
        *[(key, "Customer Type") for key in ("customerType", "Customer Type", "customer_type", "CUSTOMER-TYPE")],
        ("Education", "Education"),
        ("is_married", None),
        ("msg_emails", None),
        ("email", "Email"),
        ("e_mail", None),  # the six special traits match the converted key exactly
        ("BirthDay", None),  # birth_day
    ],
)
def test_which_keys_reach_a_clevertap_field(key: str, field: str | None) -> None:
    rule = rule_of(convert(key))
    assert (rule and rule[0]) == field


@pytest.mark.parametrize(
    ("value", "dob"),
    [
        (0, "$D_0"),
        (86_399.9, "$D_0"),
        (1e11, "$D_99999964800"),  # 10^11 itself is seconds (year 5138)
        (100_000_000_001, "$D_99964800"),  # above: milliseconds
        (-1_000, "$D_-86400"),
        (-200_000_000_000, "$D_-200016000"),  # milliseconds before 1970
        (float("nan"), None),
        (False, None),
    ],
)
def test_epoch_birthdays(value: Any, dob: str | None) -> None:
    assert profile_data({"birthday": value}) == ({"DOB": dob} if dob else {"birthday": value})


def test_profile_keys_that_name_nothing_sent_change_nothing() -> None:
    traits = {"email": "a@example.com", "msgPush": "false"}
    assert profile(traits, {"other": "Other"}) == profile(traits, {}) == {"Email": "a@example.com", "MSG-push": False}


def test_the_rule_cache_is_bounded() -> None:
    assert rule_of.cache_info().maxsize == CACHE_SIZE
