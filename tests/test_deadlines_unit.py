"""pipemon.deadlines: the one thread that runs the polls' cancel and watchdog callbacks."""

from __future__ import annotations

import threading

from pipemon.deadlines import Deadlines
from testkit.net import wait_until


def test_callbacks_run_when_due_in_order_and_disarmed_ones_never():
    deadlines, ran = Deadlines(), []
    later = deadlines.call_later(0.3, lambda: ran.append("later"))
    deadlines.call_later(0.05, lambda: ran.append("sooner"))  # armed after, due before
    disarmed = deadlines.call_later(0.1, lambda: ran.append("disarmed"))
    disarmed.cancel()
    wait_until(lambda: len(ran) == 2, 10, "both armed callbacks to run")
    assert ran == ["sooner", "later"], f"ran {ran}"
    later.cancel()  # after it ran: nothing happens
    deadlines.call_later(0, lambda: ran.append("last"))
    wait_until(lambda: ran[-1] == "last", 10, "a callback due at once")
    assert "disarmed" not in ran


def test_a_failing_callback_does_not_stop_the_others():
    deadlines, ran = Deadlines(), threading.Event()
    deadlines.call_later(0, lambda: 1 / 0)
    deadlines.call_later(0.01, ran.set)
    assert ran.wait(10), "the callback after a failing one did not run"


def test_one_thread_however_many_polls_arm_and_disarm():
    deadlines = Deadlines()
    before = threading.active_count()
    for _ in range(500):
        deadlines.call_later(60, lambda: None).cancel()
    assert threading.active_count() <= before + 1
