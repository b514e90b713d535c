"""The scheduler's tick arithmetic and SourceRunner's bookkeeping, without threads or sleeps."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipemon import metrics as m
from pipemon import scheduler
from pipemon.errors import MAX_ERROR_LENGTH, PollError
from pipemon.scheduler import SourceRunner, next_tick
from pipemon.sources.base import Source

# --- next_tick ---


def test_next_tick_on_time():
    assert next_tick(100.0, 103.0, 10.0) == 110.0
    assert next_tick(100.0, 110.0, 10.0) == 110.0  # due exactly now: no wait, no skip


def test_next_tick_skips_missed_ticks():
    assert next_tick(100.0, 125.0, 10.0) == 130.0  # ticks 110 and 120 are skipped
    assert next_tick(100.0, 111.0, 10.0) == 120.0
    assert next_tick(0.0, 1000.5, 1.0) == 1001.0


def grid_index(previous: float, tick: float, interval: float) -> float:
    return (tick - previous) / interval


# Monotonic clocks: seconds since boot (up to a few years), intervals from 50 ms to a day,
# polls that finish at once or overrun by many intervals.
previous_s = st.floats(0, 1e8, allow_nan=False, allow_infinity=False)
interval_s = st.floats(0.05, 86400, allow_nan=False, allow_infinity=False)
overrun_s = st.floats(0, 1000, allow_nan=False, allow_infinity=False)  # in intervals


@settings(max_examples=500, deadline=None)
@given(previous=previous_s, interval=interval_s, elapsed=overrun_s)
def test_next_tick_properties(previous, interval, elapsed):
    now = previous + elapsed * interval
    tick = next_tick(previous, now, interval)
    tolerance = 1e-9 * max(1.0, abs(now)) + 1e-9 * interval
    # Never in the past, where the loop would run polls back to back. (When the overrun ends
    # within an ulp of a tick, `%` can round to almost a whole interval and the tick comes out
    # ~1e-10 s before now, e.g. next_tick(0.0, 4 * i, i) with i = 838860.9999999999: harmless.)
    assert tick >= now - tolerance
    assert tick >= previous + interval - tolerance, "never before the tick that was due"
    assert tick - now <= interval + tolerance, "at most one interval ahead of now"
    k = grid_index(previous, tick, interval)
    assert k >= 1 - 1e-6
    # On the grid previous + k * interval (float rounding grows with the magnitudes).
    assert abs(k - round(k)) <= 1e-6 * max(1.0, k) + tolerance / interval
    if now <= previous + interval:
        assert tick == previous + interval, "no overrun: exactly the next tick"


@settings(max_examples=300, deadline=None)
@given(previous=previous_s, interval=interval_s, a=overrun_s, b=overrun_s)
def test_next_tick_is_monotonic_in_now(previous, interval, a, b):
    early, late = sorted((previous + a * interval, previous + b * interval))
    tolerance = 1e-9 * max(1.0, abs(late)) + 1e-9 * interval
    assert next_tick(previous, early, interval) <= next_tick(previous, late, interval) + tolerance


@settings(max_examples=300, deadline=None)
@given(previous=st.integers(0, 10**6), interval=st.integers(1, 3600),
       elapsed=st.integers(0, 10**6))
def test_next_tick_exact_on_integers(previous, interval, elapsed):
    """With integral values there is no rounding: the tick is exactly on the grid."""
    now = previous + elapsed
    tick = next_tick(float(previous), float(now), float(interval))
    assert tick.is_integer()
    assert (int(tick) - previous) % interval == 0
    assert now <= tick <= now + interval
    assert tick >= previous + interval


# --- SourceRunner ---


class Monotonic:
    """Stands in for time.monotonic() inside pipemon.scheduler: polls take no real time."""

    def __init__(self, now: float = 5000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mono(monkeypatch) -> Monotonic:
    clock = Monotonic()
    monkeypatch.setattr(scheduler, "time", SimpleNamespace(monotonic=clock, time=time.time))
    return clock


class FakeSource(Source):
    error_reasons = ("connect", "internal")

    def __init__(self, name: str = "db", timeout: float = 5.0):
        super().__init__(SimpleNamespace(name=name, kind="fake", interval=15.0, timeout=timeout))
        self.outcomes: list = []  # what the next polls do: a value to return or to raise
        self.deadlines: list = []
        self.collected: list = []
        self.during_poll = None  # called inside poll()

    def poll(self, deadline=None):
        self.deadlines.append(deadline)
        if self.during_poll is not None:
            self.during_poll()
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def collect(self, families, snapshot):
        self.collected.append(snapshot)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_runner(secrets=("hunter2",), **kwargs):
    source = FakeSource(**kwargs)
    clock = Clock()
    calls = []
    runner = SourceRunner(source, list(secrets), clock=clock,
                          on_poll=lambda: calls.append(runner.polls))
    return runner, source, clock, calls


def samples(runner: SourceRunner) -> dict[str, list]:
    families = m.Families()
    runner.collect(families)
    return {family.name: family.samples for family in families}


def error_counts(runner: SourceRunner) -> dict[str, float]:
    return {s.labels["reason"]: s.value
            for s in samples(runner)[m.SOURCE_POLL_ERRORS.name.removesuffix("_total")]}


def test_runner_before_the_first_poll():
    runner, _, _, _ = make_runner()
    assert runner.up is None
    assert runner.health()["status"] == "pending"
    assert runner.consecutive_failures == 0
    assert runner.hung_for() == 0.0
    got = samples(runner)
    assert m.SOURCE_UP.name not in got and m.SOURCE_LAST_SUCCESS.name not in got
    # the kind's reasons are there at 0 before any error, so rate() sees the first one
    assert error_counts(runner) == {"connect": 0.0, "internal": 0.0}


def test_runner_success_then_failures_then_recovery(mono):
    runner, source, clock, calls = make_runner()
    source.outcomes = [
        {"n": 1},
        PollError("connect", "could not connect"),
        PollError("connect", "could not connect again"),
        {"n": 2},
    ]
    assert runner.poll_once() is True
    assert (runner.up, runner.snapshot, runner.last_success) == (True, {"n": 1}, clock.now)
    assert runner.health()["status"] == "up"

    clock.now += 15
    assert runner.poll_once() is False
    assert runner.up is False and runner.snapshot is None
    assert runner.consecutive_failures == 1
    assert runner.last_success == clock.now - 15  # unchanged by a failure
    assert runner.last_attempt == clock.now
    assert runner.last_error.reason == "connect"
    assert runner.last_error.at == clock.now

    clock.now += 15
    assert runner.poll_once() is False
    assert runner.consecutive_failures == 2
    health = runner.health()
    assert health["status"] == "down"
    assert health["consecutive_failures"] == 2
    assert health["last_error"]["message"] == "could not connect again"

    clock.now += 15
    assert runner.poll_once() is True
    assert runner.up is True and runner.consecutive_failures == 0
    assert runner.snapshot == {"n": 2} and runner.last_success == clock.now
    assert runner.polls == 4
    assert calls == [1, 2, 3, 4]  # told after every poll, with the bookkeeping done
    assert error_counts(runner) == {"connect": 2.0, "internal": 0.0}


def test_collect_gets_the_snapshot_only_while_up(mono):
    runner, source, _, _ = make_runner()
    source.outcomes = [{"n": 1}, PollError("connect", "no")]
    runner.collect(m.Families())
    runner.poll_once()
    got = samples(runner)
    runner.poll_once()
    got_down = samples(runner)
    assert source.collected == [None, {"n": 1}, None]
    assert [s.value for s in got[m.SOURCE_UP.name]] == [1]
    assert [s.value for s in got_down[m.SOURCE_UP.name]] == [0]
    assert got_down[m.SOURCE_LAST_SUCCESS.name][0].value == runner.last_success
    assert got_down[m.SOURCE_UP.name][0].labels == {"source": "db", "kind": "fake"}


def test_poll_durations_histogram_counts_every_poll(mono):
    runner, source, _, _ = make_runner()
    durations = iter([0.003, 0.3, 2.0])
    source.during_poll = lambda: setattr(mono, "now", mono.now + next(durations))
    source.outcomes = [1, PollError("connect", "x"), ValueError("y")]
    for _ in range(3):
        runner.poll_once()
    got = samples(runner)[m.SOURCE_POLL_DURATION.name]
    buckets = {s.labels["le"]: s.value for s in got if s.name.endswith("_bucket")}
    assert buckets["0.005"] == 1 and buckets["0.25"] == 1 and buckets["0.5"] == 2
    assert buckets["2.5"] == 3 and buckets["+Inf"] == 3
    [count] = [s.value for s in got if s.name.endswith("_count")]
    [total] = [s.value for s in got if s.name.endswith("_sum")]
    assert count == 3 and math.isclose(total, 2.303)
    assert math.isclose(runner.last_duration, 2.0)


def test_unknown_reason_is_counted_too(mono):
    runner, source, _, _ = make_runner()
    source.outcomes = [PollError("permission", "denied")]
    runner.poll_once()
    assert error_counts(runner) == {"connect": 0.0, "internal": 0.0, "permission": 1.0}


def test_a_bug_in_the_source_is_reported_as_internal(mono):
    runner, source, _, _ = make_runner()
    source.outcomes = [KeyError("column"), ZeroDivisionError("division by zero")]
    assert runner.poll_once() is False
    assert runner.last_error.reason == "internal"
    assert runner.last_error.message == "KeyError: 'column'"
    assert runner.poll_once() is False
    assert runner.last_error.message == "ZeroDivisionError: division by zero"
    assert runner.consecutive_failures == 2
    assert error_counts(runner)["internal"] == 2.0


@pytest.mark.parametrize("error", [
    PollError("connect", "password authentication failed: hunter2 for user x"),
    RuntimeError("dsn postgres://x:hunter2@db/y refused"),
])
def test_secrets_are_redacted_from_error_messages(mono, error):
    runner, source, _, _ = make_runner()
    source.outcomes = [error]
    runner.poll_once()
    message = runner.last_error.message
    assert "hunter2" not in message and "***" in message
    assert "hunter2" not in str(runner.health())


def test_redaction_longest_secret_first_empty_ignored_and_cut(mono):
    runner, source, _, _ = make_runner(secrets=("", "abc", "abcdef"))
    source.outcomes = [PollError("connect", "key abcdef\nand abc\n" + "x" * 1000)]
    runner.poll_once()
    message = runner.last_error.message
    assert message.startswith("key *** and *** x")  # not "***def"; one line
    assert "abc" not in message
    assert len(message) == MAX_ERROR_LENGTH and message.endswith("...")


def test_poll_gets_its_deadline_timeout_after_the_start(mono):
    runner, source, _, _ = make_runner(timeout=7.0)
    source.outcomes = [1]
    started = mono.now
    runner.poll_once()
    assert source.deadlines == [started + 7.0]


def test_success_past_the_deadline_and_grace_fails_as_timeout(mono):
    runner, source, _, _ = make_runner(timeout=5.0)
    overruns = iter([5.0 + scheduler.OVERRUN_GRACE - 0.5, 5.0 + scheduler.OVERRUN_GRACE + 0.5])
    source.during_poll = lambda: setattr(mono, "now", mono.now + next(overruns))
    source.outcomes = [{"n": 1}, {"n": 2}]
    assert runner.poll_once() is True  # within the grace: kept
    assert runner.poll_once() is False
    assert runner.last_error.reason == "timeout" and runner.snapshot is None
    assert runner.last_error.message.startswith("the poll took 8.5s")
    assert error_counts(runner)["timeout"] == 1.0


def test_failure_past_the_deadline_keeps_its_own_reason(mono):
    runner, source, _, _ = make_runner(timeout=5.0)
    source.during_poll = lambda: setattr(mono, "now", mono.now + 100)
    source.outcomes = [PollError("connect", "refused")]
    runner.poll_once()
    assert runner.last_error.reason == "connect"


def test_hung_for_is_zero_when_idle_and_counts_past_the_deadline(mono):
    runner, source, _, _ = make_runner(timeout=5.0)
    seen = []

    def during_poll():
        seen.append(runner.hung_for())
        mono.now += 5.0 + scheduler.HUNG_AFTER  # exactly at the limit: not hung yet
        seen.append(runner.hung_for())
        mono.now += 30
        seen.append(runner.hung_for())

    source.during_poll = during_poll
    source.outcomes = [1]
    assert runner.hung_for() == 0.0
    runner.poll_once()
    assert seen == [0.0, 0.0, 30.0]
    assert runner.hung_for() == 0.0  # idle again, however late the last poll finished
