"""A pipeline simulated job by job, and the metrics pipemon replicas would export for it.

Each queue runs second by second: jobs arrive (Poisson, with day/night swings and idle hours),
wait in FIFO order for a worker, run for a lognormal time and finish as succeeded, failed or
cancelled. Workers are a fixed pool or an autoscaled one that scales to zero and pays a cold
start. Faults and noise are events that change this for a while (workers gone or hung, a
redeploy, failures, slowness, a stuck job) or change what is observed (an exporter restart,
missed scrapes, a source or the whole exporter down, a second replica).

A `service` source is an instrumented HTTP service that Prometheus scrapes pod by pod: its
requests, 5xx, latency histogram and business operations, drawn per pod and 15 s step from their
distributions (never request by request), so a day at hundreds of requests a second stays cheap.

The observation follows pipemon's metric contract (pipemon.metrics): gauges as of the replica's
last poll, counters and histograms counted since that replica started (so a restart resets
them), nothing but `up` while a scrape fails. The history is sampled every 15 s; replicas poll
with different phases.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import zlib
from collections import deque
from dataclasses import dataclass, field

from pipemon import metrics as m
from pipemon.backtest.scenario import (
    Event,
    QueueSpec,
    RegionSpec,
    Scenario,
    SourceSpec,
    Spread,
)
from pipemon.backtest.series import History

STEP = 15.0  # scrape and evaluation interval
TICK = 1.0  # simulation resolution, seconds
SNAPSHOT = 5.0  # state kept every 5 s: replicas poll at 0, 5 or 10 s before a scrape
WARMUP = 1800.0  # the pipeline runs this long before the history starts (steady state at 0)
JOB = "pipemon"
JOB_BUCKETS = (*m.JOB_SECONDS_BUCKETS, math.inf)
STORAGE_BUCKETS = (*m.STORAGE_SECONDS_BUCKETS, math.inf)
PEAK_BUCKETS = (*m.PEAK_DBFS_BUCKETS, math.inf)
LOUDNESS_BUCKETS = (*m.LOUDNESS_LUFS_BUCKETS, math.inf)
OUTCOMES = ("succeeded", "failed", "cancelled")
STATES = ("scheduled", "waiting", "running", "retrying")
OPERATIONS = ("put", "get", "delete")
REPLICA_COUNTER_OFFSET = 1000  # a second replica started earlier: its counters are higher


def _rng(seed: int, *names: str) -> random.Random:
    """A generator per simulated part: adding a queue does not change the others' traffic."""
    return random.Random(zlib.crc32("/".join((str(seed), *names)).encode()))


def _lognormal(rng: random.Random, spread: Spread) -> float:
    return spread.median * math.exp(spread.sigma * rng.gauss(0.0, 1.0))


def _bucket(bounds: tuple[float, ...], value: float) -> int:
    return bisect.bisect_left(bounds, value)


# --------------------------------------------------------------------------------------------
# Queues
# --------------------------------------------------------------------------------------------


@dataclass
class QueueState:
    """A queue at one instant, as pipemon would read it."""

    waiting: int = 0
    running: int = 0
    oldest: float = 0.0
    stuck: int = 0
    # Cumulative since the start of the simulation: finished per outcome, run-time bucket
    # counts per outcome (not cumulative over `le`), wait-time bucket counts.
    finished: tuple[int, ...] = (0, 0, 0)
    run: tuple[tuple[int, ...], ...] = ()
    wait: tuple[int, ...] = ()


@dataclass
class _Running:
    start: float
    end: float  # math.inf: never finishes on its own (hung worker, stuck job)
    ready: float
    extra_worker: bool = False


@dataclass(order=True)
class _Finish:
    end: float
    seq: int
    job: _Running = field(compare=False)


