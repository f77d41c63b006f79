"""End to end: CleverTap's own profile fields, sent by segment-analytics-python through ``ctrelay ingest`` and
``ctrelay worker``, reach the sandbox under CleverTap's keys; a field that CleverTap would reject is refused by
the sandbox as CleverTap refuses it, and dead-lettered with that code.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from delivery_e2e import Relay, wait_for
from segment.analytics.client import Client

from worker.store.deadletters import DeadLetterStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

WK, ACC, PASSCODE = "wk-fields", "ACC-FIELDS", "pass-fields"


def test_unsubscribes_and_profile_fields_reach_clevertap(relay: Relay, redis_client: redis.Redis) -> None:
    relay.start_sandbox("--accounts", f"{ACC}:{PASSCODE}")
    relay.destinations(
        [{"write_key": WK, "account_id": ACC, "passcode": PASSCODE, "profile_keys": {"smsOptIn": "MSG-sms"}}]
    )
    _, url = relay.start_ingest()
    worker = relay.start_worker()
    client = Client(write_key=WK, host=url, max_retries=3, upload_interval=0.05)
    traits: dict[str, Any] = {
        "msgEmail": False,
        "customerType": "Enterprise",
        "married": True,
        "MSG-push": "false",
        "education": "graduate",
        "employed": "maybe",  # not Y/N: stays custom, the rest of the profile is sent
        "birthday": 642956400000,  # epoch milliseconds
        "smsOptIn": False,  # profile_keys: sent as MSG-sms, verbatim
    }
    client.identify(user_id="u-fields", traits=traits, message_id="m-fields")
    # profile_keys sends what it names as is: "yes" is no boolean, CleverTap (the sandbox) refuses the record
    client.identify(user_id="u-refused", traits={"smsOptIn": "yes"}, message_id="m-refused")
    client.flush()
    client.shutdown()

    letters = DeadLetterStore(redis_client, relay.keys)

    def both_ended() -> bool:  # delivered or dead-lettered, so that a wrong outcome fails at once
        return len(relay.records()) + len(list(letters.scan())) >= 2

    wait_for(both_ended, 60, "both identifies delivered or dead-lettered", worker)
    [item] = relay.records()
    assert item["account_id"] == ACC
    record = item["record"]
    assert record["identity"] == "u-fields"
    assert record["profileData"] == {
        "MSG-email": False,
        "Customer Type": "Enterprise",
        "Married": "Y",
        "MSG-push": False,
        "Education": "Graduate",
        "employed": "maybe",
        "DOB": "$D_642902400",
        "MSG-sms": False,
    }
    [letter] = letters.scan()
    assert (letter.message["messageId"], letter.reason, letter.code) == ("m-refused", "rejected", 512)
    assert relay.sandbox("/_sandbox/stats")["unprocessed_codes"] == {"512": 1}
