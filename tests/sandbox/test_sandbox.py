"""The CleverTap sandbox's API: credentials, body shape and limits, per-record codes, records, deletions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from worker.sandbox.faults import Faults, FaultState
from worker.sandbox.server import create_app
from worker.sandbox.state import Sandbox

HEADERS = {"X-CleverTap-Account-Id": "ACC-1", "X-CleverTap-Passcode": "pass-1"}
TS = 1_700_000_000


class SyncClient:
    """A synchronous client over httpx's ASGITransport (the sandbox's state outlives each event loop)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


def client_for(accounts: dict[str, str] | None = None, **faults: Any) -> SyncClient:
    return SyncClient(create_app(Sandbox(FaultState(Faults(**faults), seed=7), accounts)))


def event(user: str = "u1", name: str = "Clicked", **extra: Any) -> dict[str, Any]:
    return {"type": "event", "identity": user, "ts": TS, "evtName": name, "evtData": {"n": 1}, **extra}


def profile(**data: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": "u1", "ts": TS, "profileData": data}


def token(object_id: str = "anon-1", **data: Any) -> dict[str, Any]:
    return {"type": "token", "objectId": object_id, "tokenData": {"id": "tok", "type": "fcm", **data}}


def upload(client: SyncClient, records: list[Any], headers: dict[str, str] = HEADERS) -> Any:
    return client.post("/1/upload", json={"d": records}, headers=headers)


def records_of(client: SyncClient, query: str = "") -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = client.get(f"/_sandbox/records{query}").json()["records"]
    return answer


# --- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (HEADERS, 200),
        ({"X-CleverTap-Account-Id": "any", "X-CleverTap-Passcode": "thing"}, 200),
        ({"X-CleverTap-Account-Id": "ACC-1"}, 401),
        ({"X-CleverTap-Passcode": "pass-1"}, 401),
        ({"X-CleverTap-Account-Id": "ACC-1", "X-CleverTap-Passcode": ""}, 401),
        ({}, 401),
    ],
)
def test_without_accounts_any_non_empty_pair_is_accepted(headers: dict[str, str], status: int) -> None:
    client = client_for()
    answer = upload(client, [event()], headers)
    assert answer.status_code == status
    if status == 401:
        assert answer.json() == {"status": "fail", "error": "Invalid Credentials", "code": 401}
        assert records_of(client) == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (HEADERS, 200),
        ({"X-CleverTap-Account-Id": "ACC-2", "X-CleverTap-Passcode": "pass-2"}, 200),
        ({"X-CleverTap-Account-Id": "ACC-1", "X-CleverTap-Passcode": "pass-2"}, 401),
        ({"X-CleverTap-Account-Id": "ACC-3", "X-CleverTap-Passcode": "pass-1"}, 401),
    ],
)
def test_with_accounts_only_those_pairs_are_accepted(headers: dict[str, str], status: int) -> None:
    client = client_for({"ACC-1": "pass-1", "ACC-2": "pass-2"})
    assert upload(client, [event()], headers).status_code == status


def test_accounts_change_at_run_time_and_passcodes_are_never_shown() -> None:
    client = client_for({"ACC-1": "wrong"})
    assert upload(client, [event()]).status_code == 401
    answer = client.post("/_sandbox/accounts", json={"accounts": {"ACC-1": "pass-1"}})
    assert answer.json() == {"accounts": ["ACC-1"]}
    assert "pass-1" not in answer.text
    assert upload(client, [event()]).status_code == 200
    assert client.post("/_sandbox/accounts", json={"accounts": None}).json() == {"accounts": None}
    assert client.post("/_sandbox/accounts", json={"accounts": {"A": ""}}).status_code == 400
    assert client.get("/_sandbox/accounts").json() == {"accounts": None}


# --- body shape and limits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"x": []}', b'{"d": {}}', b'{"d": []}', b'{"d": "text"}'],
)
def test_malformed_bodies_get_400_with_a_json_error(body: bytes) -> None:
    client = client_for()
    answer = client.post("/1/upload", content=body, headers=HEADERS)
    assert answer.status_code == 400
    assert answer.json()["status"] == "fail"
    assert answer.json()["error"]
    assert client.get("/_sandbox/stats").json()["records"] == 0


