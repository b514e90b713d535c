"""Every query of every dashboard, run through a real Prometheus that scrapes a real exporter.

The exporter (`pipemon serve`) watches a pipeline that moves while the test runs: a job queue in
the local PostgreSQL (three queues: one healthy, one failing a third of its jobs, one stalled with
no worker; a stuck job; a raw state the mapping does not know), audio-analysis results, a bucket
on moto's S3 server (probe and inventory) and a bucket that does not exist (its probe fails), SQL
integrity checks with a known violation, and a worker host (with Debian's node_exporter, labelled
role="worker", for the machine's panels). Debian's Prometheus scrapes them every second with
pipemon's recording AND alert rules loaded, as shipped.

Each panel query (and each variable and annotation query) is sent to Prometheus's query API with
the dashboard variables set to the values an alert link carries, and again to All; it must be
valid and return at least one sample that is not NaN. Two kinds of query cannot have data in a
fresh Prometheus and are proven as follows, never skipped:

* `offset 1w` (week over week): Prometheus is started on a TSDB block backfilled (`promtool tsdb
  create-blocks-from openmetrics`) with the recorded series the comparison reads, as they were
  a week ago; the query itself is then run unchanged. The same query with the offset removed must
  return data from the live pipeline too, so the backfill cannot hide a wrong selector.
* `ALERTS{alertstate="firing"}`: the workload makes real alerts fire (a stuck job, a failure
  ratio above the threshold, an orphaned audio post, a failing storage probe), and the test waits
  for them before running those queries.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
import urllib.parse
from pathlib import Path

import psycopg
import pytest

from grafana.generate import build_all
from testkit import ROOT
from testkit.app import queue_source
from testkit.background import Ticker
from testkit.net import http_get, wait_until
from testkit.processes import Exporter, NodeExporter
from testkit.prometheus import Prometheus

pytestmark = [pytest.mark.postgres, pytest.mark.e2e, pytest.mark.s3]

INTEGRITY_SCHEMA = (ROOT / "examples" / "integrity_schema.sql").read_text()
RULES = [ROOT / "rules" / "pipemon-recording.yaml", ROOT / "rules" / "pipemon-alerts.yaml"]
BUCKET = "media"
FAKE_FFMPEG = ["python3", "-c", "print('ffmpeg version 6.1.1-test Copyright (c) the FFmpeg devs')"]


class Pipeline(Ticker):
    """Moves jobs, writes analysis results and uploads objects on a background thread."""

    WAITS = (0, 3, 8, 20, 45, 90)            # seconds a job has been ready when it starts
    RUNS = (2, 7, 25, 50, 140, 400, 12, 4)   # run times of the jobs that finish

    def __init__(self, dsn: str, s3=None, tick: float = 0.25):
        super().__init__("pipeline", tick)
        self.dsn = dsn
        self.s3 = s3

    def seed(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute(INTEGRITY_SCHEMA)
            db.execute("INSERT INTO tracks (title) SELECT 'track ' || g"
                       " FROM generate_series(1, 5) g")
            # 4 audio posts migrated, 1 without its track (a violation), 2 text posts
            db.execute("INSERT INTO posts (post_type, track_id) VALUES ('audio', 1),"
                       " ('audio', 2), ('audio', 3), ('audio', 4), ('audio', NULL),"
                       " ('text', NULL), ('text', NULL)")
            db.execute("INSERT INTO playlist_entries (playlist_id, track_id, position)"
                       " VALUES (1, 1, 1), (1, 2, 2)")
            # a backlog in the worked queues; a queue nobody works on (stalled)
            for queue, waiting in (("separate", 20), ("transcode", 5), ("thumbnails", 12)):
                db.execute("INSERT INTO jobs (queue, status, created_at, run_at)"
                           " SELECT %s, 'waiting', now() - interval '5 minutes',"
                           " now() - interval '5 minutes' FROM generate_series(1, %s)",
                           (queue, waiting))
            # a job stuck in running for two hours, one scheduled, one retrying
            db.execute("INSERT INTO jobs (queue, status, started_at) VALUES"
                       " ('transcode', 'running', now() - interval '2 hours')")
            db.execute("INSERT INTO jobs (queue, status, run_at) VALUES"
                       " ('separate', 'waiting', now() + interval '1 hour'),"
                       " ('separate', 'retrying', now())")
            # a raw state the source's mapping does not know
            db.execute("INSERT INTO jobs (queue, status) VALUES ('transcode', 'paused')")
        if self.s3 is not None:
            self.s3.put_object(Bucket=BUCKET, Key="uploads/a.wav", Body=b"x" * 4096)

    def session(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def step(self, db, i: int) -> None:
        wait = self.WAITS[i % len(self.WAITS)]
        run = self.RUNS[i % len(self.RUNS)]
        for queue in ("separate", "transcode"):
            # a new job, ready `wait` seconds ago
            db.execute("INSERT INTO jobs (queue, status, created_at, run_at, stage) VALUES"
                       " (%s, 'waiting', now() - make_interval(secs => %s),"
                       " now() - make_interval(secs => %s), %s)",
                       (queue, wait, wait, ("MERGING", "COMPRESSION")[i % 2]))
            # a worker takes the oldest waiting job (its wait is observed)
            db.execute("UPDATE jobs SET status = 'running', started_at = now() WHERE id ="
                       " (SELECT id FROM jobs WHERE queue = %s AND status = 'waiting'"
                       " AND run_at <= now() ORDER BY run_at, id LIMIT 1)", (queue,))
            # the jobs started on earlier ticks finish (not the stuck one)
            outcome = "failed" if queue == "separate" and i % 3 == 0 else "succeeded"
            if queue == "transcode" and i % 10 == 5:
                outcome = "cancelled"
            error = {0: "FFMPEG_FAILED", 3: "timeout after 31s"}.get(i % 6, "STORAGE_UPLOAD_FAILED")
            db.execute("UPDATE jobs SET status = %s, finished_at = now(),"
                       " error = CASE WHEN %s = 'failed' THEN %s END WHERE queue = %s"
                       " AND status = 'running' AND started_at < now() - interval '200 ms'"
                       " AND started_at > now() - interval '1 hour'",
                       (outcome, outcome, error, queue))
            # a longer job finishes: its run time spreads the run-time histogram
            db.execute("INSERT INTO jobs (queue, status, created_at, run_at, started_at,"
                       " finished_at) SELECT %s, %s, now() - make_interval(secs => %s),"
                       " now() - make_interval(secs => %s), now() - make_interval(secs => %s),"
                       " now()", (queue, outcome, run + 5, run + 5, run))
        ok = i % 5 != 0
        # levels of a mastered catalogue: peaks -9..-1 dBFS (2 in 9 above -3: clipping), loudness
        # around -14 LUFS
        db.execute("INSERT INTO audio_events_cache (track_id, timeline, processing_ms,"
                   " peak_dbfs, loudness_lufs) VALUES (%s, %s, %s, %s, %s)",
                   (i % 5 + 1, '{"beats": []}' if ok else None, 800 + 150 * (i % 20),
                    -1.0 - i % 9, -14.0 + 0.8 * (i % 5 - 2)))
        if self.s3 is not None and i % 4 == 0:
            self.s3.put_object(Bucket=BUCKET, Key=f"stems/{i:06d}.wav", Body=b"s" * (1024 + i))


def stack_sources(dsn: str, s3_url: str, scratch: Path) -> list[dict]:
    checks = [{"name": name, "interval": "1s", "sql": sql} for name, sql in (
        ("audio_posts_without_track",
         "SELECT count(*) AS value FROM posts WHERE post_type = 'audio' AND track_id IS NULL"),
        ("playlist_entries_missing_track",
         "SELECT count(*) AS value FROM playlist_entries e"
         " WHERE NOT EXISTS (SELECT 1 FROM tracks t WHERE t.id = e.track_id)"),
        ("migration_progress_percent",
         "SELECT coalesce(round(100.0 * count(*) FILTER (WHERE track_id IS NOT NULL)"
         " / nullif(count(*), 0), 2), 100) AS value FROM posts WHERE post_type = 'audio'"),
        ("db_connection_usage_ratio",
         "SELECT count(*)::float8 / current_setting('max_connections')::float8 AS value"
         " FROM pg_stat_activity WHERE backend_type = 'client backend'"),
        ("posts_by_type", "SELECT post_type, count(*) AS value FROM posts GROUP BY post_type"),
    )]
    return [
        queue_source(dsn, interval="1s", timeout="900ms", unmapped_check_interval="1s",
                     failure_reason="error", stage="stage", exact_quantiles={"window": "1h"}),
        {"name": "analysis", "kind": "analysis", "dsn": dsn, "interval": "1s",
         "timeout": "900ms", "table": "audio_events_cache",
         "columns": {"id": "id", "created_at": "created_at"},
         "success": "timeline IS NOT NULL", "duration_seconds": "processing_ms / 1000.0",
         "peak_dbfs": "peak_dbfs", "loudness_lufs": "loudness_lufs"},
        {"name": "r2", "kind": "storage", "endpoint_url": s3_url, "bucket": BUCKET,
         "access_key_id": "test-key", "secret_access_key": "test-secret",
         "interval": "1s", "timeout": "900ms",
         "inventory": {"prefixes": ["stems/", "uploads/"], "interval": "1s"}},
        # a bucket that does not exist: every probe fails (not_found), its alert fires
        {"name": "r2-broken", "kind": "storage", "endpoint_url": s3_url, "bucket": "missing",
         "access_key_id": "test-key", "secret_access_key": "test-secret",
         "interval": "1s", "timeout": "900ms"},
        {"name": "integrity", "kind": "checks", "dsn": dsn, "interval": "1s",
         "timeout": "900ms", "checks": checks},
        {"name": "worker", "kind": "host", "interval": "1s", "timeout": "900ms",
         "tools": [{"name": "ffmpeg", "command": FAKE_FFMPEG, "role": "transcoder",
                    "version_regex": r"ffmpeg version (\S+)"}],
         "scratch": [{"path": str(scratch)}]},
    ]


# --- the queries of the dashboards ------------------------------------------------------------

DASHBOARDS = ROOT / "grafana" / "dashboards"
# Grafana's interval macros, as Grafana would set them for a short time range over a Prometheus
# that scrapes every second (the test's), and `$__range` covering all the data the test has.
MACROS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m", "${__range}": "5m"}
# Variable values per dashboard: those an alert's dashboard_url carries, and "All".
ALL = ".*"
VALUES = {
    # the overview shows every kind of source: its source variable stays All
    "pipemon-overview": {"source": ALL, "queue": "separate", "instance": "127.0.0.1:.*"},
    "pipemon-queue": {"source": "stems", "queue": "separate"},
    "pipemon-storage": {"source": "r2", "bucket": BUCKET},
    "pipemon-integrity": {"source": "integrity", "check": "audio_posts_without_track"},
    "pipemon-self": {"source": "stems"},
}
# The exporter's `defaults.labels`: the shipped dashboards ignore them, the ones generated with
# `--labels env,team` select by them.
CONSTANT_LABELS = {"env": "e2e", "team": "media"}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<series>.+),\s*)?(?P<label>\w+)\)$")


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included (rows themselves excluded)."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel target, variable query and annotation of a dashboard."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        expr = variable["query"]["query"]
        match = LABEL_VALUES.match(expr)
        assert match, f"variable {variable['name']}: not a label_values() query: {expr}"
        # label_values(series, label) is Grafana's; the series API answers it, and a query
        # that groups the series by the label returns exactly the values Grafana would list.
        expr = f"group by ({match['label']}) ({match['series'] or 'up'})"
        found.append((f"variable {variable['name']}", expr))
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("expr"):
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def has_data(result: list[dict]) -> bool:
    """At least one sample that is a number (+Inf counts: a drain time with nothing finishing)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def needs_firing_alerts(expr: str) -> bool:
    return 'alertstate="firing"' in expr and "or vector(0)" not in expr


