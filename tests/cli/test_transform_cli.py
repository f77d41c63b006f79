"""``ctrelay transform``: stdin in every accepted shape, one JSON line per message, bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from worker.cli import app
from worker.ops.preview import read_messages

runner = CliRunner()
TRACK = {
    "type": "track",
    "userId": "u1",
    "anonymousId": "a1",
    "event": "Signed Up",
    "timestamp": "2024-01-05T10:00:00Z",
}


def lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def invoke(stdin: str, *args: str) -> Any:
    return runner.invoke(app, ["transform", *args], input=stdin)


def test_one_message() -> None:
    result = invoke(json.dumps(TRACK))
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        {
            "records": [
                {
                    "type": "event",
                    "identity": "u1",
                    "objectId": "a1",
                    "ts": 1704448800,
                    "evtName": "Signed Up",
                    "evtData": {},
                }
            ]
        }
    ]


def test_batch_body_prints_one_line_per_item_and_validates_each() -> None:
    body = {
        "batch": [
            {**TRACK, "properties": {"planName": "pro"}},
            {"type": "group", "userId": "u1", "groupId": "g"},
            {"type": "track", "userId": "u1"},
            {"type": "identify", "userId": None},
            "not an object",
        ],
        "writeKey": "wk",
    }
    result = invoke(json.dumps(body))
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    assert out[0]["records"][0]["evtData"] == {"plan_name": "pro"}
    assert out[1:] == [
        {"skipped": "unsupported_type"},
        {"invalid": "event: required"},
        {"invalid": "userId or anonymousId: one of them must be a non-empty string"},
        {"invalid": "message: must be a JSON object"},
    ]


def test_json_lines_and_arrays() -> None:
    page = {"type": "page", "anonymousId": "a1", "name": "Home", "timestamp": "2024-01-05T10:00:00Z"}
    stdin = "\n".join([json.dumps(TRACK), "", json.dumps([page, page]), json.dumps({"batch": [page]})]) + "\n"
    result = invoke(stdin)
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    assert len(out) == 4
    assert [o["records"][0]["evtName"] for o in out] == ["Signed Up"] + ["Web Page Viewed"] * 3


def test_pretty_printed_message() -> None:
    result = invoke(json.dumps(TRACK, indent=2))
    assert result.exit_code == 0
    assert len(lines(result.stdout)) == 1


def test_empty_stdin_prints_nothing() -> None:
    result = invoke("  \n")
    assert result.exit_code == 0
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("stdin", "line"),
    [
        (json.dumps(TRACK) + "\n{nope\n", 2),
        ('{\n  "type": "track",\n  "userId": \n}\n', 4),
        ("nope", 1),
    ],
)
def test_bad_json_names_the_line_and_exits_2(stdin: str, line: int) -> None:
    result = invoke(stdin)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"stdin line {line}: invalid JSON" in result.stderr


def test_no_object_id_and_region() -> None:
    result = invoke(json.dumps(TRACK), "--no-object-id", "--region", "in.")
    assert result.exit_code == 0, result.output
    assert "objectId" not in lines(result.stdout)[0]["records"][0]
    bad = invoke(json.dumps(TRACK), "--region", "mars1")
    assert bad.exit_code == 2
    assert "--region: unknown region 'mars1'" in bad.stderr


def test_settings_file(tmp_path: Path) -> None:
    one = tmp_path / "one.toml"
    one.write_text('account_id = "A"\npage_event_name = "Page Visit"\nalias = false\n')
    page = {"type": "page", "userId": "u", "timestamp": "2024-01-05T10:00:00Z"}
    alias = {"type": "alias", "userId": "u", "previousId": "p"}
    result = invoke(json.dumps([page, alias]), "--settings", str(one))
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    assert out[0]["records"][0]["evtName"] == "Page Visit"
    assert out[1] == {"skipped": "alias_disabled"}

    table = tmp_path / "table.toml"
    table.write_text('[[destinations]]\nwrite_key = "wk"\naccount_id = "A"\nsend_anonymous_id_as_object_id = false\n')
    result = invoke(json.dumps(alias), "--settings", str(table))
    assert lines(result.stdout) == [{"skipped": "alias_needs_object_id"}]

    missing = invoke("{}", "--settings", str(tmp_path / "missing.toml"))
    assert missing.exit_code == 2
    assert "destinations file not found" in missing.stderr


def test_every_output_shape(tmp_path: Path) -> None:
    group = {"type": "group", "userId": "u1", "groupId": "g1"}
    deletion = {**TRACK, "event": "Delete User"}
    settings = tmp_path / "settings.toml"
    settings.write_text('account_id = "A"\nallow_delete_events = true\n')
    messages = json.dumps([TRACK, group, {"type": "track", "userId": "u1"}, deletion])
    result = invoke(messages, "--settings", str(settings))
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    assert [list(outcome) for outcome in out] == [["records"], ["skipped"], ["invalid"], ["delete"]]
    assert out[3] == {"delete": {"type": "delete", "identity": ["u1"], "guid": ["a1"]}}
    # without allow_delete_events (the default), a Delete User track is an ordinary event
    [ordinary] = lines(invoke(json.dumps(deletion)).stdout)
    assert ordinary["records"][0]["evtName"] == "Delete User"


def test_settings_file_with_profile_keys(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text('account_id = "A"\n[profile_keys]\n"Loyalty Tier" = "Loyalty Tier"\nemail = "Work Email"\n')
    identify = {
        "type": "identify",
        "userId": "u",
        "traits": {"Loyalty Tier": "gold", "email": "a@b.co", "msgSms": False},
    }
    result = invoke(json.dumps(identify), "--settings", str(settings))
    assert result.exit_code == 0, result.output
    [out] = lines(result.stdout)
    assert out["records"][0]["profileData"] == {"MSG-sms": False, "Loyalty Tier": "gold", "Work Email": "a@b.co"}

    settings.write_text('account_id = "A"\n[profile_keys]\nemail = ""\n')
    bad = invoke(json.dumps(identify), "--settings", str(settings))
    assert bad.exit_code == 2
    assert "profile_keys: Value error, 'email': the CleverTap key must not be empty" in bad.stderr


def test_read_messages_shapes() -> None:
    assert read_messages(b"") == []
    assert read_messages(b'{"batch": "not a list"}') == [{"batch": "not a list"}]
    assert read_messages(b"[1, 2]\n") == [1, 2]
    assert read_messages(b'{"a": 1}\n{"b": 2}') == [{"a": 1}, {"b": 2}]


def test_real_process() -> None:
    exe = Path(sys.executable).parent / "ctrelay"
    stdin = json.dumps({"batch": [TRACK, {"type": "group", "userId": "u", "groupId": "g"}]})
    result = subprocess.run([str(exe), "transform"], input=stdin, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [list(o) for o in lines(result.stdout)] == [["records"], ["skipped"]]
    bad = subprocess.run([str(exe), "transform"], input="{", capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "stdin line 1: invalid JSON" in bad.stderr


def test_settings_file_with_an_unset_passcode_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preview never sends, so it does not need the passcode a production destinations file names."""
    monkeypatch.delenv("CTRELAY_TEST_PREVIEW_PASSCODE", raising=False)
    table = tmp_path / "destinations.toml"
    table.write_text(
        '[[destinations]]\nwrite_key = "wk"\naccount_id = "A"\npasscode_env = "CTRELAY_TEST_PREVIEW_PASSCODE"\n'
        'page_event_name = "Page Visit"\n'
    )
    page = {"type": "page", "userId": "u", "timestamp": "2024-01-05T10:00:00Z"}
    result = invoke(json.dumps(page), "--settings", str(table))
    assert result.exit_code == 0, result.output
    assert lines(result.stdout)[0]["records"][0]["evtName"] == "Page Visit"