@pytest.mark.parametrize(
    ("events", "tokens", "status"),
    [(1000, 0, 200), (1001, 0, 400), (0, 100, 200), (0, 101, 400), (1000, 100, 200), (1000, 101, 400)],
)
def test_at_most_1000_events_and_profiles_and_100_tokens_per_request(events: int, tokens: int, status: int) -> None:
    client = client_for()
    records = [event(f"u{i}") for i in range(events)] + [token(f"anon-{i}") for i in range(tokens)]
    answer = upload(client, records)
    assert answer.status_code == status
    stored = client.get("/_sandbox/stats").json()["records"]
    assert stored == (events + tokens if status == 200 else 0)


# --- per-record codes --------------------------------------------------------------------------

INVALID: list[tuple[Any, int]] = [
    ("text", 524),
    ({"identity": "u1", "evtName": "x"}, 524),
    ({**event(), "type": "thing"}, 524),
    ({"type": "event", "ts": TS, "evtName": "x", "evtData": {}}, 523),
    ({**event(), "identity": ""}, 523),
    ({**event(), "identity": {"id": 1}}, 523),
    ({**event(), "objectId": ""}, 526),
    ({**event(), "objectId": "has space"}, 526),
    ({**event(), "objectId": 12}, 526),
    ({**event(), "ts": TS * 1000}, 525),
    ({**event(), "ts": "2024-01-01T00:00:00Z"}, 525),
    ({**event(), "ts": 1.5}, 525),
    ({**event(), "ts": -5}, 525),
    ({**event(), "evtName": ""}, 509),
    ({k: v for k, v in event().items() if k != "evtName"}, 509),
    ({**event(), "evtData": [1]}, 512),
    ({**event(), "evtData": {"nested": {"a": 1}}}, 512),
    (event(name="App Launched"), 513),
    ({**event(), "evtData": {f"k{i}": i for i in range(257)}}, 522),
    ({**profile(), "profileData": "x"}, 512),
    (profile(Gender="male"), 514),
    (profile(Email="not an email"), 515),
    (profile(Email="a@b"), 515),
    (profile(Phone="5551234"), 516),
    (profile(Phone=4155551234), 516),
    (profile(Employed="yes"), 517),
    (profile(Education="PhD"), 518),
    (profile(Married="maybe"), 519),
    (profile(Age=-1), 520),
    (profile(Employed=True), 517),
    (profile(Married="y"), 519),
    (profile(Education="college"), 518),
    (profile(**{"MSG-email": "false"}), 512),
    (profile(**{"MSG-push": 0}), 512),
    (profile(**{"MSG-sms": None}), 512),
    (profile(**{"MSG-whatsapp": "true", "MSG-email": False}), 512),
    (profile(**{"MSG-dndPhone": "Y"}), 512),
    (profile(**{"MSG-dndEmail": 1}), 512),
    (profile(**{"Customer Type": 3}), 512),
    ({**token(), "objectId": ""}, 530),
    ({"type": "token", "tokenData": {"id": "t", "type": "fcm"}}, 530),
    ({**token(), "tokenData": "t"}, 531),
    ({**token(), "tokenData": {"type": "fcm"}}, 532),
    ({**token(), "tokenData": {"id": "t"}}, 533),
    ({**token(), "tokenData": {"id": "t", "type": "pigeon"}}, 534),
    ({**token(), "tokenData": {"id": 5, "type": "fcm"}}, 535),
]


@pytest.mark.parametrize(("record", "code"), INVALID)
def test_an_invalid_record_is_answered_with_its_code(record: Any, code: int) -> None:
    client = client_for()
    answer = upload(client, [record])
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "fail"
    assert body["processed"] == 0
    [entry] = body["unprocessed"]
    assert entry["status"] == "fail"
    assert entry["code"] == code
    assert entry["error"]
    assert entry["record"] == record
    assert records_of(client) == []
    assert client.get("/_sandbox/stats").json()["unprocessed_codes"] == {str(code): 1}


VALID: list[dict[str, Any]] = [
    event(),
    {"type": "event", "objectId": "anon-1", "ts": TS, "evtName": "Web Page Viewed", "evtData": {}},
    {"type": "event", "identity": 42, "evtName": "No ts"},
    {
        "type": "event",
        "identity": "u1",
        "objectId": "5f0c1e2a-8b1d-4b5e-9c3f-2a1b3c4d5e6f",
        "ts": TS,
        "evtName": "Charged",
        "evtData": {"Charged ID": "o-1", "Amount": 9.5, "Items": [{"sku": "a", "price": 2}], "coupon": None},
    },
    profile(
        Name="Ada Lovelace",
        Email="ada@example.com",
        Phone="+442071234567",
        Gender="F",
        DOB="$D_-4857696000",
        tags=["a", 1],
        plan="pro",
        is_paid=True,
    ),
    profile(
        **{"MSG-email": False, "MSG-push": True, "MSG-sms": False, "MSG-whatsapp": True},
        **{"MSG-dndPhone": True, "MSG-dndEmail": False, "Customer Type": "Gold"},
        Education="Graduate",
        Married="Y",
        Employed="N",
        msg_email="not checked: a custom key",
    ),
    {"type": "profile", "identity": "u1", "objectId": "anon-1", "ts": TS, "profileData": {}},
    token(),
    token(type="apns"),
]