def strip_offset(expr: str) -> str:
    return re.sub(r"\s+offset\s+1w\b", "", expr)


# --- last week, backfilled --------------------------------------------------------------------

OFFSET_SELECTOR = re.compile(r"(?P<name>[a-zA-Z_:][\w:]*)\{(?P<matchers>[^}]*)\}\s+offset\s+1w")
# Label values of the recorded series a week ago, by label (the level of a rule's name,
# `source_queue:...`, says which labels its series have).
WEEK_AGO = {"source": ["stems"], "queue": ["separate", "transcode"]}


def last_week(exprs: list[str], now: float) -> str:
    """OpenMetrics text with the series that `offset 1w` selectors read, sampled every 15s from
    65 minutes before to 10 minutes after the same time a week ago. They are recorded series:
    replicas folded (no `instance`), the target's `job`, the labels of their level, and the
    exporter's constant labels (it had them last week too: new labels make new series)."""
    lines = []
    for name in sorted({m["name"] for e in exprs for m in OFFSET_SELECTOR.finditer(e)}):
        level = name.split(":")[0].split("_")
        assert set(level) <= set(WEEK_AGO), f"no week-ago values for the labels of {name}"
        fixed = dict(re.findall(r'(\w+)="([^"]*)"', next(
            m["matchers"] for e in exprs for m in OFFSET_SELECTOR.finditer(e)
            if m["name"] == name)))
        lines.append(f"# TYPE {name} gauge")
        for values in itertools.product(*(WEEK_AGO[label] for label in level)):
            labels = {"job": "pipemon", **CONSTANT_LABELS, **fixed,
                      **dict(zip(level, values, strict=True))}
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            start = int(now) - 7 * 86400 - 65 * 60
            lines += [f"{name}{{{text}}} 10 {t}" for t in range(start, start + 75 * 60, 15)]
    return "\n".join([*lines, "# EOF", ""])


