"""The chaos test's reconciliation (unit, no I/O): it finds what is missing or misplaced and traces duplicates.

The chaos test passes only when :func:`chaos_report.reconcile` finds nothing missing and nothing in a wrong
place; these tests show that it does find them, so that the chaos test can fail.
"""

from __future__ import annotations

import random
from typing import Any

from chaos_faults import Event, Sample
from chaos_load import BAD_CODE, message, record_mid
from chaos_report import reconcile

from worker.store.letters import Letter

WK, ACC = "wk-chaos-a", "CHAOS-A"


def accepted_of(kinds: list[str]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """One accepted message per kind asked for (drawn from the real mix until each kind comes up)."""
    rng, found, n = random.Random(1), {}, 0
    for wanted in kinds:
        while True:
            kind, body = message(rng, WK, n)
            n += 1
            if kind == wanted:
                found[body["messageId"]] = (WK, kind, body)
                break
    return found


def record_of(body: dict[str, Any], seq: int, account: str = ACC) -> dict[str, Any]:
    mid = body["messageId"]
    if body["type"] == "alias":
        record: dict[str, Any] = {"type": "profile", "identity": body["userId"], "objectId": body["previousId"]}
    elif body["type"] == "identify":
        record = {"type": "profile", "identity": body["userId"], "profileData": {"mid": mid}}
    else:
        record = {"type": "event", "identity": body["userId"], "evtName": "x", "evtData": {"mid": mid}}
    return {"account_id": account, "record": record, "seq": seq}


def run(accepted: dict[str, Any], records: list[dict[str, Any]], letters: list[Letter], **kw: Any) -> Any:
    return reconcile(
        accepted=accepted, incarnations=[records], accounts={WK: ACC}, letters=letters,
        events=kw.get("events", []), samples=kw.get("samples", []), accepted_at=kw.get("accepted_at", {}),
        fsync=kw.get("fsync", "always"),
    )  # fmt: skip


def test_each_kind_in_its_expected_place_passes() -> None:
    accepted = accepted_of(["track", "alias", "identify", "group", "bad_event", "poison"])
    bodies = {kind: body for _, kind, body in accepted.values()}
    records = [record_of(bodies[k], i) for i, k in enumerate(["track", "alias", "identify"])]
    letters = [
        Letter.of(WK, bodies["bad_event"], "rejected", now=1, code=BAD_CODE, status=200),
        Letter.of(WK, bodies["poison"], "rejected", now=1, status=400),
    ]
    result = run(accepted, records, letters)
    assert (result.missing, result.wrong) == ([], [])
    assert (result.delivered, result.skipped, sum(result.dead.values())) == (3, 1, 2)
    assert record_mid(records[1]["record"]) == bodies["alias"]["messageId"]


def test_a_message_that_is_nowhere_is_missing() -> None:
    accepted = accepted_of(["track", "page", "bad_event"])
    bodies = [body for _, _, body in accepted.values()]
    result = run(accepted, [record_of(bodies[0], 0)], [])
    assert sorted(result.missing) == sorted([bodies[1]["messageId"], bodies[2]["messageId"]])


def test_wrong_places_are_reported() -> None:
    accepted = accepted_of(["track", "group", "page", "screen"])
    track, group, page, screen = (body for _, _, body in accepted.values())
    records = [record_of(group, 0), record_of(screen, 1, account="CHAOS-B")]
    letters = [Letter.of(WK, track, "retries_exhausted", now=1), Letter.of(WK, page, "rejected", now=1, code=512)]
    result = run(accepted, records, letters)  # 512 letters are only right when the controller injected 512s
    assert len(result.wrong) == 4
    assert any("wrong account" in w for w in result.wrong)


def test_duplicates_are_traced_to_the_fault_under_way() -> None:
    accepted = accepted_of(["track", "track", "page"])
    a, b, c = (body for _, _, body in accepted.values())
    records = [record_of(a, 0), record_of(b, 1), record_of(a, 2), record_of(c, 3), record_of(b, 4), record_of(c, 5)]
    events = [Event("kill_worker", 5.0, 6.0), Event("timeouts", 20.0, 22.0, {"timeout_accepts": True})]
    samples = [Sample(4.0, 0, 0), Sample(5.0, 0, 2), Sample(21.0, 0, 3), Sample(40.0, 0, 6)]
    result = run(accepted, records, [], events=events, samples=samples)
    assert result.duplicates == {
        "worker SIGKILLed between upload and commit": 2,  # a and b: first stored between 4 s and 5 s
        "timeout: stored by CleverTap, answer lost": 1,  # c: first stored between 21 s and 40 s
    }


def test_everysec_losses_only_excused_just_before_a_redis_kill() -> None:
    accepted = accepted_of(["track", "track"])
    early, late = (body["messageId"] for _, _, body in accepted.values())
    events = [Event("restart_redis", 30.0, 32.0)]
    result = run(accepted, [], [], events=events, accepted_at={early: 10.0, late: 29.5}, fsync="everysec")
    assert (result.missing, result.lost_in_fsync_window) == ([early], [late])
    strict = run(accepted, [], [], events=events, accepted_at={early: 10.0, late: 29.5}, fsync="always")
    assert sorted(strict.missing) == sorted([early, late])