def test_valid_records_are_accepted_stored_in_order_and_counted() -> None:
    client = client_for()
    answer = upload(client, VALID)
    assert answer.json() == {"status": "success", "processed": len(VALID), "unprocessed": []}
    assert records_of(client) == [{"account_id": "ACC-1", "record": r, "seq": n} for n, r in enumerate(VALID)]
    stats = client.get("/_sandbox/stats").json()
    assert stats["records"] == len(VALID)
    assert stats["records_by_account"] == {"ACC-1": len(VALID)}
    assert stats["status_counts"] == {"200": 1}
    assert stats["uploads"] == stats["requests"] == 1


def test_a_mixed_batch_is_partial_and_only_the_good_records_are_stored() -> None:
    client = client_for()
    bad = profile(Gender="x")
    body = upload(client, [event("a"), bad, event("b")]).json()
    assert body["status"] == "partial"
    assert body["processed"] == 2
    assert [(e["code"], e["record"]) for e in body["unprocessed"]] == [(514, bad)]
    assert [r["record"]["identity"] for r in records_of(client)] == ["a", "b"]


def test_oversize_keys_and_values_are_counted_not_rejected() -> None:
    client = client_for()
    record = event(evtData={"k" * 121: 1, "long": "é" * 257, "short": "é" * 256})
    assert upload(client, [record]).json()["status"] == "success"
    stats = client.get("/_sandbox/stats").json()
    assert (stats["oversize_keys"], stats["oversize_values"]) == (1, 1)


# --- inspection --------------------------------------------------------------------------------


def test_records_filter_by_account_and_page_by_sequence_number() -> None:
    client = client_for()
    other = {"X-CleverTap-Account-Id": "ACC-2", "X-CleverTap-Passcode": "p"}
    upload(client, [event("a1"), event("a2")])
    upload(client, [event("b1")], other)
    upload(client, [event("a3")])
    assert [r["record"]["identity"] for r in records_of(client)] == ["a1", "a2", "b1", "a3"]
    assert [r["record"]["identity"] for r in records_of(client, "?account_id=ACC-2")] == ["b1"]
    page = client.get("/_sandbox/records?since=1&limit=2").json()
    assert [r["record"]["identity"] for r in page["records"]] == ["a2", "b1"]
    assert (page["next"], page["total"]) == (3, 4)
    rest = client.get(f"/_sandbox/records?since={page['next']}").json()
    assert [r["record"]["identity"] for r in rest["records"]] == ["a3"]
    assert client.get("/_sandbox/records?since=x").status_code == 400


def test_delete_records_clears_records_stats_and_deletions() -> None:
    client = client_for()
    upload(client, [event()])
    client.post("/1/delete/profiles.json", json={"identity": ["u1"]}, headers=HEADERS)
    assert client.delete("/_sandbox/records").status_code == 200
    assert records_of(client) == []
    stats = client.get("/_sandbox/stats").json()
    assert (stats["requests"], stats["records"], stats["deletions"], stats["max_concurrency"]) == (0, 0, 0, 0)
    assert client.get("/_sandbox/deletions").json() == {"deletions": []}


def test_max_stored_bounds_memory_but_counts_go_on() -> None:
    client = SyncClient(create_app(Sandbox(FaultState(Faults()), max_stored=2)))
    upload(client, [event("a"), event("b"), event("c")])
    stats = client.get("/_sandbox/stats").json()
    assert (stats["records"], stats["records_stored"], stats["records_not_stored"]) == (3, 2, 1)
    assert [r["record"]["identity"] for r in records_of(client)] == ["a", "b"]


# --- profile deletion (issue 8) ----------------------------------------------------------------


