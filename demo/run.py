"""`make demo`: pipemon watching a simulated media pipeline, with faults injected on a schedule.

Starts the whole stack on loopback (demo/stack.py), lets the pipeline run healthy for a moment,
then breaks it six ways, each healed as soon as its page has arrived:

  storage outage     the S3 endpoint stops                -> PipemonStorageProbeFailing
  failure burst      20 corrupt files crash the analyser  -> PipemonQueueFailureRatioHigh
  stall              the separation workers go away       -> PipemonQueueStalled
  integrity          a track still in playlists is deleted -> PipemonCheckAboveThreshold
  worker loses FFmpeg  FFmpeg leaves the host's PATH      -> PipemonHostTranscoderDown
  scratch read-only  the worker's scratch volume turns read-only -> PipemonHostScratchNotWritable

The exporter's /health verdict is watched as well: the storage source must turn critical during
the outage and healthy again after it (a change of the verdict is printed as it happens).

And the storage outage, which lasts over a minute, also burns the storage SLO budget fast
(99.9%: a minute is 1.7% of an hour) -> PipemonStorageAvailabilityBudgetBurn, about three
minutes after the outage starts; it resolves five minutes after the outage ends.

Every alert also goes to `pipemon relay` (docs/relay.md): the summary prints each fault's time
to resolution (MTTR) from the relay's history in PostgreSQL, and requires an occurrence for each
expected alert there (resolved, where the alert must resolve).

Every notification the sinks receive is printed as it arrives. DEMO_SECONDS unset: runs until
Ctrl-C. DEMO_SECONDS=N: runs at most N seconds once the stack is up (less when every expected
alert has fired and resolved), prints a summary table and exits 0 only if all of them did.
Ctrl-C, SIGTERM or an error stop every process it started and remove its temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from demo import mttr
from demo.simulator import ANALYSIS, STEMS, WORKERS
from demo.stack import AM_TIMING, BUCKET, CHECKS_POLL, INTERVAL, POLL, Stack
from testkit.net import http_get

WARM_UP = 10  # seconds of healthy pipeline, once Prometheus sees it, before the first fault
STATUS_EVERY = 30  # seconds between two pipeline status lines
PAGE_TIMEOUT = 240  # a fault whose page has not come by then is healed anyway (MISSING)
HEAL_DELAY = 2  # seconds between a page and the heal, so that every receiver has it
POISON_FILES = 20


def now_hms(at: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def say(text: str = "") -> None:
    print(text, flush=True)


# --- notifications -------------------------------------------------------------------------

TITLE = re.compile(r"^\[(?P<status>FIRING|RESOLVED)[^\]]*\](?P<rest>.*)$")


@dataclass(frozen=True)
class Notification:
    at: float
    receiver: str
    status: str  # FIRING or RESOLVED
    alert: str  # the rest of the title: severity, alert name, where
    alertname: str
    labels: dict

    def line(self) -> str:
        return f"{now_hms(self.at)}  {self.receiver:<44} {self.status:<9} {self.alert}"


def parse(at: float, receiver: str, title: str) -> Notification:
    """A notification from its title (alertmanager/templates/pipemon.tmpl, "pipemon.title"):
    `[FIRING] CRITICAL PipemonQueueStalled - queue=stem-separation source=stems`."""
    match = TITLE.match(title)
    if not match:
        return Notification(at, receiver, "?", title, "", {})
    rest = match.group("rest").strip()
    head, _, where = rest.partition(" - ")
    words = [w for w in head.split() if not w.startswith("[")]
    alertname = words[-1] if words else ""
    if head.endswith("(unresolved, escalated)"):
        alertname = head.split()[-3]
    labels = dict(pair.split("=", 1) for pair in where.split() if "=" in pair)
    return Notification(at, receiver, match.group("status"), rest, alertname, labels)


class Inbox:
    """New notifications of the sinks, in arrival order (the sinks only ever append)."""

    def __init__(self, http, smtp):
        self.http, self.smtp = http, smtp
        self._seen_http = 0
        self._seen_smtp = 0
        self.heartbeats = 0

    def new(self) -> list[Notification]:
        found: list[Notification] = []
        requests = self.http.requests()
        for r in requests[self._seen_http:]:
            if r.path == "/heartbeat":
                self.heartbeats += 1
            elif r.path.startswith("/slack/"):
                found.append(parse(r.at, f"slack #alerts-{r.path.rsplit('/', 1)[1]}",
                                   r.body["attachments"][0]["title"]))
            elif r.path == "/pagerduty":
                key = r.body.get("routing_key", "")
                level = key.rsplit("-", 1)[-1] if key.startswith("pd-key-") else key
                found.append(parse(r.at, f"pagerduty {level}",
                                   r.body["payload"]["summary"].partition(": ")[0]))
        self._seen_http = len(requests)
        mails = self.smtp.mails()
        for mail in mails[self._seen_smtp:]:
            found.append(parse(mail.at, f"email {','.join(mail.rcpt_to)}", mail.subject))
        self._seen_smtp = len(mails)
        return sorted(found, key=lambda n: n.at)


# --- faults and what they must page ----------------------------------------------------------

@dataclass
class Expectation:
    fault: str
    alertname: str
    labels: dict
    must_resolve: bool = True
    note: str = ""
    fired_at: float | None = None
    resolved_at: float | None = None

    def matches(self, note: Notification) -> bool:
        return note.alertname == self.alertname and all(
            note.labels.get(k) == v for k, v in self.labels.items())

    @property
    def name(self) -> str:
        where = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return f"{self.alertname}{{{where}}}"

    @property
    def ok(self) -> bool:
        return self.fired_at is not None and (self.resolved_at is not None
                                              or not self.must_resolve)


@dataclass
class Fault:
    name: str
    at: float  # seconds after the first fault
    inject_text: str
    heal_text: str
    inject: Callable[[], str | None]
    heal: Callable[[], str | None]
    expect: Expectation
    side_effects: list[Expectation] = field(default_factory=list)
    injected_at: float | None = None
    healed_at: float | None = None


def schedule(stack: Stack) -> list[Fault]:
    sim = stack.pipeline

    def outage():
        stack.moto.stop()

    def outage_heal():
        stack.moto.start()

    def burst():
        sim.poison_batch(POISON_FILES)

    def burst_heal():
        count = sim.rerun()
        return (f"{count} quick re-analyses succeed, so the failure ratio falls under its "
                "thresholds now rather than when the failures leave its windows")

    def stall():
        sim.set_workers(STEMS, 0)

    def stall_heal():
        sim.set_workers(STEMS, WORKERS[STEMS])

    def integrity():
        track, entries = sim.break_playlist()
        return f"track {track} deleted, {entries} playlist entries now point at nothing"

    def integrity_heal():
        sim.restore_playlist()

    worker = stack.worker

    return [
        Fault("storage outage", 0, "the S3 endpoint stops (moto stopped)",
              "the S3 endpoint is back (moto started)", outage, outage_heal,
              Expectation("storage outage", "PipemonStorageProbeFailing",
                          {"bucket": BUCKET, "source": "r2"}),
              [Expectation("storage outage", "PipemonStorageAvailabilityBudgetBurn",
                           {"bucket": BUCKET, "source": "r2"}, must_resolve=False,
                           note="resolves 5 min after the outage: not awaited")]),
        Fault("failure burst", 15,
              f"{POISON_FILES} corrupt uploads crash the audio analyser, job after job",
              "the corrupt files are removed and the analyser patched",
              burst, burst_heal,
              Expectation("failure burst", "PipemonQueueFailureRatioHigh",
                          {"queue": ANALYSIS, "source": "stems"})),
        Fault("queue stall", 30, "the stem-separation workers are scaled to zero "
              "(jobs keep arriving, none runs)", "the stem-separation workers are back",
              stall, stall_heal,
              Expectation("queue stall", "PipemonQueueStalled",
                          {"queue": STEMS, "source": "stems"})),
        Fault("integrity violation", 45,
              "a clean-up script hard-deletes a track that playlists still use",
              "the track is restored from the backup", integrity, integrity_heal,
              Expectation("integrity violation", "PipemonCheckAboveThreshold",
                          {"check": "playlist_entries_missing_track",
                           "source": "integrity"})),
        Fault("worker loses FFmpeg", 60,
              "a new worker image ships without FFmpeg (gone from the host's PATH)",
              "the previous image is back", worker.remove_ffmpeg, worker.restore_ffmpeg,
              Expectation("worker loses FFmpeg", "PipemonHostTranscoderDown",
                          {"source": "worker"})),
        Fault("scratch read-only", 75,
              "the worker's scratch volume turns read-only",
              "the scratch volume is writable again", worker.scratch_read_only,
              worker.scratch_writable,
              Expectation("scratch read-only", "PipemonHostScratchNotWritable",
                          {"source": "worker"})),
    ]


# --- the run ---------------------------------------------------------------------------------

class Stop(Exception):
    """SIGTERM or SIGHUP: stop like Ctrl-C does."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum, _frame):
    raise Stop(signum)


