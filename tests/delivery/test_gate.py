"""Unit tests: the gate over a process's drains (one works at a time; waits let the others in)."""

from __future__ import annotations

import threading

from worker.delivery.gate import Gate


def test_one_thread_at_a_time_inside_and_a_wait_lets_another_in() -> None:
    gate = Gate()
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
