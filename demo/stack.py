"""The demo's stack, on 127.0.0.1 with free ports, every piece in one temp dir:

  PostgreSQL   a throwaway cluster from the Debian binaries (testkit/postgres.py), database
               `pipemon_demo` with examples/schema.sql and examples/integrity_schema.sql
  S3           moto's server (testkit/s3.py), bucket `media`
  sinks        Slack / PagerDuty / heartbeat over HTTP and an SMTP relay (testkit/sinks.py)
  exporter     `pipemon serve` with the sources of examples/pipemon.yaml, examples/storage.yaml,
               examples/checks.yaml and examples/host.yaml, as they are but for the poll
               intervals (`POLL`)
  worker host  `WorkerHost`: the host source's FFmpeg and FFprobe (stand-ins on the exporter's
               PATH) and its scratch directory, for the demo to break
  Prometheus   Debian's, with rules/*.yaml unchanged, scraping and evaluating every `INTERVAL`,
               started with six hours of healthy history (see `healthy_history`)
  Alertmanager Debian's, with the configuration rendered from alertmanager/ (values.yaml plus
               the sinks' addresses, `AM_TIMING` and the relay's route)
  relay        `pipemon relay serve` (docs/relay.md), its history in `pipemon_demo`'s schema
               pipemon_relay (migrated by `pipemon relay migrate`), scraped by Prometheus

`Stack.start()` registers a clean-up for each piece as soon as it runs; `Stack.close()` stops
them in reverse order and removes the temp dir. The four processes run in a session of their
own (a Ctrl-C in the terminal reaches the demo only, which stops them in order) and get SIGTERM
if the demo itself dies (`setpriv --pdeathsig`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import yaml

from demo.simulator import ANALYSIS, STEMS, TRACKS_PER_SECOND, Pipeline, s3_client
from testkit import ROOT
from testkit.net import free_port, wait_until
from testkit.postgres import PgCluster
from testkit.processes import Exporter, Relay
from testkit.prometheus import Alertmanager, Prometheus, healthy_slo_history
from testkit.s3 import Moto
from testkit.sinks import HttpSink, SmtpSink, site_config

EXAMPLES = ROOT / "examples"
RULES = sorted((ROOT / "rules").glob("*.yaml"))
DBNAME = "pipemon_demo"
BUCKET = "media"
# The example configs poll every 15 s (queues, analysis) to 30 s and 1 m (storage, checks), and
# production Prometheus scrapes and evaluates every 15 s: the demo does all of it every 5 s so that
# each fault pages within about 90 s. The rules (`for:` durations, windows) are the shipped ones.
POLL = "5s"
CHECKS_POLL = "10s"  # the checks' own timeout is 10 s, and a poll must not outlast its interval
INTERVAL = "5s"
INVENTORY_INTERVAL = "30s"
HISTORY = 6 * 3600
# Alertmanager: the routes' group_wait stays as shipped (critical 10 s, warning 30 s); resolutions
# are announced after group_interval, shortened from 1-5 m to 15 s.
AM_TIMING = {"timing": {route: {"group_interval": "15s"}
                        for route in ("critical", "warning", "info")}}
# The relay hears of a firing within a second and of a resolution as soon as the people do.
RELAY_TIMING = {"group_wait": "1s", "group_interval": "15s"}
RELAY_TOKEN = "demo-relay-token"
SETPRIV = shutil.which("setpriv")


class OwnSession:
    """Run the child in a session of its own; stop its whole process group."""

    def _spawn(self, argv: list[str], env: dict | None = None) -> None:
        if SETPRIV:
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, env=env, start_new_session=True)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class DemoExporter(OwnSession, Exporter):
    pass


class DemoPrometheus(OwnSession, Prometheus):
    pass


class DemoAlertmanager(OwnSession, Alertmanager):
    pass


class DemoRelay(OwnSession, Relay):
    pass


def exporter_config() -> tuple[dict, list[dict]]:
    """(defaults, sources) of the example configs, with the demo's poll intervals. The `${...}`
    references stay: the exporter reads the DSN and the S3 endpoint from its environment."""
    main = yaml.safe_load((EXAMPLES / "pipemon.yaml").read_text())
    sources = list(main["sources"])
    for name in ("storage.yaml", "checks.yaml", "host.yaml"):
        sources += yaml.safe_load((EXAMPLES / name).read_text())["sources"]
    for source in sources:
        source["interval"] = POLL
        if source["kind"] == "storage" and source.get("inventory"):
            source["inventory"] = {**source["inventory"], "interval": INVENTORY_INTERVAL}
        if source["kind"] == "host":
            source["timeout"] = "4s"  # within the demo's poll interval (the example's: 10s)
        if source["kind"] == "checks":
            source["interval"] = CHECKS_POLL
            source["checks"] = [{**check, "interval": CHECKS_POLL} if "interval" in check
                                else check for check in source["checks"]]
    return {**main.get("defaults", {}), "interval": POLL}, sources


class WorkerHost:
    """The worker host the host source watches: stand-ins for `ffmpeg` and `ffprobe` (this
    machine has no FFmpeg) in a directory put first on the exporter's PATH, and a scratch
    directory. The demo removes FFmpeg and makes the scratch volume read-only."""

    TOOLS = {"ffmpeg": "ffmpeg version 6.1.1-demo Copyright (c) 2000-2023 the FFmpeg developers",
             "ffprobe": "ffprobe version 6.1.1-demo Copyright (c) 2007-2023 the FFmpeg developers"}

    def __init__(self, root: Path):
        self.bin = root / "worker-bin"
        self.scratch = root / "worker-scratch"
        self.bin.mkdir()
        self.scratch.mkdir()
        for tool, banner in self.TOOLS.items():
            script = self.bin / tool
            script.write_text(f"#!/bin/sh\necho '{banner}'\n")
            script.chmod(0o755)
        self._mounted = False

    def remove_ffmpeg(self) -> None:
        (self.bin / "ffmpeg").rename(self.bin / "ffmpeg.removed")

    def restore_ffmpeg(self) -> None:
        (self.bin / "ffmpeg.removed").rename(self.bin / "ffmpeg")

    def scratch_read_only(self) -> str:
        """Root writes through file modes, so as root a read-only tmpfs is mounted over the
        directory (the volume remounted read-only); otherwise its mode is cleared."""
        if os.geteuid() == 0:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                            str(self.scratch)], check=True, capture_output=True, timeout=30)
            self._mounted = True
            return "a read-only filesystem is mounted over it"
        self.scratch.chmod(0o555)
        return "its mode is set to r-x"

    def scratch_writable(self) -> None:
        if self._mounted:
            subprocess.run(["umount", str(self.scratch)], check=True, capture_output=True,
                           timeout=30)
            self._mounted = False
        self.scratch.chmod(0o755)


def healthy_history(now: float, step: int = 5) -> str:
    """Six hours of a healthy pipeline in the budget alerts' series, every `step` seconds (the
    evaluation interval: avg_over_time weighs samples, not time)."""
    return healthy_slo_history(now, HISTORY, step, BUCKET, (STEMS, ANALYSIS), TRACKS_PER_SECOND)


class Stack:
    def __init__(self, say=print):
        self.say = say
        self.root = Path(tempfile.mkdtemp(prefix="pipemon-demo-"))
        self._cleanups = contextlib.ExitStack()
        self._cleanups.callback(shutil.rmtree, self.root, ignore_errors=True)
        self.http: HttpSink | None = None
        self.smtp: SmtpSink | None = None
        self.pg: PgCluster | None = None
        self.dsn = ""
        self.moto: Moto | None = None
        self.pipeline: Pipeline | None = None
        self.alertmanager: DemoAlertmanager | None = None
        self.exporter: DemoExporter | None = None
        self.prometheus: DemoPrometheus | None = None
        self.relay: DemoRelay | None = None

    def _step(self, what: str) -> float:
        self.say(f"  {what}")
        return time.monotonic()

    def start(self) -> None:
        self._step("local Slack / PagerDuty / SMTP sinks")
        self.http = HttpSink().start()
        self._cleanups.callback(self.http.stop)
        self.smtp = SmtpSink().start()
        self._cleanups.callback(self.smtp.stop)

        self._step("PostgreSQL (throwaway cluster) with examples/schema.sql and "
                   "examples/integrity_schema.sql")
        self.pg = PgCluster(free_port())
        self._cleanups.callback(self.pg.destroy)
        self.pg.init().start()
        with psycopg.connect(self.pg.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")
        self.dsn = self.pg.dsn(DBNAME)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute((EXAMPLES / "schema.sql").read_text())
            conn.execute((EXAMPLES / "integrity_schema.sql").read_text())

        self._step(f"S3 endpoint (moto's server) with bucket {BUCKET!r}")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.moto = Moto()
        self._cleanups.callback(self.moto.stop)
        self.moto.start()
        s3 = s3_client(self.moto.url)
        try:
            s3.create_bucket(Bucket=BUCKET,
                             CreateBucketConfiguration={"LocationConstraint": "auto"})
        finally:
            s3.close()

        self._step("the pipeline simulator (uploads, stem separation, analysis)")
        self.pipeline = Pipeline(self.dsn, self.moto.url, BUCKET)
        self._cleanups.callback(self.pipeline.stop)
        self.pipeline.seed()
        self.pipeline.start()

        self._step("pipemon relay (alert history, MTTR) in the schema pipemon_relay")
        self.relay = DemoRelay(self.root / "relay", {"database": {"dsn": self.dsn},
                                                     "bearer_token": RELAY_TOKEN})
        self._cleanups.callback(self.relay.stop)
        self.relay.migrate()
        self.relay.start()

        self._step("Alertmanager with pipemon's routing, receivers pointed at the sinks and the "
                   "relay")
        relay_values = {"relay": {"url": f"{self.relay.url}/webhook", **RELAY_TIMING}}
        config = site_config(self.root / "alertmanager-config", self.http, self.smtp,
                             extra_values={**AM_TIMING, **relay_values},
                             relay_token=RELAY_TOKEN)
        self.alertmanager = DemoAlertmanager(self.root / "alertmanager", config)
        self.alertmanager.external_url = self.alertmanager.url
        self._cleanups.callback(self.alertmanager.stop)
        self.alertmanager.start()

        self._step("pipemon exporter with examples/pipemon.yaml + storage.yaml + checks.yaml"
                   " + host.yaml")
        self.worker = WorkerHost(self.root)
        self._cleanups.callback(self.worker.scratch_writable)  # unmounted before the dir goes
        os.environ.update({
            "PATH": f"{self.worker.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "PIPEMON_SCRATCH_DIR": str(self.worker.scratch),
            "PIPEMON_POSTGRES_DSN": self.dsn,
            "PIPEMON_S3_ENDPOINT_URL": self.moto.url,
            "PIPEMON_S3_BUCKET": BUCKET,
            "R2_ACCESS_KEY_ID": "demo",
            "R2_SECRET_ACCESS_KEY": "demo",
        })
        defaults, sources = exporter_config()
        self.exporter = DemoExporter(self.root / "exporter", sources, defaults=defaults)
        self._cleanups.callback(self.exporter.stop)
        self.pipeline.count_from_now()
        self.exporter.start()

        self._step("Prometheus with rules/*.yaml (and six hours of healthy history)")
        self.prometheus = DemoPrometheus(
            self.root / "prometheus", [self.exporter.target], RULES, interval=INTERVAL,
            alertmanagers=[f"127.0.0.1:{self.alertmanager.port}"],
            other_jobs={"pipemon-relay": {"targets": [self.relay.target]}})
        self.prometheus.backfill(healthy_history(time.time()))
        self._cleanups.callback(self.prometheus.stop)
        self.prometheus.start()

    def wait_healthy(self, timeout: float = 180) -> None:
        """Until Prometheus sees the healthy pipeline: every source up and evaluated, the
        failed-jobs counters present (a counter that appears mid-window shows no increase),
        and the backfilled history loaded."""
        prom = self.prometheus
        checks = [
            "min(source_kind:pipemon_source_up:max) == 1",
            "source_bucket:pipemon_storage_probe_success:max == 1",
            f'source_queue:pipemon_queue_stalled:bool{{queue="{STEMS}"}} == 0',
            'source_check:pipemon_check_value:max{check="playlist_entries_missing_track"} == 0',
            f'pipemon_queue_jobs_finished_total{{queue="{ANALYSIS}",outcome="failed"}}',
            f'source_queue:pipemon_queue_jobs_completed:rate5m{{queue="{ANALYSIS}"}} > 0',
            "count_over_time(source:pipemon_pipeline_available:bool[6h]) > 1000",
        ]
        wait_until(lambda: all(prom.query(expr) for expr in checks), timeout,
                   "Prometheus to see the healthy pipeline: " + "; ".join(checks), interval=1)

    def logs(self) -> str:
        """The tail of each process's log (for a failed run)."""
        out = []
        for proc in (self.exporter, self.prometheus, self.alertmanager, self.relay):
            if proc is not None:
                out.append(f"--- {proc.name} log (last lines):\n"
                           + "\n".join(proc.log().splitlines()[-25:]))
        return "\n".join(out)

    def close(self) -> None:
        self._cleanups.close()