class QueueSim:
    def __init__(self, spec: QueueSpec, source: SourceSpec, events: list[Event], seed: int):
        self.spec, self.source = spec, source
        self.events = [e for e in events if e.source == source.name and e.queue == spec.name]
        self.rng = _rng(seed, source.name, spec.name)
        self.waiting: deque[float] = deque()  # ready times, oldest first
        self.running: list[_Finish] = []  # heap by end time
        self.seq = 0
        self.idle_since: list[float] = []  # one entry per idle, ready worker
        self.busy = 0  # workers holding a job (pool workers only)
        self.booting: list[float] = []  # ready times of workers starting
        self.hung_jobs: list[_Running] = []
        self.finished = [0, 0, 0]
        self.run_counts = [[0] * len(JOB_BUCKETS) for _ in OUTCOMES]
        self.wait_counts = [0] * len(JOB_BUCKETS)
        for _ in range(spec.workers.min):
            self.idle_since.append(-WARMUP)

    # --- effects of the events at time t ---
    def _active(self, kind: str, t: float) -> list[Event]:
        return [e for e in self.events if e.kind == kind and e.active(t)]

    def _fail_ratio(self, t: float) -> float:
        active = self._active("fail_ratio", t)
        return active[-1].params["value"] if active else self.spec.fail_ratio

    def _can_start(self, t: float) -> bool:
        if self._active("workers_gone", t):
            return False
        return not any(e.at <= t < e.at + e.params.get("pause", 40.0)
                       for e in self.events if e.kind == "redeploy")

    # --- the simulation ---
    def run(self, duration: float) -> list[QueueState]:
        """The queue's state every SNAPSHOT seconds from 0 to `duration`."""
        snapshots: list[QueueState] = []
        t = -WARMUP
        transitions = sorted({e.at for e in self.events} | {e.until for e in self.events
                                                           if e.until != math.inf})
        while t < duration + SNAPSHOT:
            end = t + TICK
            for boundary in transitions:
                if t <= boundary < end:
                    self._transition(boundary)
            self._arrive(t, end)
            self._finish(end)
            self._scale(end)
            self._start(end)
            if end >= 0 and end % SNAPSHOT == 0:
                snapshots.append(self._observe(end))
            t = end
        return snapshots

    def _arrive(self, t: float, end: float) -> None:
        """Poisson arrivals in [t, end) at the rate of t (drawn again every tick: the rate
        changes over the day, and the exponential distribution has no memory)."""
        rate = self.spec.arrivals.rate(max(t, 0.0))
        for event in self._active("arrivals", t):
            rate *= event.params["factor"]
        if rate <= 0:
            return
        at = t + self.rng.expovariate(rate)
        while at < end:
            self.waiting.append(at)
            at += self.rng.expovariate(rate)

    def _finish(self, now: float) -> None:
        while self.running and self.running[0].end <= now:
            item = heapq.heappop(self.running)
            job = item.job
            roll = self.rng.random()
            fail = self._fail_ratio(job.end)
            outcome = 1 if roll < fail else 2 if roll < fail + self.spec.cancel_ratio else 0
            self._count_finish(outcome, job.end - job.start)
            if not job.extra_worker:
                self.busy -= 1
                self.idle_since.append(job.end)

    def _count_finish(self, outcome: int, run_seconds: float) -> None:
        self.finished[outcome] += 1
        self.run_counts[outcome][_bucket(JOB_BUCKETS, run_seconds)] += 1

    def _scale(self, now: float) -> None:
        workers = self.spec.workers
        ready = [b for b in self.booting if b <= now]
        self.booting = [b for b in self.booting if b > now]
        self.idle_since += [now] * len(ready)
        if self._active("workers_gone", now):
            return
        # Idle workers above the minimum leave after idle_after.
        total = len(self.idle_since) + self.busy + len(self.booting)
        self.idle_since.sort()
        while total > workers.min and self.idle_since and \
                now - self.idle_since[0] >= workers.idle_after:
            self.idle_since.pop(0)
            total -= 1
        # One worker per job ready to run, up to max; a new worker pays the cold start.
        demand = min(workers.max, max(workers.min, len(self.waiting) + self.busy))
        low, high = workers.cold_start
        for _ in range(demand - total):
            self.booting.append(now + self.rng.uniform(low, high))

    def _start(self, now: float) -> None:
        if not self._can_start(now):
            return
        hung = bool(self._active("workers_hung", now))
        slow = 1.0
        for event in self._active("slow", now):
            slow *= event.params["factor"]
        while self.idle_since and self.waiting and self.waiting[0] <= now:
            ready = self.waiting.popleft()
            self.idle_since.pop()
            self.busy += 1
            self.wait_counts[_bucket(JOB_BUCKETS, now - ready)] += 1
            run = _lognormal(self.rng, self.spec.run) * slow
            job = _Running(now, math.inf if hung else now + run, ready)
            if hung:
                self.hung_jobs.append(job)
            else:
                self._push(job)

    def _push(self, job: _Running) -> None:
        self.seq += 1
        heapq.heappush(self.running, _Finish(job.end, self.seq, job))

    def _transition(self, at: float) -> None:
        for event in self.events:
            if event.kind == "workers_gone" and event.at == at:
                # The workers die: their jobs go back to the queue, oldest first.
                jobs = [f.job for f in self.running if not f.job.extra_worker] + self.hung_jobs
                self.running = [f for f in self.running if f.job.extra_worker]
                heapq.heapify(self.running)
                self.hung_jobs = []
                for job in sorted(jobs, key=lambda j: j.ready, reverse=True):
                    self.waiting.appendleft(job.ready)
                self.busy = 0
                self.idle_since, self.booting = [], []
            elif event.kind == "workers_gone" and event.until == at:
                self.idle_since = [at] * max(self.spec.workers.min, 1 if self.waiting else 0)
            elif event.kind == "workers_hung" and event.at == at:
                for item in self.running:  # every job in progress hangs with its worker
                    if not item.job.extra_worker:
                        item.job.end = math.inf
                        self.hung_jobs.append(item.job)
                self.running = [f for f in self.running if f.job.extra_worker]
                heapq.heapify(self.running)
            elif event.kind == "workers_hung" and event.until == at:
                # The hung workers are restarted: their jobs are run again from the start.
                for job in sorted(self.hung_jobs, key=lambda j: j.ready, reverse=True):
                    self.waiting.appendleft(job.ready)
                self.busy -= len(self.hung_jobs)
                self.idle_since += [at] * len(self.hung_jobs)
                self.hung_jobs = []
            elif event.kind == "stuck_job" and event.at == at:
                self._push(_Running(at, event.until, at, extra_worker=True))

    def _observe(self, now: float) -> QueueState:
        ready = [r for r in self.waiting if r <= now]
        running = [f.job for f in self.running] + self.hung_jobs
        stuck_after = self.source.stuck_after
        return QueueState(
            waiting=len(ready), running=len(running),
            oldest=now - ready[0] if ready else 0.0,
            stuck=sum(1 for j in running if now - j.start > stuck_after),
            finished=tuple(self.finished),
            run=tuple(tuple(c) for c in self.run_counts),
            wait=tuple(self.wait_counts))


