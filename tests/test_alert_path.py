"""The whole alert path, end to end: a fault in the pipeline -> the pipemon exporter -> Prometheus
with pipemon's rules -> Alertmanager with pipemon's configuration -> Slack, PagerDuty and email
(local sinks), and back to "resolved" when the fault heals.

Everything runs as in production, on loopback with free ports: the local PostgreSQL, moto's S3
server, `pipemon serve` with the example intervals (queue 15 s, storage 30 s), Debian's
`prometheus` scraping and evaluating every 15 s with the rule files of `rules/` unchanged, and
Debian's `prometheus-alertmanager` with the configuration rendered from `alertmanager/` (only
the receivers' addresses and secret files point at the sinks). So the times from fault to page
the test measures are the real ones (recorded in docs/alerts.md).

HA at the same time: two Prometheus replicas evaluate the same rules and send to both of two
Alertmanagers that gossip with each other; every notification must arrive exactly once.

Prometheus starts with six hours of healthy history (backfilled: the SLI series the budget
alerts average), as a Prometheus in service has; without it, the first minutes of any fault are
a large share of the budget windows and the budget alerts would page along with the symptoms.

Three faults are injected side by side, each healed as soon as it has paged:
  queue stall         the worker of queue "separate" finishes its job and none takes the waiting
                      jobs; healed by a worker that takes them and completes them
  failure burst       30 jobs of queue "mix" fail at once (the warning is inhibited by the
                      critical); healed by 1000 jobs that succeed
  S3 endpoint stopped the bucket's endpoint refuses connections; healed by starting it again
The S3 outage also pages PipemonStorageAvailabilityBudgetBurn about 3 minutes after it starts:
by the 99.9% storage SLO, one minute of outage burns 14.4x the hourly budget (docs/alerts.md).
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict

import pytest

from testkit import ROOT
from testkit.app import queue_source
from testkit.net import stays, wait_until
from testkit.processes import Exporter
from testkit.prometheus import Alertmanager, Prometheus, healthy_slo_history
from testkit.s3 import Moto, s3_client
from testkit.sinks import HEARTBEAT_TOKEN, notifications, site_config

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.e2e, pytest.mark.alertmanager]

RULES = sorted((ROOT / "rules").glob("*.yaml"))
INTERVAL = "15s"  # scrape and rule evaluation, as in production
HISTORY = 6 * 3600  # seconds of healthy history before the test
BUCKET = "media"
PEER_TIMEOUT = 15  # Alertmanager's --cluster.peer-timeout: how late a duplicate would come

CRITICAL = ("slack/critical", "pagerduty/pd-key-level1",
            "email/oncall@example.com,devops@example.com")
FAULTS = {
    "queue stall": "CRITICAL PipemonQueueStalled - queue=separate source=stems",
    "failure burst": "CRITICAL PipemonQueueFailureRatioHigh - queue=mix source=stems",
    "S3 endpoint stopped": "CRITICAL PipemonStorageProbeFailing - bucket=media source=r2",
}
BUDGET_BURN = "CRITICAL PipemonStorageAvailabilityBudgetBurn - bucket=media source=r2"


def healthy_history(now: float) -> str:
    return healthy_slo_history(now, HISTORY, 15, BUCKET, ("mix", "separate"), 0.2)


@pytest.fixture
def s3_endpoint():
    """moto's S3 server with the bucket; the test stops and starts it (it keeps its port)."""
    moto = Moto()
    moto.start()
    s3 = s3_client(moto.url)
    try:
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "auto"})
        yield moto
    finally:
        s3.close()
        if moto._server is None:  # left stopped by a failure
            moto.start()
        moto.reset()
        moto.stop()


