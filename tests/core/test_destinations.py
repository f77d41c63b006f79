"""Destination settings: regions, endpoint, required fields, the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.core.destinations import Destination, load_destinations, load_single_destination, normalize_region
from worker.core.errors import ConfigError


@pytest.mark.parametrize(
    ("given", "region", "url"),
    [
        ("", "", "https://api.clevertap.com"),
        (" ", "", "https://api.clevertap.com"),
        ("eu1", "", "https://api.clevertap.com"),
        ("in1", "in1", "https://in1.api.clevertap.com"),
        ("in.", "in1", "https://in1.api.clevertap.com"),
        ("in", "in1", "https://in1.api.clevertap.com"),
        ("sg.", "sg1", "https://sg1.api.clevertap.com"),
        ("sg1.", "sg1", "https://sg1.api.clevertap.com"),
        ("US1", "us1", "https://us1.api.clevertap.com"),
        ("aps3", "aps3", "https://aps3.api.clevertap.com"),
        ("mec1", "mec1", "https://mec1.api.clevertap.com"),
        ("sk1", "sk1", "https://sk1.api.clevertap.com"),
    ],
)
def test_region_forms(given: str, region: str, url: str) -> None:
    destination = Destination(account_id="A", region=given)
    assert destination.region == region
    assert destination.base_url == url


def test_endpoint_overrides_region() -> None:
    destination = Destination(account_id="A", region="in1", endpoint="http://127.0.0.1:9000/")
    assert destination.base_url == "http://127.0.0.1:9000"


def test_unknown_region_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown region 'mars1'"):
        normalize_region("mars1")


PK = 'write_key = "wk1"\naccount_id = "A"\npasscode = "p"\n[destinations.profile_keys]\n'


def test_profile_keys_are_read_verbatim(tmp_path: Path) -> None:
    path = _write(tmp_path, "[[destinations]]\n" + PK + '"Loyalty Points" = "loyalty-points"\nemail = "Work Email"\n')
    destination = load_destinations(path, env={})["wk1"]
    assert destination.profile_keys == {"Loyalty Points": "loyalty-points", "email": "Work Email"}
    assert load_destinations(_write(tmp_path, "[[destinations]]\n" + PK), env={})["wk1"].profile_keys == {}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    return path


def test_file_with_passcode_env(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[[destinations]]\nwrite_key = "wk1"\naccount_id = "W9R-486-4W5Z"\npasscode_env = "PC1"\nregion = "in1"\n'
        '[[destinations]]\nwrite_key = "wk2"\naccount_id = "B"\npasscode = "p2"\n',
    )
    destinations = load_destinations(path, env={"PC1": "secret-1"})
    assert set(destinations) == {"wk1", "wk2"}
    first = destinations["wk1"]
    assert first.passcode is not None
    assert first.passcode.get_secret_value() == "secret-1"
    assert "secret-1" not in repr(first)
    assert first.base_url == "https://in1.api.clevertap.com"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('write_key = "wk1"\naccount_id = ""\npasscode = "p"', r"destinations\[0\] \(write_key 'wk1'\): account_id"),
        ('write_key = "wk1"\naccount_id = "A"\npasscode = "p"\nregion = "xx"', r"'wk1'\): region: .*unknown region"),
        ('write_key = "wk1"\naccount_id = "A"', r"'wk1'\): passcode: required"),
        ('write_key = "wk1"\naccount_id = "A"\npasscode_env = "NOPE"', "NOPE"),
        ('write_key = ""\naccount_id = "A"\npasscode = "p"', "write_key: must not be empty"),
        ('write_key = "wk1"\naccount_id = "A"\npasscode = "p"\ncolour = "blue"', "colour"),
        ('write_key = "wk1"\naccount_id = "A"\npasscode = "p"\nprofile_keys = "x"', r"'wk1'\): profile_keys: .*dict"),
        (PK + "plan = 5", r"'wk1'\): profile_keys\.plan: .*valid string"),
        (PK + 'plan = " "', r"'wk1'\): profile_keys: .*'plan': the CleverTap key must not be empty"),
        (PK + '"" = "Plan"', r"'wk1'\): profile_keys: .*a trait key must not be empty"),
        (PK + 'plan = "' + "x" * 121 + '"', r"profile_keys: .*'plan': the CleverTap key is longer than 120"),
    ],
)
def test_invalid_destination_names_the_field(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, "[[destinations]]\n" + body + "\n")
    with pytest.raises(ConfigError, match=message):
        load_destinations(path, env={})


def test_duplicate_write_key(tmp_path: Path) -> None:
    table = '[[destinations]]\nwrite_key = "wk1"\naccount_id = "A"\npasscode = "p"\n'
    with pytest.raises(ConfigError, match="configured twice"):
        load_destinations(_write(tmp_path, table * 2), env={})


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_destinations(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_destinations(_write(tmp_path, "[[destinations"), env={})
    with pytest.raises(ConfigError, match="at least one"):
        load_destinations(_write(tmp_path, "x = 1"), env={})


def test_single_destination_forms(tmp_path: Path) -> None:
    bare = _write(tmp_path, 'account_id = "A"\nsend_anonymous_id_as_object_id = false\n')
    assert load_single_destination(bare, env={}).send_anonymous_id_as_object_id is False
    wrapped = _write(tmp_path, '[[destinations]]\nwrite_key = "k"\naccount_id = "A"\npage_event_name = "PV"\n')
    assert load_single_destination(wrapped, env={}).page_event_name == "PV"
    two = _write(tmp_path, '[[destinations]]\naccount_id = "A"\n[[destinations]]\naccount_id = "B"\n')
    with pytest.raises(ConfigError, match="exactly one"):
        load_single_destination(two, env={})


def test_single_destination_does_not_need_the_passcode_env(tmp_path: Path) -> None:
    path = _write(tmp_path, 'account_id = "A"\npasscode_env = "PC1"\n')
    assert load_single_destination(path, env={}).passcode is None
    passcode = load_single_destination(path, env={"PC1": "secret-1"}).passcode
    assert passcode is not None
    assert passcode.get_secret_value() == "secret-1"
    both = _write(tmp_path, 'account_id = "A"\npasscode = "p"\npasscode_env = "PC1"\n')
    with pytest.raises(ConfigError, match="either passcode or passcode_env"):
        load_single_destination(both, env={})
    not_a_name = _write(tmp_path, 'account_id = "A"\npasscode_env = 3\n')
    with pytest.raises(ConfigError, match="passcode_env"):
        load_single_destination(not_a_name, env={})


def test_names_default_to_the_account_id_made_unique_and_never_a_write_key(tmp_path: Path) -> None:
    def load(tables: str) -> list[str]:
        path = tmp_path / "names.toml"
        path.write_text(tables)
        return [d.name for d in load_destinations(path, env={}).values()]

    entry = '[[destinations]]\nwrite_key = "{wk}"\naccount_id = "{acc}"\npasscode = "p"\n{extra}\n'
    three = "".join(entry.format(wk=f"wk{i}", acc="ACC", extra="") for i in range(3))
    assert load(three) == ["ACC", "ACC-2", "ACC-3"]
    named = entry.format(wk="wk1", acc="ACC", extra='name = "web"') + entry.format(wk="wk2", acc="ACC", extra="")
    assert load(named) == ["web", "ACC"]
    assert Destination(write_key="wk", account_id="ACC-9").name == "ACC-9"
    twice = entry.format(wk="wk1", acc="A", extra='name = "web"') + entry.format(
        wk="wk2", acc="B", extra='name = "web"'
    )
    with pytest.raises(ConfigError, match="'web' is given twice"):
        load(twice)
    with pytest.raises(ConfigError, match="is also a write key"):
        load(entry.format(wk="wk1", acc="A", extra='name = "wk2"') + entry.format(wk="wk2", acc="B", extra=""))


def test_delete_events_are_off_unless_allowed(tmp_path: Path) -> None:
    assert Destination(write_key="wk", account_id="A").allow_delete_events is False
    path = tmp_path / "d.toml"
    path.write_text(
        '[[destinations]]\nwrite_key = "wk"\naccount_id = "A"\npasscode = "p"\nallow_delete_events = true\n'
    )
    assert load_destinations(path, env={})["wk"].allow_delete_events is True
