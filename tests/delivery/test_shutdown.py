"""Graceful shutdown (what Kubernetes and compose rely on): SIGTERM to a worker in the middle of a backlog.

The worker must finish the batch in hand (its upload answered and committed) and exit by itself: no
upload cut in half (the sandbox saw no client leave mid-request), nothing left pending in the consumer
group, no record sent twice; a new worker then delivers the rest, and every message is delivered once.
"""

from __future__ import annotations

import signal

import pytest
import redis
from delivery_e2e import Relay, enqueue, reconcile, settle, tracks, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WK, ACC = "wk-shutdown", "ACC-SHUTDOWN"


def test_sigterm_mid_backlog_finishes_the_batch_in_hand_and_loses_nothing(
    relay: Relay, redis_client: redis.Redis
) -> None:
    relay.start_sandbox("--latency-ms", "500")
    relay.destinations([{"write_key": WK, "account_id": ACC, "passcode": "secret"}])
    messages = tracks(12_000, users=200)
    enqueue(redis_client, relay, WK, messages)
    # slow on purpose (2 drains of 100 records, 0.5 s per upload: ~400 msgs/s), so the signal lands mid-backlog
    worker = relay.start_worker(CTRELAY_READ_BATCH="100", CTRELAY_WORKER_CONCURRENCY="2")
    wait_for(lambda: relay.sandbox("/_sandbox/stats")["uploads"] >= 4, 60, "the worker to be uploading", worker)

    worker.process.send_signal(signal.SIGTERM)  # the worker itself, as Kubernetes and compose do: warm shutdown
    code = worker.process.wait(timeout=60)
    assert code == 0, worker.tail()

    stats = relay.sandbox("/_sandbox/stats")
    assert stats["abandoned"] == 0, "an upload was cut in half"
    assert stats["in_flight"] == 0
    partial = reconcile(redis_client, relay, messages, WK)
    assert 0 < len(partial.delivered) < len(messages), "the signal must land in the middle of the backlog"
    assert partial.pending == 0, "every entry the worker read was committed before it exited"
    assert partial.duplicates == 0

    successor = relay.start_worker()
    state = settle(redis_client, relay, messages, WK, timeout_s=120, proc=successor)
    assert state.dead == {}
    assert len(state.delivered) == len(messages)
    assert state.duplicates == 0, "a record was sent twice: a batch was not committed before the exit"
    print(f"SIGTERM mid-backlog: {len(partial.delivered)} delivered before the exit, the rest by the successor")