@pytest.mark.timeout(480)
def test_faults_page_once_and_resolve(tmp_path, pg_dsn, db, sinks, s3_endpoint, services):
    http, smtp = sinks
    moto = s3_endpoint
    # The pipeline at work: each queue has a busy worker, three jobs wait in "separate".
    db.execute("INSERT INTO jobs (queue, status, started_at) VALUES"
               " ('separate', 'running', now()), ('mix', 'running', now())")
    db.execute("INSERT INTO jobs (queue, status) SELECT 'separate', 'waiting'"
               " FROM generate_series(1, 3)")
    storage = {"name": "r2", "kind": "storage", "endpoint_url": moto.url, "bucket": BUCKET,
               "access_key_id": "test-key", "secret_access_key": "test-secret",
               "interval": "30s", "timeout": "5s"}
    exporter = services(Exporter(tmp_path / "exporter", [queue_source(pg_dsn), storage]))

    config = site_config(tmp_path / "am-config", http, smtp)
    ams = [Alertmanager(tmp_path / f"am{i}", config, cluster=True, log_level="info")
           for i in (1, 2)]
    ams[0].peers, ams[1].peers = [ams[1].cluster_address], [ams[0].cluster_address]
    for am in ams:
        am.external_url = am.url
        services(am)
    wait_until(lambda: all(am.cluster_ready(members=2) for am in ams), 90,
               "the two Alertmanagers to gossip and settle")

    proms = []
    for i in (1, 2):
        prom = Prometheus(tmp_path / f"prometheus{i}", [exporter.target], RULES,
                          interval=INTERVAL,
                          alertmanagers=[f"127.0.0.1:{am.port}" for am in ams])
        prom.backfill(healthy_history(time.time()))
        proms.append(services(prom))

    def healthy(prom):
        return (prom.query('source_queue:pipemon_queue_stalled:bool{queue="separate"} == 0')
                and prom.query('source_bucket:pipemon_storage_probe_success:max == 1')
                and prom.query('pipemon_queue_jobs_finished_total{queue="mix",outcome="failed"}')
                and prom.query("count_over_time(source:pipemon_pipeline_available:bool[6h])"
                               " > 1000"))

    def diagnose(exc: AssertionError, t0: float) -> AssertionError:
        firing = {name: [a["labels"] for a in alerts]
                  for name, alerts in proms[0].firing().items()}
        logs = "".join(f"\n--- {am.name} {am.url} log:\n{am.log()[-3000:]}" for am in ams)
        return AssertionError(
            f"{exc}\nhealed: {healed}\nnotifications (s after the faults):\n"
            + "\n".join(f"  {at - t0:6.1f} {line}" for at, line in notifications(http, smtp))
            + f"\nheartbeats: {len(http.requests('/heartbeat'))}\nfiring in Prometheus: "
            f"{firing}\nin Alertmanager: {[a['labels'] for a in ams[0].alerts()]}{logs}")

    healed: dict[str, float] = {}
    try:
        wait_until(lambda: all(healthy(p) for p in proms), 60,
                   "both Prometheus replicas to evaluate the healthy pipeline and its history")
        # (The first heartbeat is not waited for: Prometheus drops the alerts of an evaluation
        # that runs before it has discovered its Alertmanagers, up to 5 s after its start, and
        # sends them again a minute later: --rules.alert.resend-delay.)
    except AssertionError as exc:
        raise diagnose(exc, time.time()) from None
    assert notifications(http, smtp) == [], "something paged before any fault"

    # --- faults, side by side ---------------------------------------------------------------
    t0 = time.time()
    db.execute("UPDATE jobs SET status = 'succeeded', finished_at = now()"
               " WHERE queue = 'separate' AND status = 'running'")
    db.execute("INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)"
               " SELECT 'mix', 'failed', now() - interval '20 s', now() - interval '20 s',"
               " now() - interval '10 s', now() FROM generate_series(1, 30)")
    moto.stop()

    def heal_stall():
        # A queue is stalled until jobs complete again: a worker that only takes a job is not
        # enough (hung workers take jobs too).
        db.execute("UPDATE jobs SET status = 'succeeded', started_at = now(), finished_at = now()"
                   " WHERE queue = 'separate' AND status = 'waiting'")

    def heal_burst():
        db.execute("INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)"
                   " SELECT 'mix', 'succeeded', now() - interval '10 s', now() - interval '10 s',"
                   " now() - interval '5 s', now() FROM generate_series(1, 1000)")

    heals = {"queue stall": heal_stall, "failure burst": heal_burst,
             "S3 endpoint stopped": moto.start}

    def seen(title: str) -> dict[str, float]:
        """Receiver -> arrival time of the first notification with this title."""
        first: dict[str, float] = {}
        for at, line in notifications(http, smtp):
            receiver, _, got = line.partition(": ")
            if got == title:
                first.setdefault(receiver, at)
        return first

    def heal_what_paged():
        for fault, title in FAULTS.items():
            if fault not in healed and set(seen(f"[FIRING] {title}")) >= set(CRITICAL):
                heals[fault]()
                healed[fault] = time.time()
        return len(healed) == len(FAULTS)

    def resolved_and_budget_paged():
        titles = [f"[RESOLVED] {t}" for t in FAULTS.values()] + [f"[FIRING] {BUDGET_BURN}"]
        return all(set(seen(t)) >= set(CRITICAL) for t in titles)

    try:
        wait_until(heal_what_paged, 200, "a page on every critical receiver for every fault",
                   interval=0.2)
        wait_until(resolved_and_budget_paged, 200,
                   "the resolutions and the storage budget page", interval=0.2)
        # A duplicate from the second Alertmanager would come PEER_TIMEOUT after the first.
        count = len(notifications(http, smtp))
        stays(lambda: len(notifications(http, smtp)) == count, PEER_TIMEOUT + 5,
              "no further notification")
    except AssertionError as exc:
        raise diagnose(exc, t0) from None

    # --- exactly the expected notifications, each once (HA: two of everything upstream) -----
    expected = [f"{receiver}: [{status}] {title}" for title in FAULTS.values()
                for status in ("FIRING", "RESOLVED") for receiver in CRITICAL]
    expected += [f"{receiver}: [FIRING] {BUDGET_BURN}" for receiver in CRITICAL]
    assert sorted(line for _, line in notifications(http, smtp)) == sorted(expected)

    # PagerDuty resolves the incident it opened; Slack and email say resolved.
    events = defaultdict(list)
    for request in http.requests("/pagerduty"):
        events[request.body["dedup_key"]].append(request.body["event_action"])
    assert sorted(events.values()) == sorted([["trigger", "resolve"]] * 3 + [["trigger"]])
    for request in http.requests("/slack/critical"):
        attachment = request.body["attachments"][0]
        if attachment["title"].startswith("[RESOLVED]"):
            assert attachment["color"] == "good" and "*RESOLVED*" in attachment["text"]
    for mail in smtp.mails():
        if mail.subject.startswith("[RESOLVED]"):
            assert "Resolved:" in mail.body("plain")

    # The heartbeat: every minute, once (not once per Alertmanager), with its token.
    beats = [r for r in http.requests("/heartbeat") if r.body["status"] == "firing"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(beats)]
    assert len(beats) >= 3 and all(55 <= gap <= 65 for gap in gaps), gaps
    assert {b.authorization for b in beats} == {f"Bearer {HEARTBEAT_TOKEN}"}

    # --- the measured times (docs/alerts.md, "Measured time from fault to page") --------------
    report = ["fault -> page (first receiver / all critical receivers); heal -> resolved:"]
    for fault, title in FAULTS.items():
        paged = seen(f"[FIRING] {title}").values()
        resolved = seen(f"[RESOLVED] {title}").values()
        report.append(f"  {fault:20} {min(paged) - t0:5.1f}s / {max(paged) - t0:5.1f}s;"
                      f" resolved {max(resolved) - healed[fault]:5.1f}s after the heal")
    budget = seen(f"[FIRING] {BUDGET_BURN}").values()
    report.append(f"  {'storage budget burn':20} {min(budget) - t0:5.1f}s after the outage began")
    report.append(f"  heartbeats every {', '.join(f'{g:.1f}' for g in gaps)}s")
    print("\n".join(report))
    for title in FAULTS.values():
        assert max(seen(f"[FIRING] {title}").values()) - t0 < 150, report
