"""Run each source's poll on its own interval, never overlapping itself, and keep its health.

One thread per source: a slow source can only delay itself. Loops wait on the stop event, so a
SIGTERM takes effect at once instead of after the next sleep.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipemon import metrics as m
from pipemon import verdict
from pipemon.errors import PollError, redact
from pipemon.sources.base import Source

log = logging.getLogger(__name__)

MAX_START_JITTER = 3.0
# A poll that returns this long past its deadline failed it: its results are thrown away.
# (Sources cut their work at the deadline; the database watchdog needs 2 s more at worst.)
OVERRUN_GRACE = 3.0
# A poll still running this long past its deadline is stuck: /healthz fails.
HUNG_AFTER = 60.0


@dataclass(frozen=True)
class LastError:
    reason: str
    message: str
    at: float


class SourceRunner:
    """Polls one source and records how that went, for /metrics, /health and the landing page."""

    def __init__(self, source: Source, secrets: list[str], clock=time.time,
                 on_poll: Callable[[], None] | None = None):
        self.source = source
        self._on_poll = on_poll  # told after every poll: /metrics must be rendered again
        self._secrets = secrets
        self._clock = clock
        self._lock = threading.Lock()
        self.up: bool | None = None  # None until the first poll attempt has finished
        self.snapshot: Any = None
        self.last_attempt: float | None = None
        self.last_success: float | None = None
        self.last_duration: float | None = None
        self.last_error: LastError | None = None
        self.consecutive_failures = 0
        self.polls = 0
        self.poll_deadline: float | None = None  # monotonic deadline of the poll in progress
        self._errors = m.CounterSet()
        for reason in source.error_reasons:
            self._errors.ensure((reason,))
        self._durations = m.HistogramSet(m.POLL_SECONDS_BUCKETS)
        self._durations.ensure(())

    @property
    def name(self) -> str:
        return self.source.name

    def poll_once(self) -> bool:
        started = time.monotonic()
        timeout = self.source.config.timeout
        deadline = self.poll_deadline = started + timeout
        error: LastError | None = None
        snapshot = None
        try:
            snapshot = self.source.poll(deadline)
        except PollError as exc:
            error = LastError(exc.reason, redact(exc.message, self._secrets), self._clock())
        except Exception as exc:  # a bug must not kill the loop: report it like any failure
            message = redact(f"{type(exc).__name__}: {exc}", self._secrets)
            error = LastError("internal", message, self._clock())
            log.error("source %s: unexpected error", self.name, exc_info=False,
                      extra={"source": self.name, "reason": "internal", "error": message})
        overrun = time.monotonic() - deadline
        if error is None and overrun > OVERRUN_GRACE:  # a source that ignored its deadline
            error = LastError("timeout", f"the poll took {timeout + overrun:.1f}s, past its"
                                         f" timeout of {timeout:g}s", self._clock())
        elapsed = time.monotonic() - started
        with self._lock:
            self.poll_deadline = None
            self.polls += 1
            self.last_attempt = self._clock()
            self.last_duration = elapsed
            self._durations.observe((), elapsed)
            if error is None:
                if self.up is False:
                    log.info("source %s recovered", self.name, extra={"source": self.name})
                self.up, self.snapshot, self.last_success = True, snapshot, self.last_attempt
                self.consecutive_failures = 0
            else:
                self.up, self.snapshot, self.last_error = False, None, error
                self.consecutive_failures += 1
                self._errors.inc((error.reason,))
                log.warning("source %s: poll failed (%s): %s", self.name, error.reason,
                            error.message, extra={"source": self.name, "reason": error.reason})
        if self._on_poll is not None:
            self._on_poll()
        return error is None

    def collect(self, families: m.Families) -> None:
        labels = (self.name, self.source.kind)
        with self._lock:
            up, snapshot, last_success = self.up, self.snapshot, self.last_success
            if up is not None:
                families(m.SOURCE_UP).add_metric(labels, 1 if up else 0)
            if last_success is not None:
                families(m.SOURCE_LAST_SUCCESS).add_metric(labels, last_success)
            self._errors.emit(families(m.SOURCE_POLL_ERRORS), labels)
            self._durations.emit(families(m.SOURCE_POLL_DURATION), labels)
        self.source.collect(families, snapshot if up else None)

    def health(self) -> dict[str, Any]:
        with self._lock:
            status = {None: "pending", True: "up", False: "down"}[self.up]
            error = self.last_error
            return {
                "name": self.name,
                "kind": self.source.kind,
                "status": status,
                "interval_seconds": self.source.config.interval,
                "last_poll": self.last_attempt,
                "last_success": self.last_success,
                "last_duration_seconds": self.last_duration,
                "consecutive_failures": self.consecutive_failures,
                "last_error": None if error is None else {
                    "reason": error.reason, "message": error.message, "at": error.at},
                **self.source.describe(),
            }

    def verdict(self) -> dict:
        """This source's part of the pipeline verdict."""
        with self._lock:
            up, snapshot, error = self.up, self.snapshot, self.last_error
        if up is None:
            return verdict.component(self.name, self.source.kind, [], pending=True)
        if not up:
            return verdict.component(self.name, self.source.kind, [verdict.Finding(
                verdict.CRITICAL, f"poll failing: {error.reason}: {error.message}")])
        try:
            findings = self.source.findings(snapshot)
        except Exception as exc:  # a bug must not take /health down with it
            log.error("source %s: judging the last poll failed: %s", self.name, exc,
                      extra={"source": self.name, "reason": "internal"})
            findings = [verdict.Finding(verdict.WARNING, "internal error judging the last poll")]
        return verdict.component(self.name, self.source.kind, findings)

    def hung_for(self) -> float:
        """Seconds the poll in progress has been stuck: running more than HUNG_AFTER past its
        deadline, which every source honours (else 0)."""
        deadline = self.poll_deadline
        if deadline is None:
            return 0.0
        return max(0.0, time.monotonic() - deadline - HUNG_AFTER)