# --------------------------------------------------------------------------------------------
# Storage probes, analysis results, checks
# --------------------------------------------------------------------------------------------


@dataclass
class StorageState:
    success: int = 1
    durations: tuple[tuple[int, ...], ...] = ()  # per operation, bucket counts
    failures: int = 0  # failed put operations (reason "connect")


def simulate_storage(spec: SourceSpec, events: list[Event], seed: int,
                     duration: float) -> list[StorageState]:
    rng = _rng(seed, spec.name)
    mine = [e for e in events if e.source == spec.name]
    counts = [[0] * len(STORAGE_BUCKETS) for _ in OPERATIONS]
    failures, success = 0, 1
    snapshots = []
    probe_at = rng.uniform(0, spec.interval) - spec.interval
    t = 0.0
    while t <= duration + SNAPSHOT:
        while probe_at <= t:
            if any(e.kind == "storage_outage" and e.active(probe_at) for e in mine):
                failures += 1
                success = 0
            else:
                factor = 1.0
                for event in mine:
                    if event.kind == "storage_slow" and event.active(probe_at):
                        factor *= event.params["factor"]
                for i, _ in enumerate(OPERATIONS):
                    seconds = _lognormal(rng, spec.latency) * factor
                    counts[i][_bucket(STORAGE_BUCKETS, seconds)] += 1
                success = 1
            probe_at += spec.interval
        snapshots.append(StorageState(success, tuple(tuple(c) for c in counts), failures))
        t += SNAPSHOT
    return snapshots


@dataclass
class AnalysisState:
    results: tuple[int, int] = (0, 0)  # succeeded, failed
    durations: tuple[int, ...] = ()
    # audio levels of the successful results: bucket counts, and peaks above m.CLIPPING_DBFS
    peaks: tuple[int, ...] = ()
    loudness: tuple[int, ...] = ()
    clipped: int = 0


# Audio levels of a successful analysis: an integrated loudness around the -14 LUFS target
# (standard deviation 1.2 LU), a peak 9.5 +- 0.8 dB above it (a mastered track's
# peak-to-loudness ratio), at most full scale; LOUD_TRACKS of them are hot masters peaking at
# -1 to 0 dBFS. About 17% of healthy tracks peak above -3 dBFS.
LOUDNESS_LUFS = (-14.0, 1.2)
PEAK_ABOVE_LOUDNESS = (9.5, 0.8)
LOUD_TRACKS = 0.02


def _audio(rng: random.Random, events: list[Event], at: float) -> tuple[float, float]:
    """(peak dBFS, loudness LUFS) of a track finished at `at`; always four draws, so an event
    does not change the draws of later tracks."""
    shift = sum(e.params["lu"] for e in events if e.kind == "loudness_shift" and e.active(at))
    clipping = max([LOUD_TRACKS] + [e.params["share"] for e in events
                                    if e.kind == "audio_clipping" and e.active(at)])
    loudness = rng.gauss(*LOUDNESS_LUFS) + shift
    peak = loudness + rng.gauss(*PEAK_ABOVE_LOUDNESS)
    hot, hot_peak = rng.random(), rng.uniform(-1.0, 0.0)
    return min(0.0, hot_peak if hot < clipping else peak), loudness


def simulate_analysis(spec: SourceSpec, events: list[Event], seed: int,
                      duration: float) -> list[AnalysisState]:
    rng = _rng(seed, spec.name)
    audio_rng = _rng(seed, spec.name, "audio")  # the results and durations stay as they were
    mine = [e for e in events if e.source == spec.name and e.kind == "analysis_degraded"]
    audio_events = [e for e in events if e.source == spec.name
                    and e.kind in ("audio_clipping", "loudness_shift")]
    ok = failed = clipped = 0
    counts = [0] * len(JOB_BUCKETS)
    peaks, loudness = [0] * len(PEAK_BUCKETS), [0] * len(LOUDNESS_BUCKETS)
    snapshots = []
    at = rng.expovariate(spec.per_second) if spec.per_second > 0 else math.inf
    t = 0.0
    while t <= duration + SNAPSHOT:
        while at <= t:
            ratio = next((e.params["success_ratio"] for e in mine if e.active(at)),
                         spec.success_ratio)
            if rng.random() < ratio:
                ok += 1
                peak, lufs = _audio(audio_rng, audio_events, at)
                peaks[_bucket(PEAK_BUCKETS, peak)] += 1
                loudness[_bucket(LOUDNESS_BUCKETS, lufs)] += 1
                clipped += peak > m.CLIPPING_DBFS
            else:
                failed += 1
            counts[_bucket(JOB_BUCKETS, _lognormal(rng, spec.duration))] += 1
            at += rng.expovariate(spec.per_second)
        snapshots.append(AnalysisState((ok, failed), tuple(counts), tuple(peaks),
                                       tuple(loudness), clipped))
        t += SNAPSHOT
    return snapshots


