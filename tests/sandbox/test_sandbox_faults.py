"""The CleverTap sandbox's faults and its concurrency cap, in process (httpx over ASGI)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from worker.cli import app as cli_app
from worker.cli.sandbox import parse_accounts
from worker.sandbox.faults import Faults, FaultState
from worker.sandbox.server import create_app
from worker.sandbox.state import Sandbox

TS = 1_700_000_000


def headers(account: str = "ACC-1") -> dict[str, str]:
    return {"X-CleverTap-Account-Id": account, "X-CleverTap-Passcode": "p"}


def event(user: str = "u1", name: str = "Clicked") -> dict[str, Any]:
    return {"type": "event", "identity": user, "ts": TS, "evtName": name, "evtData": {}}


def make(seed: int | None = 3, **faults: Any) -> Sandbox:
    return Sandbox(FaultState(Faults(**faults), seed=seed))


def run(sandbox: Sandbox, calls: Any) -> Any:
    """Run ``calls(client)`` (a coroutine function) against ``sandbox`` in a fresh event loop."""

    async def main() -> Any:
        transport = httpx.ASGITransport(app=create_app(sandbox))
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox", timeout=30) as client:
            return await calls(client)

    return asyncio.run(main())


def upload_many(sandbox: Sandbox, count: int, records: list[Any] | None = None) -> list[httpx.Response]:
    async def calls(client: httpx.AsyncClient) -> list[httpx.Response]:
        body = {"d": records or [event()]}
        return [await client.post("/1/upload", json=body, headers=headers()) for _ in range(count)]

    result: list[httpx.Response] = run(sandbox, calls)
    return result


def stats(sandbox: Sandbox) -> dict[str, Any]:
    store = sandbox.store
    return sandbox.stats.describe(len(store), store.not_stored, len(store.deletions))


# --- the concurrency cap -----------------------------------------------------------------------


def test_requests_beyond_the_cap_get_429_and_are_counted() -> None:
    sandbox = make(cap=3, latency_ms=500)

    async def calls(client: httpx.AsyncClient) -> list[httpx.Response]:
        async def one(account: str) -> httpx.Response:
            return await client.post("/1/upload", json={"d": [event()]}, headers=headers(account))

        return list(await asyncio.gather(*[one("ACC-1") for _ in range(8)], *[one("ACC-2") for _ in range(5)]))

    answers = run(sandbox, calls)
    assert Counter(a.status_code for a in answers) == {200: 6, 429: 7}
    rejected = [a for a in answers if a.status_code == 429]
    assert all(a.json()["error"] == "Too many concurrent requests" for a in rejected)
    found = stats(sandbox)
    assert found["too_many_concurrent"] == found["rejected_429"] == 7
    assert found["max_concurrency_by_account"] == {"ACC-1": 3, "ACC-2": 3}
    assert found["max_attempted_concurrency_by_account"] == {"ACC-1": 4, "ACC-2": 4}
    assert found["max_concurrency"] == 6
    assert found["in_flight"] == 0
    assert found["records"] == 6


def test_the_cap_frees_slots_as_requests_finish() -> None:
    sandbox = make(cap=1)
    assert [a.status_code for a in upload_many(sandbox, 5)] == [200] * 5
    assert stats(sandbox)["max_concurrency"] == 1
    assert stats(sandbox)["max_attempted_concurrency_by_account"] == {"ACC-1": 1}


# --- latency, timeouts -------------------------------------------------------------------------


def test_latency_and_jitter_are_seeded() -> None:
    assert FaultState(Faults(latency_ms=200)).delay() == pytest.approx(0.2)
    first = [FaultState(Faults(latency_ms=200, jitter_ms=100), seed=5).delay() for _ in range(3)]
    state = FaultState(Faults(latency_ms=200, jitter_ms=100), seed=5)
    again = [state.delay() for _ in range(3)]
    assert all(0.2 <= d <= 0.3 for d in again)
    assert again[0] == first[0]
    assert len(set(again)) == 3


def test_a_client_that_gives_up_on_a_held_request_frees_its_slot_and_stores_nothing() -> None:
    sandbox = make(timeout_rate=1.0, timeout_ms=10_000)

    async def calls(client: httpx.AsyncClient) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.post("/1/upload", json={"d": [event()]}, headers=headers()), 0.2)

    run(sandbox, calls)
    found = stats(sandbox)
    assert (found["timeouts"], found["records"], found["in_flight"]) == (1, 0, 0)


def test_a_held_request_whose_client_waits_is_answered_and_stored() -> None:
    sandbox = make(timeout_rate=1.0, timeout_ms=50)
    [answer] = upload_many(sandbox, 1)
    assert answer.json()["status"] == "success"
    assert (stats(sandbox)["timeouts"], stats(sandbox)["records"]) == (1, 1)


# --- injected HTTP errors and outages ----------------------------------------------------------


def test_error_rates_inject_statuses_reproducibly_by_seed() -> None:
    faults = {"error_rates": {"429": 0.3, "500": 0.2}, "retry_after_s": 7}
    first = [a.status_code for a in upload_many(make(seed=11, **faults), 60)]
    second = upload_many(make(seed=11, **faults), 60)
    assert [a.status_code for a in second] == first
    counts = Counter(first)
    assert set(counts) == {200, 429, 500}
    for answer in second:
        if answer.status_code == 429:
            assert answer.headers["Retry-After"] == "7"
        if answer.status_code == 500:
            assert "Retry-After" not in answer.headers
    sandbox = make(seed=11, **faults)
    upload_many(sandbox, 60)
    found = stats(sandbox)
    assert found["status_counts"] == {str(k): v for k, v in sorted(counts.items())}
    assert found["records"] == counts[200]
    assert found["too_many_concurrent"] == 0


def test_outage_503_then_recovery() -> None:
    sandbox = make(outage=True, retry_after_s=3)
    [answer] = upload_many(sandbox, 1)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "3"
    sandbox.faults.update({"outage": False})
    assert upload_many(sandbox, 1)[0].status_code == 200
    assert stats(sandbox)["records"] == 1


# --- record-level faults, poison --------------------------------------------------------------


def test_record_555_rate_and_permanent_code_rate() -> None:
    sandbox = make(record_555_rate=1.0)
    body = upload_many(sandbox, 1, [event("a"), event("b")])[0].json()
    assert body["status"] == "fail"
    assert [e["code"] for e in body["unprocessed"]] == [555, 555]

    sandbox = make(seed=2, record_error_rate=0.5, record_error_code=528)
    body = upload_many(sandbox, 1, [event(f"u{i}") for i in range(200)])[0].json()
    codes = Counter(e["code"] for e in body["unprocessed"])
    assert set(codes) == {528}
    assert 0 < body["processed"] < 200
    assert body["status"] == "partial"
    assert body["processed"] + codes[528] == 200
    assert stats(sandbox)["records"] == body["processed"]


def test_event_codes_answer_named_events_with_their_code() -> None:
    sandbox = make(event_codes={"Discard Me": 528})
    body = upload_many(sandbox, 1, [event("a", "Discard Me"), event("b")])[0].json()
    assert [(e["code"], e["error"]) for e in body["unprocessed"]] == [(528, "Discarded event is raised")]
    assert body["processed"] == 1


def test_a_poison_event_makes_its_whole_request_a_400() -> None:
    sandbox = make(poison_events=["Poison"])
    answer = upload_many(sandbox, 1, [event("a"), event("b", "Poison")])[0]
    assert answer.status_code == 400
    assert answer.json()["status"] == "fail"
    assert upload_many(sandbox, 1, [event("a")])[0].status_code == 200
    assert stats(sandbox)["records"] == 1


def test_faults_apply_to_the_delete_endpoint_too() -> None:
    sandbox = make(error_rates={"500": 1.0})

    async def calls(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/1/delete/profiles.json", json={"identity": ["u"]}, headers=headers())

    assert run(sandbox, calls).status_code == 500
    assert sandbox.store.deletions == []


# --- the faults API ----------------------------------------------------------------------------


def test_faults_api_reads_updates_validates_and_resets() -> None:
    sandbox = make(seed=1, latency_ms=5)

    async def calls(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.get("/_sandbox/faults"),
            await client.post("/_sandbox/faults", json={"error_rates": {"429": 0.1}, "seed": 9, "outage": True}),
            await client.post("/_sandbox/faults", json={"error_rates": {"200": 0.1}}),
            await client.post("/_sandbox/faults", json={"no_such_fault": 1}),
            await client.post("/_sandbox/faults", json={"record_error_code": 555}),
            await client.post("/_sandbox/faults", content=b"nope"),
            await client.get("/_sandbox/faults"),
            await client.delete("/_sandbox/faults"),
        ]

    initial, updated, bad_status, unknown, transient, garbage, after, reset = run(sandbox, calls)
    assert initial.json()["latency_ms"] == 5
    assert initial.json()["seed"] == 1
    assert updated.json()["error_rates"] == {"429": 0.1}
    assert (updated.json()["seed"], updated.json()["outage"], updated.json()["latency_ms"]) == (9, True, 5)
    for answer in (bad_status, unknown, transient, garbage):
        assert answer.status_code == 400
        assert answer.json()["error"]
    assert after.json() == updated.json()
    assert reset.json()["error_rates"] == {}
    assert reset.json()["outage"] is False


# --- the command line --------------------------------------------------------------------------


def test_parse_accounts() -> None:
    assert parse_accounts(None) is None
    assert parse_accounts("") is None
    assert parse_accounts("A:p, B:q:r") == {"A": "p", "B": "q:r"}
    for bad in ("A", "A:", ":p", "A:p,"):
        with pytest.raises(typer.BadParameter):
            parse_accounts(bad)


def test_sandbox_command_is_registered_and_rejects_bad_flags() -> None:
    runner = CliRunner()
    assert runner.invoke(cli_app, ["sandbox", "--help"]).exit_code == 0
    for flags in (["--error-rate", "429"], ["--error-rate", "200=0.5"], ["--record-error-code", "555"]):
        result = runner.invoke(cli_app, ["sandbox", *flags])
        assert result.exit_code == 2, result.output


def test_a_client_that_hangs_up_mid_upload_is_counted_and_frees_its_slot() -> None:
    sandbox = make()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/1/upload",
        "raw_path": b"/1/upload",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"x-clevertap-account-id", b"ACC-1"), (b"x-clevertap-passcode", b"p")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8900),
    }
    messages = [{"type": "http.request", "body": b'{"d": [', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(create_app(sandbox)(scope, receive, send))
    found = stats(sandbox)
    assert (found["abandoned"], found["in_flight"], found["records"]) == (1, 0, 0)
    assert sent[0]["status"] == 400