def test_delete_by_identity_or_guid_hides_that_users_earlier_records_of_that_account() -> None:
    client = client_for()
    other = {"X-CleverTap-Account-Id": "ACC-2", "X-CleverTap-Passcode": "p"}
    anon = {"type": "event", "objectId": "anon-9", "ts": TS, "evtName": "Seen"}
    upload(client, [event("gone"), event("kept"), anon, token("anon-9")])
    upload(client, [event("gone")], other)
    answer = client.post("/1/delete/profiles.json", json={"identity": ["gone"], "guid": "anon-9"}, headers=HEADERS)
    assert answer.status_code == 200
    assert answer.json()["status"] == "success"
    assert [(r["account_id"], r["record"]["identity"]) for r in records_of(client)] == [
        ("ACC-1", "kept"),
        ("ACC-2", "gone"),
    ]
    upload(client, [event("gone")])  # uploaded after the deletion: it shows, with a seq past the deletion's
    shown = [(r["record"]["identity"], r["seq"]) for r in records_of(client, "?account_id=ACC-1")]
    assert shown == [("kept", 1), ("gone", 5)]
    [deletion] = client.get("/_sandbox/deletions").json()["deletions"]
    assert deletion["account_id"] == "ACC-1"
    assert (deletion["identity"], deletion["guid"], deletion["removed"], deletion["seq"]) == (
        ["gone"],
        ["anon-9"],
        3,
        5,
    )
    assert client.get("/_sandbox/deletions?account_id=ACC-2").json() == {"deletions": []}
    assert client.get("/_sandbox/stats").json()["deletes"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"identity": []},
        {"identity": [""]},
        {"identity": [1]},
        {"guid": {"a": 1}},
        {"identity": [f"u{i}" for i in range(101)]},
        {"guid": [f"g{i}" for i in range(101)]},
        [],
    ],
)
def test_a_bad_delete_request_gets_400(body: Any) -> None:
    client = client_for()
    answer = client.post("/1/delete/profiles.json", json=body, headers=HEADERS)
    assert answer.status_code == 400
    assert answer.json()["error"]
    assert client.get("/_sandbox/deletions").json() == {"deletions": []}


def test_delete_needs_credentials_and_accepts_100_ids() -> None:
    client = client_for({"ACC-1": "pass-1"})
    ids = {"identity": [f"u{i}" for i in range(100)], "guid": [f"g{i}" for i in range(100)]}
    bad = {**HEADERS, "X-CleverTap-Passcode": "nope"}
    assert client.post("/1/delete/profiles.json", json=ids, headers=bad).status_code == 401
    answer = client.post("/1/delete/profiles.json", json=ids, headers=HEADERS)
    assert answer.json() == {"status": "success", "processed": 200, "unprocessed": []}


def test_unknown_paths_and_methods() -> None:
    client = client_for()
    assert client.get("/1/upload").status_code == 405
    assert client.post("/1/nothing", json={}).status_code == 404
    assert client.get("/_sandbox/health").json() == {"ok": True}


def test_every_golden_transform_record_is_accepted_as_is() -> None:
    """Cross-check with the transform's golden files: what the relay sends, the sandbox accepts unchanged."""
    records = []
    for path in sorted((Path(__file__).parents[1] / "transform" / "golden").glob("*.json")):
        expected = json.loads(path.read_text(encoding="utf-8")).get("expected")
        if isinstance(expected, dict):
            records += expected.get("records", [])
    assert len(records) >= 20
    client = client_for()
    answer = upload(client, records)
    assert answer.json() == {"status": "success", "processed": len(records), "unprocessed": []}
    assert [r["record"] for r in records_of(client)] == records


def test_profile_lookup_answers_as_clevertap_does() -> None:
    client = client_for({"ACC-1": "pass-1"})
    assert client.post("/1/upload", headers=HEADERS, json={"d": [profile(Name="Ada"), event()]}).status_code == 200
    found = client.get("/1/profile.json", headers=HEADERS, params={"identity": "u1"})
    assert found.status_code == 200
    assert found.json() == {
        "status": "success",
        "record": {"identity": "u1", "objectId": None, "profileData": {"Name": "Ada"}},
    }
    missing = client.get("/1/profile.json", headers=HEADERS, params={"identity": "nobody"})
    assert missing.status_code == 200
    assert missing.json()["status"] == "fail"
    wrong = {**HEADERS, "X-CleverTap-Passcode": "wrong"}
    assert client.get("/1/profile.json", headers=wrong, params={"identity": "u1"}).status_code == 401
    assert client.get("/1/profile.json", headers=HEADERS).status_code == 400  # no id to look up
    assert client.get("/_sandbox/stats").json()["lookups"] == 4
