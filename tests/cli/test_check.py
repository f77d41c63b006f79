"""``ctrelay check``: the verdict per destination from CleverTap's answers (unit, over httpx.MockTransport), and
the command against a real sandbox process (right passcode passes, a wrong one fails naming the destination)."""

from __future__ import annotations

import httpx
import pytest
from delivery_e2e import Relay

from worker.cli.check import check_destination, probe_id
from worker.core.destinations import Destination
from worker.delivery.clevertap import PROFILE_PATH, CleverTap


def clevertap_accepting(host: str, passcode: str, seen: list[str]) -> CleverTap:
    """A CleverTap whose account lives at ``host`` with ``passcode``; every other host refuses it (401)."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        assert request.method == "GET"
        assert request.url.path == PROFILE_PATH
        assert request.url.params["identity"].startswith("ctrelay-check-")
        if request.url.host == host and request.headers["x-clevertap-passcode"] == passcode:
            return httpx.Response(200, json={"status": "fail", "error": "User not found"})
        return httpx.Response(401, json={"status": "fail", "error": "Invalid Credentials", "code": 401})

    return CleverTap(httpx.Client(transport=httpx.MockTransport(answer)))


def destination(region: str = "in1", passcode: str = "right", endpoint: str | None = None) -> Destination:
    return Destination(write_key="wk_live", account_id="ACC-1", passcode=passcode, region=region, endpoint=endpoint)


def test_right_credentials_in_the_right_region_pass_with_one_call() -> None:
    seen: list[str] = []
    verdict = check_destination(clevertap_accepting("in1.api.clevertap.com", "right", seen), destination(), probe_id())
    assert verdict.ok
    assert (verdict.credentials, verdict.region) == ("accepted", "in1 right")
    assert seen == ["in1.api.clevertap.com"]


def test_the_wrong_region_is_found_and_named() -> None:
    seen: list[str] = []
    clevertap = clevertap_accepting("sg1.api.clevertap.com", "right", seen)
    verdict = check_destination(clevertap, destination(region="us1"), probe_id())
    assert not verdict.ok
    assert verdict.region == "wrong"
    assert 'set region = "sg1"' in verdict.detail
    assert seen[0] == "us1.api.clevertap.com"


def test_a_wrong_passcode_is_refused_everywhere() -> None:
    seen: list[str] = []
    clevertap = clevertap_accepting("in1.api.clevertap.com", "right", seen)
    verdict = check_destination(clevertap, destination(passcode="wrong"), probe_id())
    assert not verdict.ok
    assert verdict.credentials == "refused"
    assert "check the passcode" in verdict.detail
    assert len(set(seen)) == 7  # its own region and the six others


@pytest.mark.parametrize(("status", "reachable"), [(503, True), (429, True), (None, False)])
def test_an_answer_that_does_not_judge_the_credentials_is_a_failure(status: int | None, reachable: bool) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if status is None:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(status, json={"status": "fail", "error": "busy"})

    clevertap = CleverTap(httpx.Client(transport=httpx.MockTransport(answer)))
    verdict = check_destination(clevertap, destination(), probe_id())
    assert not verdict.ok
    assert verdict.reachable is reachable
    assert verdict.credentials == "not checked"


@pytest.mark.integration
@pytest.mark.e2e
def test_check_against_the_sandbox_passes_with_the_right_passcode_and_names_a_wrong_one(relay: Relay) -> None:
    relay.start_sandbox("--accounts", "ACC-1:right,ACC-2:other")
    relay.destinations([{"write_key": "wk_good", "account_id": "ACC-1", "passcode": "right", "name": "good"}])
    good = relay.ctrelay("check")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok    redis" in good.stdout
    assert "destination good" in good.stdout  # by its name: write keys are not printed
    assert "credentials accepted" in good.stdout

    relay.destinations(
        [
            {"write_key": "wk_good", "account_id": "ACC-1", "passcode": "right", "name": "good"},
            {"write_key": "wk_bad", "account_id": "ACC-2", "passcode": "wrong", "name": "bad"},
        ]
    )
    bad = relay.ctrelay("check")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    (failure,) = [line for line in bad.stdout.splitlines() if line.startswith("FAIL")]
    assert "destination bad" in failure
    assert "credentials refused" in failure
    assert "wrong" not in bad.stdout.replace("wk_bad", "")  # the passcode is never printed
    assert relay.ctrelay("check", "--destination", "wk_good").returncode == 0

    missing = relay.ctrelay("check", CTRELAY_DESTINATIONS=str(relay.tmp / "nowhere.toml"))
    assert missing.returncode == 1
    assert missing.stdout.startswith("FAIL  settings")
