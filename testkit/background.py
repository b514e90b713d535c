"""A workload that steps on a background thread while a test watches its effects (the dashboard
tests' pipeline and HTTP load)."""

from __future__ import annotations

import contextlib
import itertools
import threading
from typing import Any, Self


class Ticker:
    """Calls `step(session, i)` every `tick` seconds on a daemon thread, from start() until
    stop(). `session()` is opened once around the loop (a database connection, say). The first
    exception ends the loop and stays in `error`, for the test to assert on: an exception in a
    thread is otherwise lost."""

    def __init__(self, name: str, tick: float):
        self.tick = tick
        self.ticks = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def session(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def step(self, session: Any, i: int) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            with self.session() as session:
                for i in itertools.count():
                    if self._stop.wait(self.tick):
                        return
                    self.step(session, i)
                    self.ticks = i + 1
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc
