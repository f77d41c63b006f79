"""A SIGKILLed worker (an OOM kill) mid-backlog, with the shipped lease TTL and reclaim idle (``Settings``' defaults,
not the end-to-end Relay's short ones): the other worker takes its partitions over and claims its pending entries within
seconds, not after the lease's or the idle time.

Two workers drain a backlog against a slow sandbox (every upload 300 ms), so that the victim holds leases and pending
entries when it is killed. What is measured and printed: how long after the kill the victim's last pending entry was
claimed, and how long until every message was delivered. The takeover is asserted only against a generous bound
(:data:`GENEROUS_S`: a shared machine's load is no property of the relay), and structurally: the survivor logged that
it claimed a dead consumer's entries, and nothing was lost.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

import pytest
import redis
from delivery_e2e import Relay, enqueue, settle, tracks, wait_for

from worker.core.keys import GROUP
from worker.core.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WK, ACC = "wk-kill", "ACC-KILL"
SHIPPED = {
    f"CTRELAY_{name.upper()}": str(Settings.model_fields[name].default)
    for name in ("lease_ttl_s", "reclaim_idle_s", "drain_budget_s")
}
GENEROUS_S = 20.0
"""Bound on the takeover, four times the 5 s lease TTL (with a 30 s TTL and idle-based reclaim it took ~30 s)."""


def pending_of(client: redis.Redis, relay: Relay, consumer: str) -> int:
    """The entries ``consumer`` holds pending, over every partition."""
    total = 0
    for partition in range(relay.partitions):
        try:
            summary: Any = client.xpending(relay.keys.stream(partition), GROUP)
        except redis.ResponseError:  # NOGROUP: no worker has made the group yet
            continue
        total += sum(int(c["pending"]) for c in summary["consumers"] or [] if c["name"].decode() == consumer)
    return total


def test_a_killed_workers_partitions_and_entries_are_taken_over_within_seconds(
    relay: Relay, redis_client: redis.Redis
) -> None:
    relay.start_sandbox("--latency-ms", "300")
    relay.destinations([{"write_key": WK, "account_id": ACC, "passcode": "secret"}])
    messages = tracks(20_000, users=200)
    enqueue(redis_client, relay, WK, messages)
    env = {"CTRELAY_READ_BATCH": "100", **SHIPPED}
    victim = relay.start_worker(**env)
    consumer = f"{socket.gethostname()}-{victim.process.pid}"
    # the victim alone first, so that it holds the partitions (~1,300 messages/s: the backlog lasts ~15 s)
    wait_for(lambda: pending_of(redis_client, relay, consumer) > 0, 60, "the victim to hold entries", victim)
    survivor = relay.start_worker(**env)
    wait_for(lambda: "worker_ready" in survivor.log.read_text(errors="replace"), 60, "the second worker", survivor)
    wait_for(lambda: pending_of(redis_client, relay, consumer) > 0, 60, "the victim to hold entries", victim)

    victim.kill()  # SIGKILL: no lease released, no liveness key deleted, nothing committed
    killed = time.monotonic()
    held = pending_of(redis_client, relay, consumer)  # what it left (its leases hold them for a few seconds yet)
    wait_for(lambda: pending_of(redis_client, relay, consumer) == 0, 90, "the victim's entries claimed", survivor)
    taken_over_s = time.monotonic() - killed
    state = settle(redis_client, relay, messages, WK, timeout_s=150, proc=survivor)
    done_s = time.monotonic() - killed

    claimed = [
        line
        for line in survivor.log.read_text(errors="replace").splitlines()
        if '"reclaimed"' in line and json.loads(line).get("consumer") == "dead"
    ]
    print(
        f"SIGKILL mid-backlog ({held} entries pending at the victim): its entries claimed {taken_over_s:.1f} s after "
        f"the kill ({SHIPPED}); everything delivered {done_s:.1f} s after it"
    )
    assert claimed, "the survivor never claimed a dead consumer's entries"
    assert len(state.delivered) == len(messages)
    assert state.missing == set()
    assert state.dead == {}
    assert state.duplicates <= held, "more copies than the entries the victim held"  # at least once: its uploads
    assert taken_over_s < GENEROUS_S, f"the victim's entries waited {taken_over_s:.1f} s"


def test_a_warm_shutdown_releases_its_leases_and_deletes_its_liveness_key(
    relay: Relay, redis_client: redis.Redis
) -> None:
    relay.start_sandbox("--latency-ms", "300")
    relay.destinations([{"write_key": WK, "account_id": ACC, "passcode": "secret"}])
    enqueue(redis_client, relay, WK, tracks(3000, users=100))
    worker = relay.start_worker(CTRELAY_READ_BATCH="100", **SHIPPED)
    consumer = f"{socket.gethostname()}-{worker.process.pid}"
    leases = [relay.keys.lease(partition) for partition in range(relay.partitions)]
    wait_for(lambda: pending_of(redis_client, relay, consumer) > 0, 60, "the worker to hold entries", worker)
    assert redis_client.exists(relay.keys.alive(consumer))
    assert redis_client.exists(*leases) > 0

    worker.process.send_signal(signal.SIGTERM)  # warm shutdown: the batches in hand finish, nothing more starts
    assert worker.process.wait(timeout=60) == 0, worker.tail()
    assert redis_client.exists(*leases) == 0, "a lease outlived its drain: the next worker would wait for its TTL"
    assert not redis_client.exists(relay.keys.alive(consumer)), "the liveness key outlived the process"
    assert pending_of(redis_client, relay, consumer) == 0