def check_values(spec: SourceSpec, events: list[Event], t: float) -> dict[str, float]:
    values = dict(spec.checks)
    for event in events:
        if event.source == spec.name and event.kind == "check_value" and event.active(t):
            values[event.params["check"]] = event.params["value"]
    return values


# --------------------------------------------------------------------------------------------
# What the replicas export, as Prometheus scrapes it
# --------------------------------------------------------------------------------------------


@dataclass
class Replica:
    index: int
    instance: str
    phase: float  # seconds between the replica's poll and the scrape
    offset: int  # counters carried from before the history (started earlier)
    down: list[tuple[float, float]] = field(default_factory=list)  # scrapes fail
    restarts: list[float] = field(default_factory=list)  # counters reset here

    def scraped(self, t: float) -> bool:
        return not any(a <= t < b for a, b in self.down)

    def counting_since(self, t: float) -> float | None:
        """When the replica last (re)started before t; None: before the history."""
        starts = [r for r in self.restarts if r <= t]
        return starts[-1] if starts else None


def replicas_of(scenario: Scenario) -> list[Replica]:
    replicas = [Replica(i, f"pipemon-{i}:9864", phase=(5.0 * i) % STEP,
                        offset=REPLICA_COUNTER_OFFSET * i) for i in range(scenario.replicas)]
    for event in scenario.events:
        targets = [r for r in replicas
                   if event.params.get("replica") in (None, r.index)]
        if event.kind == "exporter_restart":
            down = event.params.get("down", 30.0)
            for r in targets:
                r.down.append((event.at, event.at + down))
                r.restarts.append(event.at + down)
        elif event.kind == "scrape_gap":
            for r in targets:
                r.down.append((event.at, event.until))
        elif event.kind == "exporter_down":
            for r in replicas:
                r.down.append((event.at, event.until))
    return replicas