def die_with_parent() -> None:
    """SIGTERM when `make` (our parent) dies, so that the clean-up still runs (Linux)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that
        raise Stop(signal.SIGTERM)


class HealthWatch:
    """The exporter's /health verdict, read every `EVERY` seconds: changes are printed, and
    when the storage source turned critical and healthy again is kept for the summary."""

    EVERY = 2.0

    def __init__(self, url: str, source: str = "r2"):
        self.url, self.source = url, source
        self.status: str | None = None
        self.parts: dict[str, str] = {}
        self.critical_at: float | None = None  # the storage source's first critical verdict
        self.healthy_at: float | None = None  # ... and its first healthy one after that
        self._next = 0.0

    def check(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + self.EVERY
        try:
            code, body = http_get(self.url + "/health", timeout=2)
            verdict = json.loads(body)["verdict"]
        except (OSError, ValueError, KeyError):
            return
        parts = {c["source"]: c["status"] for c in verdict["components"]}
        if verdict["status"] != self.status or parts != self.parts:
            changed = [f"{name} {status}" for name, status in sorted(parts.items())
                       if self.parts.get(name) != status]
            say(f"{now_hms()}  /health   {verdict['status']} ({code}): {', '.join(changed)}")
            self.status, self.parts = verdict["status"], parts
        mine = parts.get(self.source)
        if mine == "critical" and self.critical_at is None:
            self.critical_at = now
        elif mine == "healthy" and self.critical_at and self.healthy_at is None:
            self.healthy_at = now

    @property
    def ok(self) -> bool:
        return self.critical_at is not None and self.healthy_at is not None


class Demo:
    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.stack = Stack(say=say)
        self.faults: list[Fault] = []
        self.others: list[Notification] = []
        self.health: HealthWatch | None = None
        self.t0: float | None = None
        self.started = time.time()
        self.relay_history: list[mttr.Occurrence] | None = None

    @property
    def expectations(self) -> list[Expectation]:
        return [e for f in self.faults for e in (f.expect, *f.side_effects)]

    def run(self) -> int:
        self.started = time.time()
        say(f"{now_hms()} starting the pipemon demo in {self.stack.root}")
        self.stack.start()
        self.intro()
        say(f"{now_hms()} waiting for Prometheus to see the healthy pipeline ...")
        self.stack.wait_healthy()
        up_at = time.time()
        say(f"{now_hms()} all green ({up_at - self.started:.0f}s after the start); "
            f"first fault in {WARM_UP}s")
        deadline = None
        if self.seconds is not None:
            deadline = up_at + self.seconds
            say(f"(DEMO_SECONDS={self.seconds:g}: stops by {now_hms(deadline)}, or as soon as "
                "every expected alert has fired and resolved)")
        say()
        say("Notifications as they arrive: time, receiver, status, alert")
        self.t0 = up_at + WARM_UP
        self.faults = schedule(self.stack)
        self.health = HealthWatch(self.stack.exporter.url)
        self.loop(deadline)
        self.read_relay(mttr.WAIT)
        return self.summary(time.time() - self.started)

    def read_relay(self, timeout: float) -> None:
        """The relay's history, once it has each resolution the sinks were sent (it hears of
        them on a route of its own, up to a group interval apart), or after `timeout`."""
        wanted = [(exp.alertname, exp.labels, fault.injected_at) for fault in self.faults
                  for exp in (fault.expect, *fault.side_effects) if exp.resolved_at]
        try:
            self.relay_history = mttr.wait_for_resolutions(self.stack.dsn, self.started,
                                                           wanted, timeout)
        except psycopg.Error as exc:
            say(f"{now_hms()}  the relay's history could not be read: {exc}")

    def intro(self) -> None:
        s = self.stack
        group_interval = AM_TIMING["timing"]["critical"]["group_interval"]
        say()
        say("Open:")
        say(f"  Prometheus    {s.prometheus.url}/alerts   (graphs: {s.prometheus.url}/graph)")
        say(f"  Alertmanager  {s.alertmanager.url}/#/alerts")
        say(f"  exporter      {s.exporter.url}/   (metrics: {s.exporter.url}/metrics)")
        say(f"  relay         {s.relay.url}/api/alerts   (active alerts; metrics: "
            f"{s.relay.url}/metrics)")
        say()
        say(f"The exporter polls every {POLL} (checks every {CHECKS_POLL}), Prometheus scrapes and "
            f"evaluates every {INTERVAL}, Alertmanager")
        say(f"announces a change after {group_interval}; rules and routing are the shipped ones. "
            "A fault pages after 75-95 s:")
        say("the alerts' `for: 1m`, plus polling, scraping, evaluation and the 10 s group_wait of "
            "the critical route.")
        say()

    def loop(self, deadline: float | None) -> None:
        """Print the notifications, inject and heal the faults, until the deadline (or the end
        of the schedule) or, without a deadline, until Ctrl-C."""
        inbox = Inbox(self.stack.http, self.stack.smtp)
        pipeline = self.stack.pipeline
        next_status = time.time() + STATUS_EVERY
        done_at: float | None = None
        heartbeat_said = False
        while True:
            now = time.time()
            for note in inbox.new():
                self.observe(note)
            if inbox.heartbeats and not heartbeat_said:
                heartbeat_said = True
                say(f"{now_hms()}  (the Watchdog heartbeat reached the dead man's switch: the "
                    "alerting path works)")
            self.drive(now)
            self.health.check(now)
            if pipeline.error is not None:
                say(f"{now_hms()}  pipeline: {pipeline.error}")
                pipeline.error = None
            if now >= next_status:
                say(f"{now_hms()}  pipeline  {pipeline.status()}")
                next_status = now + STATUS_EVERY
            if done_at is None and all(f.healed_at for f in self.faults) and all(
                    e.ok for e in self.expectations) and self.health.ok:
                done_at = now
                if deadline is None:
                    say(f"{now_hms()}  every fault has paged and resolved (the budget burn "
                        "resolves 5 min after the outage). The pipeline keeps running; Ctrl-C "
                        "stops the demo.")
            if deadline is not None and (now >= deadline or (done_at and now >= done_at + 3)):
                return
            time.sleep(0.25)

    def observe(self, note: Notification) -> None:
        say(note.line())
        for exp in self.expectations:
            fault = next(f for f in self.faults if f.name == exp.fault)
            if not exp.matches(note) or fault.injected_at is None:
                continue
            if note.status == "FIRING" and exp.fired_at is None:
                exp.fired_at = note.at
            elif note.status == "RESOLVED" and exp.fired_at and exp.resolved_at is None:
                exp.resolved_at = note.at
            return
        self.others.append(note)

    def drive(self, now: float) -> None:
        for fault in self.faults:
            if fault.injected_at is None and now >= self.t0 + fault.at:
                extra = fault.inject()
                fault.injected_at = time.time()
                say(f"{now_hms()}  injecting: {fault.name}: {fault.inject_text}"
                    f"{f' ({extra})' if extra else ''} -> expect {fault.expect.alertname}")
                for side in fault.side_effects:
                    say(f"{'':10}and, about 3 min later, {side.alertname} ({side.note})")
            elif fault.injected_at and fault.healed_at is None:
                paged = fault.expect.fired_at
                if (paged and now >= paged + HEAL_DELAY) or now >= fault.injected_at + PAGE_TIMEOUT:
                    extra = fault.heal()
                    fault.healed_at = time.time()
                    say(f"{now_hms()}  healing: {fault.name}: {fault.heal_text}"
                        f"{f'; {extra}' if extra else ''} -> expect RESOLVED "
                        f"{fault.expect.alertname}")

    def summary(self, runtime: float, interrupted: bool = False) -> int:
        say()
        say(f"Summary (ran {runtime:.0f}s{', interrupted' if interrupted else ''}):")
        rows = [("fault", "expected alert", "injected", "fired at", "resolved at", "result")]
        for fault in self.faults:
            for exp in (fault.expect, *fault.side_effects):
                fired = resolved = "-"
                if exp.fired_at:
                    fired = f"{now_hms(exp.fired_at)} (+{exp.fired_at - fault.injected_at:.0f}s)"
                if exp.resolved_at:
                    resolved = (f"{now_hms(exp.resolved_at)} "
                                f"(+{exp.resolved_at - fault.healed_at:.0f}s after heal)")
                elif not exp.must_resolve:
                    resolved = f"({exp.note})"
                rows.append((fault.name, exp.name,
                             now_hms(fault.injected_at) if fault.injected_at else "-",
                             fired, resolved, "OK" if exp.ok else "MISSING"))
        outage = next((f for f in self.faults if f.name == "storage outage"), None)
        if outage is not None and self.health is not None:
            health = self.health
            critical = healthy = "-"
            if health.critical_at and outage.injected_at:
                critical = (f"{now_hms(health.critical_at)} "
                            f"(+{health.critical_at - outage.injected_at:.0f}s)")
            if health.healthy_at and outage.healed_at:
                healthy = (f"{now_hms(health.healthy_at)} "
                           f"(+{health.healthy_at - outage.healed_at:.0f}s after heal)")
            rows.append((outage.name, f"/health verdict of {health.source}: critical",
                         now_hms(outage.injected_at) if outage.injected_at else "-", critical,
                         healthy, "OK" if health.ok else "MISSING"))
        if not self.faults:
            rows.append(("(no fault injected)", "", "", "", "", "MISSING"))
        table(rows)
        if self.others:
            say("Other notifications (not expected by the schedule):")
            for note in self.others:
                say("  " + note.line())
        recorded = self.relay_summary()
        ok = bool(self.faults) and all(e.ok for e in self.expectations) and \
            self.health is not None and self.health.ok and recorded
        if not interrupted:
            say("RESULT: " + ("every expected alert fired and resolved, /health followed the"
                              " outage, and the relay recorded each with its MTTR" if ok
                              else "some expected alerts are MISSING"))
        return 0 if ok else 1

    def relay_summary(self) -> bool:
        """Each expected alert's occurrences in the relay's history, with the time from firing
        to resolved; whether every one is there (and resolved, where it must be)."""
        found = self.relay_history
        if found is None or not self.faults:
            return False
        say()
        say("MTTR from the relay's history (pipemon_relay.alerts; firing to resolved, as "
            "Prometheus timed them):")
        rows = [("fault", "alert", "occurrences", "fired at", "resolved at", "MTTR", "result")]
        ok = True
        shown = 0
        for fault in self.faults:
            for exp in (fault.expect, *fault.side_effects):
                mine = ([] if fault.injected_at is None else
                        mttr.matching(found, exp.alertname, exp.labels, fault.injected_at))
                shown += len(mine)
                last = mine[-1] if mine else None
                good = last is not None and (last.ends_at is not None or not exp.must_resolve)
                ok = ok and good
                rows.append((fault.name, exp.alertname, str(len(mine)),
                             now_hms(last.starts_at.timestamp()) if last else "-",
                             now_hms(last.ends_at.timestamp()) if last and last.ends_at else "-",
                             mttr.describe(last.seconds) if last else "-",
                             "OK" if good else "MISSING"))
        table(rows)
        if len(found) > shown:
            say(f"  and {len(found) - shown} other occurrences (GET {self.stack.relay.url}"
                "/api/alerts lists the active ones)")
        return ok


def table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        say("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env = os.environ.get("DEMO_SECONDS") or None
    parser.add_argument("--seconds", type=float, default=float(env) if env else None,
                        help="run at most this long once everything is up, check and exit "
                             "(default: $DEMO_SECONDS; unset: until Ctrl-C)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    demo = Demo(args.seconds)
    code = 1
    try:
        die_with_parent()
        code = demo.run()
        if code and demo.stack.prometheus is not None:
            say(demo.stack.logs())
    except (KeyboardInterrupt, Stop) as exc:
        name = "SIGINT" if isinstance(exc, KeyboardInterrupt) else str(exc)
        say(f"\n{now_hms()} {name}: stopping")
        if demo.faults:
            demo.read_relay(0)
            demo.summary(time.time() - demo.started, interrupted=True)
        code = 130 if isinstance(exc, KeyboardInterrupt) else 128 + exc.signum
    except Exception as exc:
        say(f"\n{now_hms()} demo failed: {type(exc).__name__}: {exc}")
        say(demo.stack.logs())
        code = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        say(f"{now_hms()} stopping every process of the demo and removing {demo.stack.root}")
        demo.stack.close()
        say(f"{now_hms()} stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
