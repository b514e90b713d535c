"""One thread for every poll's deadline callbacks.

A poll's transaction arms two callbacks (cancel the statement, then cut the socket) and disarms
them when it ends, nearly always long before they are due. With `threading.Timer` that was two
threads started per transaction, four per poll cycle: a tenth of the exporter's CPU at 1 s polls
(py-spy, bench/README.md, issue 19). Here one daemon thread sleeps until the earliest armed
deadline; arming and disarming are a heap push and a flag.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Alarm:
    """An armed callback; `cancel()` disarms it (a no-op once it has run)."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()  # ties: first armed, first run
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, callback: Callable[[], None]) -> Alarm:
        alarm = Alarm(callback)
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is alarm:
                self._wake.notify()  # earlier than what the thread sleeps until
        return alarm

    def _run(self) -> None:
        while True:
            with self._wake:
                # Disarmed alarms are dropped here rather than searched for by cancel().
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                due = self._heap[0][0] - time.monotonic()
                if due > 0:
                    self._wake.wait(due)
                    continue
                alarm = heapq.heappop(self._heap)[2]
            if not alarm.cancelled:
                try:
                    alarm.callback()
                except Exception:  # the thread serves every source: it must go on
                    log.exception("a deadline callback failed")


DEADLINES = Deadlines()