def _snap(snapshots: list, t: float):
    """The snapshot at or before t (t >= 0)."""
    return snapshots[min(len(snapshots) - 1, max(0, int(t // SNAPSHOT)))]


def history(scenario: Scenario, wanted: set[str] | None = None) -> History:
    """The scenario's history: every series the rules read (all when `wanted` is None)."""
    steps = int(scenario.duration // STEP) + 1
    out = History(steps, STEP)
    events = list(scenario.events)
    queues = {(s.name, q.name): QueueSim(q, s, events, scenario.seed).run(scenario.duration)
              for s in scenario.sources if s.kind == "queue" for q in s.queues}
    storage = {s.name: simulate_storage(s, events, scenario.seed, scenario.duration)
               for s in scenario.sources if s.kind == "storage"}
    analysis = {s.name: simulate_analysis(s, events, scenario.seed, scenario.duration)
                for s in scenario.sources if s.kind == "analysis"}

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    outages = {s.name: [e for e in events if e.kind == "source_down" and e.source == s.name]
               for s in scenario.sources}

    for replica in replicas_of(scenario):
        base = {"job": JOB, "instance": replica.instance}
        up = out.values("up", **base)
        for k in range(steps):
            t = k * STEP
            up[k] = 1.0 if replica.scraped(t) else 0.0
            if not up[k]:
                continue
            poll = max(0.0, t - replica.phase)
            since = replica.counting_since(poll)
            for source in scenario.sources:
                if source.kind in ("service", "endpoint"):
                    continue  # scraped by Prometheus itself, not through pipemon
                source_down = [e for e in outages[source.name] if e.at <= poll]
                down_now = any(e.active(poll) for e in source_down)
                # While its source is down a replica reads nothing new: counters stay as
                # of the outage; the finishes are counted once it is back.
                read_at = min([e.at for e in source_down if e.active(poll)] or [poll])
                labels = dict(base, **source.exported)
                if want(m.SOURCE_UP.name):
                    out.values(m.SOURCE_UP.name, **labels, kind=source.kind)[k] = \
                        0.0 if down_now else 1.0
                if source.kind == "queue":
                    for queue in source.queues:
                        _export_queue(out, k, dict(labels, queue=queue.name),
                                      queues[(source.name, queue.name)], read_at, since,
                                      replica.offset, down_now, want)
                elif source.kind == "storage":
                    _export_storage(out, k, dict(labels, bucket=source.bucket),
                                    storage[source.name], read_at, since, replica.offset,
                                    down_now, want)
                elif source.kind == "analysis":
                    _export_analysis(out, k, labels, analysis[source.name], read_at, since,
                                     replica.offset, want)
                elif source.kind == "checks" and not down_now and want(m.CHECK_VALUE.name):
                    for check, value in check_values(source, events, poll).items():
                        out.values(m.CHECK_VALUE.name, **labels, check=check)[k] = value
    services = [s for s in scenario.sources if s.kind == "service"]
    for index, source in enumerate(services):
        simulate_service(out, source, events, scenario.seed, index, want)
    for source in scenario.sources:
        if source.kind == "endpoint":
            simulate_endpoints(out, source, events, scenario.seed, want)
    out.mark_stale()
    return out


def _delta(now, then, offset):
    """Counter values of a replica: since its last restart (`then`, the state at that moment),
    or since before the history began (`then` None: it carries `offset` from that time)."""
    if then is None:
        return [a + offset for a in now]
    return [a - b for a, b in zip(now, then, strict=True)]


def _cumulative(counts: list[int]) -> list[int]:
    total, out = 0, []
    for c in counts:
        total += c
        out.append(total)
    return out


def _le(bounds: tuple[float, ...]) -> list[str]:
    return [m.floatToGoString(b) for b in bounds]


def _histogram(out, k, name, labels, now, then, offset, bounds) -> None:
    """One histogram's `_bucket` series (cumulative over `le`) from per-bucket counts; a
    replica that started before the history carries `offset` observations in its first one."""
    counts = _delta(now, then, 0)
    counts[0] += offset if then is None else 0
    for le, value in zip(_le(bounds), _cumulative(counts), strict=True):
        out.values(name, **labels, le=le)[k] = value


def _export_queue(out, k, labels, snaps, read_at, since, offset, down, want) -> None:
    now = _snap(snaps, read_at)
    then = _snap(snaps, since) if since is not None else None
    if not down:
        for state in STATES:
            value = {"waiting": now.waiting, "running": now.running}.get(state, 0)
            if want(m.QUEUE_JOBS.name):
                out.values(m.QUEUE_JOBS.name, **labels, state=state)[k] = value
        if want(m.QUEUE_OLDEST_WAITING.name):
            out.values(m.QUEUE_OLDEST_WAITING.name, **labels)[k] = round(now.oldest, 3)
        if want(m.QUEUE_STUCK.name):
            out.values(m.QUEUE_STUCK.name, **labels)[k] = now.stuck
    finished = _delta(now.finished, then.finished if then else None, offset)
    if want(m.QUEUE_FINISHED.name):
        for outcome, value in zip(OUTCOMES, finished, strict=True):
            out.values(m.QUEUE_FINISHED.name, **labels, outcome=outcome)[k] = value
    run_name = m.QUEUE_RUN_SECONDS.name + "_bucket"
    if want(run_name):
        for i, outcome in enumerate(OUTCOMES):
            _histogram(out, k, run_name, dict(labels, outcome=outcome), now.run[i],
                       then.run[i] if then else None, offset, JOB_BUCKETS)
    wait_name = m.QUEUE_WAIT_SECONDS.name + "_bucket"
    if want(wait_name):
        _histogram(out, k, wait_name, labels, now.wait, then.wait if then else None, offset,
                   JOB_BUCKETS)


def _export_storage(out, k, labels, snaps, read_at, since, offset, down, want) -> None:
    now = _snap(snaps, read_at)
    then = _snap(snaps, since) if since is not None else None
    if not down and want(m.STORAGE_PROBE_SUCCESS.name):
        out.values(m.STORAGE_PROBE_SUCCESS.name, **labels)[k] = now.success
    name = m.STORAGE_PROBE_DURATION.name + "_bucket"
    if want(name):
        for i, operation in enumerate(OPERATIONS):
            _histogram(out, k, name, dict(labels, operation=operation), now.durations[i],
                       then.durations[i] if then else None, offset, STORAGE_BUCKETS)
    if want(m.STORAGE_PROBE_FAILURES.name):
        failures = now.failures - (then.failures if then else 0)
        out.values(m.STORAGE_PROBE_FAILURES.name, **labels, operation="put",
                   reason="connect")[k] = failures


def _export_analysis(out, k, labels, snaps, read_at, since, offset, want) -> None:
    now = _snap(snaps, read_at)
    then = _snap(snaps, since) if since is not None else None
    if want(m.ANALYSIS_RESULTS.name):
        results = _delta(now.results, then.results if then else None, offset)
        for outcome, value in zip(("succeeded", "failed"), results, strict=True):
            out.values(m.ANALYSIS_RESULTS.name, **labels, outcome=outcome)[k] = value
    name = m.ANALYSIS_DURATION.name + "_bucket"
    if want(name):
        _histogram(out, k, name, labels, now.durations, then.durations if then else None,
                   offset, JOB_BUCKETS)
    # Audio levels: a replica that started before the history carries `offset` tracks in its
    # lowest buckets (quiet, not clipping), as the durations do.
    for spec, bounds, field_ in ((m.ANALYSIS_PEAK, PEAK_BUCKETS, "peaks"),
                                 (m.ANALYSIS_LOUDNESS, LOUDNESS_BUCKETS, "loudness")):
        counts = getattr(now, field_)
        before = getattr(then, field_) if then else None
        if want(spec.name + "_bucket"):
            _histogram(out, k, spec.name + "_bucket", labels, counts, before, offset, bounds)
        if want(spec.name + "_count"):
            out.values(spec.name + "_count", **labels)[k] = \
                sum(counts) - (sum(before) if before else -offset)
    if want(m.ANALYSIS_CLIPPED.name):
        out.values(m.ANALYSIS_CLIPPED.name, **labels)[k] = \
            now.clipped - (then.clipped if then else 0)


# --------------------------------------------------------------------------------------------
# Instrumented services: HTTP requests, latency and business operations, pod by pod
# --------------------------------------------------------------------------------------------

SERVICE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5,
                   2.0, 3.0, 5.0, 10.0, math.inf)
SERVICE_CODES = ("200", "404", "500")
NOT_FOUND_RATIO = 0.02  # answered 404: not an error, the rules must count only 5xx
POD_DOWN = 30.0  # a restarting pod is not scraped this long (`down` of pod_restart)
POD_PORT = 8080
HTTP_REQUESTS = "http_requests_total"
HTTP_DURATION = "http_request_duration_seconds"
APP_OPERATIONS = "app_operations_total"
_POISSON_EXACT = 50.0  # expected count up to which a Poisson draw is exact (inversion)
_BINOMIAL_EXACT = 25.0  # the same for a binomial (above: the normal approximation)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > _POISSON_EXACT:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    u, k = rng.random(), 0
    term = cumulative = math.exp(-mean)
    while u > cumulative and k < 1000:
        k += 1
        term *= mean / k
        cumulative += term
    return k


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if p > 0.5:
        return n - _binomial(rng, n, 1 - p)
    mean = n * p
    if mean > _BINOMIAL_EXACT:
        return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1 - p))))))
    u, k = rng.random(), 0
    term = cumulative = math.exp(n * math.log1p(-p))
    odds = p / (1 - p)
    while u > cumulative and k < n:
        term *= (n - k) / (k + 1) * odds
        k += 1
        cumulative += term
    return k


def _lognormal_cdf(log_bounds: tuple[float, ...], log_median: float, sigma: float) -> list[float]:
    """P(latency <= bound) for each finite bound's logarithm."""
    if sigma <= 0:
        return [1.0 if b >= log_median else 0.0 for b in log_bounds]
    scale = sigma * math.sqrt(2.0)
    return [0.5 * (1.0 + math.erf((b - log_median) / scale)) for b in log_bounds]


def _multinomial(rng: random.Random, n: int, masses: list[float]) -> list[int]:
    """`n` observations over buckets of the given probabilities (the last bucket takes the
    rest), drawn as sequential binomials."""
    counts = [0] * (len(masses) + 1)
    rest = 1.0
    for i, mass in enumerate(masses):
        if n <= 0:
            break
        if mass > 0:
            drawn = _binomial(rng, n, min(1.0, mass / rest)) if rest > 0 else 0
            counts[i] = drawn
            n -= drawn
        rest -= mass
    counts[-1] += max(n, 0)
    return counts


@dataclass
class _Pod:
    region: int
    index: int
    instance: str
    lives: list[tuple[float, float]]  # [start, stop) of each run of the process
    requests: random.Random
    latency: random.Random
    operations: random.Random
    life: int = -1  # the life whose counters are accumulated
    codes: list[int] = field(default_factory=lambda: [0] * len(SERVICE_CODES))
    buckets: list[int] = field(default_factory=lambda: [0] * len(SERVICE_BUCKETS))
    seconds: float = 0.0
    ops: list[int] = field(default_factory=list)  # per operation: success, failure, ...
    series: dict = field(default_factory=dict)  # the pod's value lists in the history

    def life_at(self, t: float) -> int:
        """The index of the life running at t, -1 while the pod is down."""
        for i, (start, stop) in enumerate(self.lives):
            if start <= t < stop:
                return i
        return -1

    def alive(self, a: float, b: float) -> float:
        """Seconds of [a, b) the current life covers."""
        start, stop = self.lives[self.life]
        return max(0.0, min(b, stop) - max(a, start))


def _pod_lives(spec: SourceSpec, events: list[Event]) -> dict[tuple[int, int], list]:
    """Each pod's runs: a pod_restart takes one pod of each targeted region down for `down`
    seconds, the next restart of that region the next pod (a rolling restart), unless `pod`
    names one."""
    downs: dict[tuple[int, int], list[tuple[float, float]]] = {}
    turn = [0] * len(spec.regions)
    for event in sorted((e for e in events if e.kind == "pod_restart"), key=lambda e: e.at):
        for r, region in enumerate(spec.regions):
            if event.region not in ("", region.name):
                continue
            pod = event.params.get("pod")
            if pod is None:
                pod, turn[r] = turn[r] % region.pods, turn[r] + 1
            down = event.params.get("down") or POD_DOWN
            downs.setdefault((r, pod), []).append((event.at, event.at + down))
    lives = {}
    for r, region in enumerate(spec.regions):
        for p in range(region.pods):
            runs, start = [], -math.inf
            for stop, restart in sorted(downs.get((r, p), [])):
                if stop > start:
                    runs.append((start, stop))
                start = max(start, restart)
            runs.append((start, math.inf))
            lives[(r, p)] = runs
    return lives


def _pieces(a: float, b: float, events: list[Event]) -> list[tuple[float, float]]:
    """[a, b) cut where one of the events starts or ends."""
    cuts = sorted({a, b} | {x for e in events for x in (e.at, e.until) if a < x < b})
    return list(itertools.pairwise(cuts))


@dataclass
class _Interval:
    """A region's traffic over one scrape interval: what its pods share."""

    requests: float  # expected requests of the whole region
    error_ratio: float
    masses: list[float]  # probability of each finite latency bucket (not cumulative)
    mean: float  # mean latency, seconds
    variance: float


def _region_interval(spec: SourceSpec, region: RegionSpec, events: list[Event], a: float,
                     b: float, log_bounds: tuple[float, ...], cache: dict) -> _Interval:
    latency = spec.latency
    sigma = latency.sigma
    weights, errors, slows = [], [], []
    for x, y in _pieces(a, b, events):
        mid = (x + y) / 2
        active = [e for e in events if e.active(mid)]
        rate = region.arrivals.rate(max(mid, 0.0))
        slow = 1.0
        error = spec.error_ratio
        for event in active:
            if event.kind == "service_traffic":
                rate *= event.params["factor"]
            elif event.kind == "service_slow":
                slow *= event.params["factor"]
            elif event.kind == "service_errors":
                error = event.params["value"]
        weights.append(rate * (y - x))
        errors.append(error)
        slows.append(slow)
    total = sum(weights)
    if total <= 0:
        return _Interval(0.0, 0.0, [], 0.0, 0.0)
    shares = [w / total for w in weights]
    error = sum(s * e for s, e in zip(shares, errors, strict=True))
    cdf = [0.0] * len(log_bounds)
    mean = second = 0.0
    for share, slow in zip(shares, slows, strict=True):
        if share <= 0:
            continue
        if slow not in cache:
            median = latency.median * slow
            cache[slow] = (_lognormal_cdf(log_bounds, math.log(median), sigma),
                           median * math.exp(sigma ** 2 / 2),
                           median ** 2 * math.exp(2 * sigma ** 2))
        part, part_mean, part_second = cache[slow]
        cdf = [c + share * v for c, v in zip(cdf, part, strict=True)]
        mean += share * part_mean
        second += share * part_second
    masses = [hi - lo for lo, hi in zip([0.0, *cdf], cdf, strict=False)]
    return _Interval(total, error, masses, mean, max(0.0, second - mean ** 2))


def simulate_service(out: History, spec: SourceSpec, events: list[Event], seed: int, index: int,
                     want) -> None:
    """Write the service's series into `out`: per pod, requests by code, the latency histogram
    and the operations, counted since the pod (re)started, every 15 s; nothing while a pod
    restarts. A region's requests are shared by the pods running at the time."""
    wanted = {name: want(name) for name in (
        HTTP_REQUESTS, HTTP_DURATION + "_bucket", HTTP_DURATION + "_count",
        HTTP_DURATION + "_sum", APP_OPERATIONS, "up")}
    if not any(wanted.values()):
        return
    mine = [e for e in events if e.source == spec.name]
    lives = _pod_lives(spec, mine)
    pods: list[list[_Pod]] = []
    for r, region in enumerate(spec.regions):
        pods.append([])
        for p in range(region.pods):
            names = (str(seed), spec.name, region.name, str(p))
            pod = _Pod(r, p, f"10.{index + 1}.{r}.{p + 10}:{POD_PORT}", lives[(r, p)],
                       _rng(*names, "requests"), _rng(*names, "latency"),
                       _rng(*names, "operations"))
            pod.series = _pod_series(out, spec, region, pod, wanted)
            pods[-1].append(pod)
    everyone = [pod for region in pods for pod in region]
    region_events = [[e for e in mine if e.kind.startswith("service_")
                      and e.region in ("", region.name)] for region in spec.regions]
    operation_events = [[e for e in mine if e.kind == "operation_fail_ratio"
                         and e.operation == op.name] for op in spec.operations]
    log_bounds = tuple(math.log(b) for b in SERVICE_BUCKETS[:-1])
    caches: list[dict] = [{} for _ in spec.regions]
    latency_wanted = any(wanted[HTTP_DURATION + s] for s in ("_bucket", "_count", "_sum"))

    first = -round(WARMUP / STEP)
    for k in range(first, out.steps):
        t = k * STEP
        a = t - STEP
        mid = t - STEP / 2
        for pod in everyone:
            life = pod.life_at(t)
            if life != pod.life:  # (re)started: counters from zero
                pod.life = life
                pod.codes = [0] * len(SERVICE_CODES)
                pod.buckets = [0] * len(SERVICE_BUCKETS)
                pod.seconds = 0.0
                pod.ops = [0] * (2 * len(spec.operations))
        # Requests, region by region, shared by the pods running in the middle of the interval.
        for r, region in enumerate(spec.regions):
            interval = _region_interval(spec, region, region_events[r], a, t, log_bounds,
                                        caches[r])
            running = sum(1 for pod in pods[r] if pod.life_at(mid) >= 0) or 1
            for pod in pods[r]:
                if pod.life < 0:
                    continue
                n = _poisson(pod.requests,
                             interval.requests * pod.alive(a, t) / STEP / running)
                errors = _binomial(pod.requests, n, interval.error_ratio)
                missing = _binomial(pod.requests, n - errors, NOT_FOUND_RATIO)
                pod.codes[0] += n - errors - missing
                pod.codes[1] += missing
                pod.codes[2] += errors
                if latency_wanted and n:
                    for i, c in enumerate(_multinomial(pod.latency, n, interval.masses)):
                        pod.buckets[i] += c
                    noise = pod.latency.gauss(0.0, math.sqrt(n * interval.variance))
                    pod.seconds += max(0.0, n * interval.mean + noise)
        # Operations, shared by every running pod of the service.
        running = sum(1 for pod in everyone if pod.life_at(mid) >= 0) or 1
        for o, operation in enumerate(spec.operations):
            fail = 0.0
            for x, y in _pieces(a, t, operation_events[o]):
                active = [e for e in operation_events[o] if e.active((x + y) / 2)]
                ratio = active[-1].params["value"] if active else operation.fail_ratio
                fail += ratio * (y - x) / STEP
            for pod in everyone:
                if pod.life < 0:
                    continue
                n = _poisson(pod.operations,
                             operation.per_second * pod.alive(a, t) / running)
                failed = _binomial(pod.operations, n, fail)
                pod.ops[2 * o] += n - failed
                pod.ops[2 * o + 1] += failed
        if k >= 0:
            for pod in everyone:
                _record(pod, k)


def _pod_series(out: History, spec: SourceSpec, region: RegionSpec, pod: _Pod,
                wanted: dict[str, bool]) -> dict:
    base = {"job": spec.service, "instance": pod.instance, "service": spec.service}
    series: dict = {}
    if wanted["up"]:
        series["up"] = out.values("up", job=spec.service, instance=pod.instance)
    if wanted[HTTP_REQUESTS]:
        series["codes"] = [out.values(HTTP_REQUESTS, **base, region=region.name, code=code)
                           for code in SERVICE_CODES]
    if wanted[HTTP_DURATION + "_bucket"]:
        series["buckets"] = [out.values(HTTP_DURATION + "_bucket", **base, region=region.name,
                                        le=le) for le in _le(SERVICE_BUCKETS)]
    for part in ("_count", "_sum"):
        if wanted[HTTP_DURATION + part]:
            series[part] = out.values(HTTP_DURATION + part, **base, region=region.name)
    if wanted[APP_OPERATIONS]:
        series["ops"] = [out.values(APP_OPERATIONS, **base, operation=op.name, outcome=outcome)
                         for op in spec.operations for outcome in ("success", "failure")]
    return series


def _record(pod: _Pod, k: int) -> None:
    series = pod.series
    if "up" in series:
        series["up"][k] = 0.0 if pod.life < 0 else 1.0
    if pod.life < 0:
        return  # not scraped: its series go stale
    for values, value in zip(series.get("codes", ()), pod.codes, strict=False):
        values[k] = value
    for values, value in zip(series.get("buckets", ()), _cumulative(pod.buckets),
                             strict=False):
        values[k] = value
    if "_count" in series:
        series["_count"][k] = sum(pod.codes)
    if "_sum" in series:
        series["_sum"][k] = round(pod.seconds, 3)
    for values, value in zip(series.get("ops", ()), pod.ops, strict=False):
        values[k] = value


PROBE_TIMEOUT = 5.0  # examples/blackbox.yml: a probe that gets no answer fails after 5 s


def simulate_endpoints(out: History, spec: SourceSpec, events: list[Event], seed: int,
                       want) -> None:
    """Write blackbox_exporter's probe_success and probe_duration_seconds of each endpoint
    (`job`, `instance` its URL, `region`), one probe per 15 s step: a probe fails with the
    endpoint's `fail_ratio` (rare single failures) or, during `endpoint_down`, with the event's
    `value` (1: unreachable, the probe times out); it takes a lognormal time (`latency`), times
    the `factor` of an `endpoint_slow`."""
    if not (want("probe_success") or want("probe_duration_seconds")):
        return
    mine = [e for e in events if e.source == spec.name and e.kind.startswith("endpoint_")]
    for region, urls in spec.endpoints:
        here = [e for e in mine if e.region in ("", region)]
        for url in urls:
            labels = {"job": spec.job, "instance": url, "region": region}
            success = (out.values("probe_success", **labels) if want("probe_success")
                       else [None] * out.steps)
            seconds = (out.values("probe_duration_seconds", **labels)
                       if want("probe_duration_seconds") else [None] * out.steps)
            rng = _rng(seed, spec.name, region, url)
            for k in range(out.steps):
                t = k * STEP
                down = [e.params.get("value", 1.0) for e in here
                        if e.kind == "endpoint_down" and e.active(t)]
                fail = max([spec.error_ratio, *down])
                slow = math.prod(e.params["factor"] for e in here
                                 if e.kind == "endpoint_slow" and e.active(t))
                failed = rng.random() < fail
                took = _lognormal(rng, spec.latency) * slow
                success[k] = 0.0 if failed else 1.0
                seconds[k] = round(PROBE_TIMEOUT if failed and down and max(down) >= 1
                                   else min(took, PROBE_TIMEOUT), 4)