def next_tick(previous: float, now: float, interval: float) -> float:
    """When the poll after the one that started at tick `previous` starts: the next tick of
    the grid `previous + k * interval` that is still ahead of `now`. A poll that overran skips
    the ticks it missed, so polls never run back to back and stay on their grid."""
    due = previous + interval
    if due >= now:
        return due
    return now + interval - (now - due) % interval


class Scheduler:
    """One thread per runner, each with its own stop event, so a reload can stop some."""

    def __init__(self) -> None:
        self._loops: dict[SourceRunner, tuple[threading.Thread, threading.Event]] = {}

    def start(self, runners: list[SourceRunner]) -> None:
        for runner in runners:
            stopping = threading.Event()
            thread = threading.Thread(target=self._loop, args=(runner, stopping),
                                      name=f"poll-{runner.name}", daemon=True)
            self._loops[runner] = (thread, stopping)
            thread.start()

    @staticmethod
    def _loop(runner: SourceRunner, stopping: threading.Event) -> None:
        interval = runner.source.config.interval
        # Spread the first polls of many sources; small, so readiness comes quickly.
        if stopping.wait(random.uniform(0, min(MAX_START_JITTER, interval / 4))):
            return
        next_run = time.monotonic()
        while not stopping.is_set():
            runner.poll_once()
            now = time.monotonic()
            next_run = next_tick(next_run, now, interval)
            if stopping.wait(next_run - now):
                break

    def alive(self) -> bool:
        """All loops running and none stuck in a poll far beyond its deadline."""
        return all(thread.is_alive() for thread, _ in self._loops.values()) and not any(
            runner.hung_for() for runner in self._loops)

    def remove(self, runners: list[SourceRunner], timeout: float) -> None:
        """Stop these loops: polls in progress may finish; those that do not are interrupted."""
        loops = [(runner, *self._loops.pop(runner)) for runner in runners if runner in self._loops]
        for _, _, stopping in loops:
            stopping.set()
        deadline = time.monotonic() + timeout
        for runner, thread, _ in loops:
            thread.join(max(0.0, deadline - time.monotonic() - 1.0))
            if thread.is_alive():
                runner.source.interrupt()
        for runner, thread, _ in loops:
            thread.join(max(0.0, deadline - time.monotonic()))
            if not thread.is_alive():  # a poll still running owns its connection: leave it
                runner.source.close()

    def stop(self, timeout: float) -> None:
        self.remove(list(self._loops), timeout)
