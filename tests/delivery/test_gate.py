"""Unit tests: the gate over a process's drains (one works at a time; waits let the others in)."""

from __future__ import annotations

import threading
import time

from worker.delivery.drain import Keepalive
from worker.delivery.gate import Gate


def test_one_thread_at_a_time_inside_and_a_wait_lets_another_in() -> None:
    gate = Gate(patience_s=60)
    log: list[str] = []
    waiting, answered = threading.Event(), threading.Event()

    def first() -> None:
        with gate.inside():
            log.append("first works")
            with gate.outside():  # waiting for CleverTap
                waiting.set()
                answered.wait(5)
            log.append("first commits")

    def second() -> None:
        waiting.wait(5)
        with gate.inside():
            log.append("second works")
            answered.set()  # the first one's answer comes while the second holds the gate
            with gate.inside():  # nested: counts once
                log.append("second nested")
            log.append("second done")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert log == ["first works", "second works", "second nested", "second done", "first commits"]


def test_outside_without_holding_is_a_no_op() -> None:
    gate = Gate()
    with gate.outside():
        with gate.inside(), gate.outside():
            pass
        with gate.inside():
            pass
    assert gate._lock.acquire(blocking=False)


class FakeLease:
    def __init__(self) -> None:
        self.key, self.token, self.ttl_ms = "lease", "token", 30_000
        self.held = True
        self.renewed_at = time.monotonic()
        self.renewals = 0
        self.lost = False

    def renew(self) -> bool:
        self.renewals += 1
        self.held = not self.lost
        if self.held:
            self.renewed_at = time.monotonic()
        return self.held


def test_the_keepalive_asks_redis_after_every_wait_and_not_twice_in_a_row() -> None:
    gate, lease = Gate(), FakeLease()
    keepalive = Keepalive(lease, gate)  # type: ignore[arg-type]
    with gate.inside():
        assert keepalive()  # just taken, no wait since: held, no round trip
        assert keepalive()
        assert lease.renewals == 0
        with gate.outside():  # an upload: the lease may be taken over meanwhile
            lease.lost = True
        assert keepalive() is False  # asked, and found lost
        assert lease.renewals == 1
        assert keepalive() is False  # lost stays lost (and is never "fresh")
    lease.lost, lease.held, lease.renewed_at = False, True, time.monotonic() - 2
    assert keepalive()  # renewed long ago: asked again
    assert lease.renewals == 3


def test_a_commit_that_renewed_the_lease_itself_spares_the_next_renewal() -> None:
    """:meth:`Keepalive.folded`: the commit's own check stands for a renewal (held), or says the lease is lost."""
    gate, lease = Gate(), FakeLease()
    keepalive = Keepalive(lease, gate)  # type: ignore[arg-type]
    with gate.inside():
        with gate.outside():  # the upload
            assert keepalive.fold() == (lease.key, lease.token, lease.ttl_ms)
            asked = time.monotonic()
        keepalive.folded(True, asked)
        assert keepalive()
        assert lease.renewals == 0
        with gate.outside(counted=False):  # the read's pace: not a wait that may lose the lease
            pass
        assert keepalive()
        assert lease.renewals == 0
        with gate.outside():
            lease.lost = True  # taken over during the upload: the commit found another token
        keepalive.folded(False, time.monotonic())
        assert keepalive.fold() is None
        assert lease.held is False
        assert keepalive() is False


def test_a_drain_waits_for_its_turn_only_so_long() -> None:
    gate = Gate(patience_s=0.05)
    held, done = threading.Event(), threading.Event()

    def stuck() -> None:
        with gate.inside():  # a holder stuck in Redis retries
            held.set()
            done.wait(5)

    thread = threading.Thread(target=stuck)
    thread.start()
    held.wait(5)
    with gate.inside(), gate.outside():  # goes on beside it after the patience
        pass
    done.set()
    thread.join(5)
    with gate.inside():  # and the gate works as before afterwards
        assert not gate._lock.acquire(blocking=False)
    assert gate._lock.acquire(blocking=False)
