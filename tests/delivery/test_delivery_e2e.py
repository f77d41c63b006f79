"""End to end (real processes): ``ctrelay worker`` + ``ctrelay sandbox`` under faults, each run reconciled.

Every accepted message must end delivered (its record at the sandbox), or dead-lettered with the right
reason; none missing; duplicates (only possible after a crash or a timed-out upload) are counted.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
import redis
from delivery_e2e import Relay, enqueue, reconcile, settle, tracks, wait_for
from prometheus_client.parser import text_string_to_metric_families

from worker.cli.embedded import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WK, ACC = "wk-e2e", "ACC-E2E"


def one_destination(relay: Relay, passcode: str = "secret") -> None:
    relay.destinations([{"write_key": WK, "account_id": ACC, "passcode": passcode}])


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--error-rate", "429=0.6", "--retry-after", "0"], id="429-storm"),
        pytest.param(["--error-rate", "500=0.2", "--error-rate", "503=0.2", "--error-rate", "502=0.1"], id="5xx"),
        pytest.param(["--timeout-rate", "0.3", "--timeout-ms", "3000", "--timeout-accepts"], id="timeouts"),
        pytest.param(["--record-555-rate", "0.3"], id="555-records"),
    ],
)
def test_transient_faults_end_with_everything_delivered(
    relay: Relay, redis_client: redis.Redis, flags: list[str]
) -> None:
    relay.start_sandbox("--seed", "7", *flags)
    one_destination(relay)
    worker = relay.start_worker(CTRELAY_UPLOAD_TIMEOUT_S="1")
    messages = tracks(600)
    enqueue(redis_client, relay, WK, messages)
    state = settle(redis_client, relay, messages, WK, timeout_s=120, proc=worker)
    assert state.dead == {}
    assert len(state.delivered) == len(messages)
    print(f"{flags}: delivered={len(state.delivered)} duplicates={state.duplicates}")
    if "--timeout-rate" not in flags:
        assert state.duplicates == 0


def test_permanent_codes_and_a_poison_record(relay: Relay, redis_client: redis.Redis) -> None:
    relay.start_sandbox("--event-code", "Bad Event=512", "--poison-event", "Poison")
    one_destination(relay)
    worker = relay.start_worker()
    good, bad, poison = tracks(300), tracks(7, event="Bad Event"), tracks(1, event="Poison")
    messages = good[:150] + bad + good[150:] + poison
    enqueue(redis_client, relay, WK, messages)
    state = settle(redis_client, relay, messages, WK, timeout_s=60, proc=worker)
    assert state.delivered == {m["messageId"] for m in good}
    reasons = {mid: (letter.reason, letter.code, letter.status) for mid, letter in state.dead.items()}
    assert reasons == {m["messageId"]: ("rejected", 512, 200) for m in bad} | {
        poison[0]["messageId"]: ("rejected", None, 400)
    }
    assert state.duplicates == 0


def test_wrong_passcode_pauses_without_dead_letters_then_delivers_once_fixed(
    relay: Relay, redis_client: redis.Redis
) -> None:
    relay.start_sandbox("--accounts", f"{ACC}:right")
    one_destination(relay, passcode="wrong")
    worker = relay.start_worker()
    messages = tracks(200)
    enqueue(redis_client, relay, WK, messages)
    wait_for(lambda: redis_client.exists(relay.keys.paused(WK)), 30, "the destination to be paused", worker)
    time.sleep(3)  # several pause periods: it keeps probing, slowly, and writes no dead letter
    stats = relay.sandbox("/_sandbox/stats")
    assert stats["records_stored"] == 0
    assert stats["status_counts"].get("401", 0) < 20  # retried slowly, not hammered
    assert redis_client.zcard(relay.keys.deadletter_times()) == 0
    worker.stop()
    one_destination(relay, passcode="right")
    worker = relay.start_worker()
    state = settle(redis_client, relay, messages, WK, timeout_s=60, proc=worker)
    assert state.dead == {}
    assert len(state.delivered) == len(messages)


def test_wrong_passcode_dead_letters_as_auth_failed_after_the_window(relay: Relay, redis_client: redis.Redis) -> None:
    relay.start_sandbox("--accounts", f"{ACC}:right")
    one_destination(relay, passcode="wrong")
    worker = relay.start_worker(CTRELAY_RETRY_WINDOW_S="3")
    messages = tracks(50)
    enqueue(redis_client, relay, WK, messages)
    state = settle(redis_client, relay, messages, WK, timeout_s=60, proc=worker)
    assert {letter.reason for letter in state.dead.values()} == {"auth_failed"}
    assert len(state.dead) == len(messages)


def test_sigkilled_workers_lose_nothing(relay: Relay, redis_client: redis.Redis) -> None:
    relay.start_sandbox("--latency-ms", "200")
    one_destination(relay)
    messages = tracks(6000, users=200)
    enqueue(redis_client, relay, WK, messages)
    slow = {"CTRELAY_READ_BATCH": "100", "CTRELAY_WORKER_CONCURRENCY": "2"}
    for round_ in range(4):
        worker = relay.start_worker(**slow)
        before = relay.sandbox("/_sandbox/stats")["uploads"]
        # kill the whole worker (pool included) while it uploads: once this round has uploaded a little
        wait_for(lambda: relay.sandbox("/_sandbox/stats")["uploads"] > before + 2, 60, "uploads", worker)  # noqa: B023
        time.sleep(0.2 * round_)
        worker.kill()
    partial = reconcile(redis_client, relay, messages, WK)
    assert 0 < len(partial.delivered) < len(messages)  # really killed mid-way
    assert partial.pending > 0  # entries the dead workers read and never acknowledged
    worker = relay.start_worker()
    state = settle(redis_client, relay, messages, WK, timeout_s=120, proc=worker)
    assert state.dead == {}
    assert len(state.delivered) == len(messages)
    print(f"SIGKILL x4: delivered={len(state.delivered)} duplicates={state.duplicates}")


def test_two_workers_never_exceed_the_account_cap(relay: Relay, redis_client: redis.Redis) -> None:
    relay.partitions = 8
    relay.start_sandbox("--latency-ms", "100", "--cap", "5")
    one_destination(relay)
    messages = tracks(4000, users=400)
    enqueue(redis_client, relay, WK, messages)
    env = {"CTRELAY_CONCURRENCY_CAP": "5", "CTRELAY_WORKER_CONCURRENCY": "8", "CTRELAY_READ_BATCH": "100"}
    first = relay.start_worker(**env)
    relay.start_worker(**env)
    state = settle(redis_client, relay, messages, WK, timeout_s=120, proc=first)
    stats = relay.sandbox("/_sandbox/stats")
    assert len(state.delivered) == len(messages)
    assert stats["max_concurrency_by_account"][ACC] <= 5
    assert stats["rejected_429"] == 0
    assert stats["max_concurrency_by_account"][ACC] >= 2  # it did upload concurrently
    users = Counter(item["record"]["identity"] for item in relay.records())
    assert len(users) == 400


def test_prefork_pool_delivers_and_metrics_sum_over_its_children(relay: Relay, redis_client: redis.Redis) -> None:
    relay.start_sandbox("--event-code", "Bad Event=512")
    one_destination(relay)
    port = free_port()
    worker = relay.start_worker("--pool", "prefork", "--concurrency", "2", CTRELAY_METRICS_PORT=str(port))
    good, bad = tracks(300, users=50), tracks(5, event="Bad Event")
    enqueue(redis_client, relay, WK, good + bad)
    settle(redis_client, relay, good + bad, WK, timeout_s=60, proc=worker)
    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("ctrelay_records_delivered_total", (("destination", ACC), ("type", "event")))] == 300
    labels = (("code", "512"), ("destination", ACC), ("reason", "rejected"))
    assert samples[("ctrelay_deadletters_written_total", labels)] == 5
    assert samples[("ctrelay_deadletters", (("reason", "rejected"),))] == 5
    assert samples[("ctrelay_concurrency_cap", (("account", ACC),))] == 15
    assert samples[("ctrelay_uploads_in_flight", (("account", ACC),))] == 0
    assert samples[("ctrelay_retry_schedule_size", ())] == 0
    assert samples[("ctrelay_destination_paused", (("destination", ACC),))] == 0
    assert sum(v for (name, _), v in samples.items() if name == "ctrelay_stream_lag") == 0
    assert sum(v for (name, _), v in samples.items() if name == "ctrelay_uploads_total") >= 1