# --- the test ---------------------------------------------------------------------------------

@pytest.fixture
def moto():
    from testkit.s3 import Moto

    server = Moto()
    server.start()
    werkzeug = logging.getLogger("werkzeug")  # moto's server logs every request
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    try:
        yield server
    finally:
        server.reset()
        server.stop()
        werkzeug.setLevel(level)


def test_every_dashboard_query_returns_data(pg_dsn, services, moto, tmp_path):
    from testkit.s3 import s3_client

    s3 = s3_client(moto.url)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "auto"})
    # the relay's Incidents dashboard is proven with the relay (test_dashboard_incidents.py)
    # (and the platform's by test_dashboard_queries_platform.py)
    dashboards = [json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))
                  if p.stem in VALUES]
    assert len(dashboards) == 5

    # every query twice: with the values an alert link carries, and with All
    checks = []
    for dashboard in dashboards:
        uid = dashboard["uid"]
        for values in (VALUES[uid], dict.fromkeys(VALUES[uid], ALL)):
            for where, expr in queries(dashboard):
                if values is not VALUES[uid] or where.startswith("panel"):
                    checks.append((f"{uid} {where} {values}", substitute(expr, values)))
    # and the dashboards generated for the sources' constant labels, set to the exporter's
    # (the labels at the exporter's values both times)
    for uid, dashboard in ((m["uid"], m) for m in build_all(list(CONSTANT_LABELS)).values()
                           if m["uid"] in VALUES):
        link = {**VALUES[uid], **CONSTANT_LABELS}
        for values in (link, {**dict.fromkeys(VALUES[uid], ALL), **CONSTANT_LABELS}):
            checks += [(f"{uid} with labels {where} {values}", substitute(expr, values))
                       for where, expr in queries(dashboard)
                       if values is not link or where.startswith("panel")]
    offset_exprs = [e for _, e in checks if OFFSET_SELECTOR.search(e)]
    assert offset_exprs, "the queue dashboard compares with last week"
    # the same queries without their offset: live data must show the selectors are right
    checks += [(f"{where} without offset 1w", strip_offset(e))
               for where, e in checks if OFFSET_SELECTOR.search(e)]

    pipeline = Pipeline(pg_dsn, s3)
    pipeline.seed()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    sources = stack_sources(pg_dsn, moto.url, scratch)
    exporter = services(Exporter(tmp_path / "exporter", sources,
                                 defaults={"labels": CONSTANT_LABELS}))
    node = services(NodeExporter(tmp_path / "node"))  # the worker panels read the machine too
    prometheus = Prometheus(tmp_path / "prometheus", [exporter.target], RULES, other_jobs={
        "node": {"targets": [node.target], "labels": {"role": "worker"}}})
    prometheus.backfill(last_week(offset_exprs, time.time()))
    services(prometheus)
    pipeline.start()
    try:
        wait_until(prometheus.targets_up, 30, "Prometheus to scrape the exporter")
        # Alerts need their condition to hold (a `for:`, or a window that fills): their queries
        # are proven last.
        pending = {where: expr for where, expr in checks if not needs_firing_alerts(expr)}
        firing = {where: expr for where, expr in checks if needs_firing_alerts(expr)}
        assert firing, "the overview lists firing alerts"
        for group, deadline in ((pending, 60), (firing, 100)):
            prove(prometheus, group, deadline)
    finally:
        pipeline.stop()
        s3.close()
    assert pipeline.error is None, f"the workload failed: {pipeline.error!r}"
    # The workload moved while the queries were proven (a tick is 0.25 s).
    assert pipeline.ticks > 20, f"the pipeline moved for {pipeline.ticks} ticks only"


def prove(prometheus: Prometheus, group: dict[str, str], timeout: float) -> None:
    """Run the queries of `group` until each has returned data once. A query Prometheus refuses
    fails at once with its error; after `timeout`, the list of those without data fails."""
    invalid: dict[str, str] = {}

    def all_proven():
        for where, expr in list(group.items()):
            status, body = http_get(f"{prometheus.url}/api/v1/query?"
                                    + urllib.parse.urlencode({"query": expr}))
            payload = json.loads(body)
            if status == 400 or payload.get("errorType") in ("bad_data", "execution"):
                invalid[where] = f"{expr}\n    -> {payload.get('error')}"
            elif payload.get("status") == "success" and has_data(payload["data"]["result"]):
                del group[where]
        return invalid or not group

    try:
        wait_until(all_proven, timeout, "every query to return data", interval=1)
    except AssertionError:
        raise AssertionError("queries without data:\n" + "\n".join(
            f"  {where}:\n    {expr}" for where, expr in group.items())) from None
    assert not invalid, "invalid queries:\n" + "\n".join(
        f"  {where}:\n    {error}" for where, error in invalid.items())
