"""Benchmark: pipemon side by side with two generic SQL exporters (issue 10).

Same throwaway PostgreSQL cluster (with pg_stat_statements), same data, same machine, one run:
  * pipemon (`pipemon serve`, a queue source on `jobs` and an analysis source on
    `audio_events_cache`, 15 s polls);
  * query-exporter 5.0 (PyPI, own venv `bench/.venv-peers`) with the queries a user writes for the
    same metrics (bench/peers/queries.yaml: the product documents' "last hour" counts, averages
    and percentiles, active jobs per state, oldest waiting, stuck), on a 15 s schedule, and the
    same config without `interval` (query-exporter then runs the queries on every scrape);
  * Debian's prometheus-sql-exporter (justwatchcom/sql_exporter) with the same queries, 15 s.

Data: N finished jobs over 30 days (examples/schema.sql, lognormal run times, 2 % failed),
10,000 active jobs, N/10 analysis rows, indexes built after loading; a writer keeps finishing
jobs (and writing analysis rows) at the history's rate, so "the last hour" stays the same size.
Each exporter connects as its own role, so pg_stat_statements tells their statements apart.

Per exporter, one after the other: database time per collection cycle (pg_stat_statements,
snapshot at the midpoint between cycles), its wall time, CPU seconds per hour of polling
(/proc/<pid>/stat, with one Prometheus-like scrape per interval), /metrics latency for 1 scraper,
10 back-to-back scrapers and 10 scrapers once a second each (Prometheus's Accept headers and
gzip), peak RSS (VmHWM), and accuracy: pipemon's run-time percentiles (histogram_quantile over
its buckets, as Prometheus computes it) against percentile_cont over exactly the jobs it
counted; the peers' "last hour" values against the same SQL run when they are scraped.
Then the growth: the same at 100k and 1M rows, and at 1 and 120 queues (~100 and ~10,000
pipemon series).

    python bench/bench_peers.py                    # full run: 10M rows + growth, ~40 minutes
    python bench/bench_peers.py --quick            # smoke run, 100k rows, < 2 minutes
    python bench/bench_peers.py --write-configs    # refresh bench/peers/*.y*ml from queries.yaml

Prints markdown tables; writes JSON and CSV to bench/results/ (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import http.client
import itertools
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import psycopg
import yaml
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
from soak import free_port  # noqa: E402

from tests.pgcluster import PgCluster  # noqa: E402

SCHEMA = (ROOT / "examples" / "schema.sql").read_text()
QUERIES = yaml.safe_load((PEERS / "queries.yaml").read_text())["queries"]
PIPEMON = ROOT / ".venv" / "bin" / "pipemon"
PEER_VENV = BENCH / ".venv-peers"
QUERY_EXPORTER_PIN = "query-exporter==5.0.2"
PSYCOPG_PIN = "psycopg[binary]>=3.1,<4"
SQL_EXPORTER = Path("/usr/bin/prometheus-sql-exporter")
EXAMPLE_DSN = "postgresql://{role}@127.0.0.1:5432/pipeline"  # in the committed configs only

HISTORY = timedelta(days=30)
EXPLAINED: dict[str, dict] = {}  # dataset -> EXPLAIN ANALYZE of the active-jobs queries
ACTIVE_STATES = ("scheduled", "waiting", "running", "retrying")
FINAL_STATES = ("succeeded", "failed", "cancelled")
UNMAPPED_CHECK_INTERVAL = 300.0  # pipemon's default unmapped_check_interval (5m)
# What Prometheus 2.42 (Debian 12) sends with every scrape.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
}
PLAIN_HEADERS = {"Accept": "text/plain"}

# Lognormal run and wait times (seconds); a standard normal from two uniforms (Box-Muller).
NORMAL = "sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())"
RUN_SECONDS = f"exp(ln(60) + 0.9 * {NORMAL})"  # median 1 min, p99 about 8 min
WAIT_SECONDS = f"exp(ln(5) + {NORMAL})"
PROCESSING_MS = f"exp(ln(2000) + 0.7 * {NORMAL})"
STATUS = ("CASE WHEN r < 0.02 THEN 'failed' WHEN r < 0.022 THEN 'cancelled'"
          " ELSE 'succeeded' END")


def queue_name(expr: str) -> str:
    return f"'q' || lpad(({expr})::text, 3, '0')"


# --- the cluster and the data ------------------------------------------------------------------

class BenchCluster(PgCluster):
    """tests/pgcluster.py's throwaway cluster, with pg_stat_statements and room for 10M rows."""

    def start(self) -> None:
        options = " ".join([
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
            "-c max_connections=50 -c shared_buffers=256MB -c max_wal_size=4GB",
            "-c fsync=off -c full_page_writes=off",  # loading speed; the exporters only read
            "-c shared_preload_libraries=pg_stat_statements",
            "-c pg_stat_statements.track_planning=on -c pg_stat_statements.max=5000",
        ])
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")


@dataclass(frozen=True)
class Dataset:
    rows: int
    queues: int
    active: int = 10_000

    @property
    def analysis_rows(self) -> int:
        return max(1, self.rows // 10)

    @property
    def name(self) -> str:
        return f"bench_{self.rows}_q{self.queues}"

    @property
    def job_rate(self) -> float:
        """Finished jobs per second of the history, which the writer keeps up."""
        return self.rows / HISTORY.total_seconds()

    @property
    def analysis_rate(self) -> float:
        return self.analysis_rows / HISTORY.total_seconds()

    def label(self) -> str:
        return f"{human(self.rows)} rows, {self.queues} queues"


def split_schema() -> tuple[list[str], list[str]]:
    """examples/schema.sql as (tables, indexes): the secondary indexes are built after loading."""
    text = "\n".join(line.partition("--")[0] for line in SCHEMA.splitlines())
    statements = [s.strip() for s in text.split(";") if s.strip()]
    indexes = [s for s in statements if "CREATE INDEX" in s]
    return [s for s in statements if s not in indexes], indexes


def build(admin: str, ds: Dataset, roles: list[str]) -> str:
    """Create and fill the dataset's database; return its DSN (as the superuser)."""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{ds.name}"')
        conn.execute(f'CREATE DATABASE "{ds.name}"')
    dsn = make_conninfo(admin, dbname=ds.name)
    tables, indexes = split_schema()
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in tables:
            conn.execute(statement)
        conn.execute("SELECT setseed(0.42)")
        params = {"rows": ds.rows, "queues": ds.queues, "active": ds.active,
                  "analysis": ds.analysis_rows, "history": HISTORY}
        conn.execute(f"""
            INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)
            SELECT {queue_name("mod(i, %(queues)s)")}, {STATUS},
                   t - run - wait, t - run - wait, t - run, t
            FROM (SELECT i, now() - (%(rows)s - i) * (%(history)s / %(rows)s) AS t,
                         make_interval(secs => {RUN_SECONDS}) AS run,
                         make_interval(secs => {WAIT_SECONDS}) AS wait, random() AS r
                  FROM generate_series(1, %(rows)s) AS i) AS s""", params)
        # Active jobs: a quarter in each state; a tenth of the running ones stuck (45 min).
        conn.execute(f"""
            INSERT INTO jobs (queue, status, created_at, run_at, started_at)
            SELECT {queue_name("mod(i, %(queues)s)")},
                   (ARRAY['waiting', 'running', 'retrying', 'scheduled'])[1 + mod(i, 4)],
                   now() - mod(i, 600) * interval '1 second',
                   CASE WHEN mod(i, 4) = 3 THEN now() + mod(i, 3600) * interval '1 second'
                        ELSE now() - mod(i, 600) * interval '1 second' END,
                   CASE WHEN mod(i, 40) = 1 THEN now() - interval '45 minutes'
                        WHEN mod(i, 4) = 1 THEN now() - interval '5 minutes' END
            FROM generate_series(1, %(active)s) AS i""", params)
        conn.execute(f"""
            INSERT INTO audio_events_cache (track_id, created_at, timeline, processing_ms)
            SELECT i, now() - (%(analysis)s - i) * (%(history)s / %(analysis)s),
                   CASE WHEN random() < 0.97 THEN '[]'::jsonb END, ({PROCESSING_MS})::int
            FROM generate_series(1, %(analysis)s) AS i""", params)
        loaded = time.perf_counter()
        for statement in indexes:
            conn.execute(statement)
        conn.execute("VACUUM ANALYZE")
        for role in roles:
            conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))"
                            ).fetchone()[0]
    print(f"  {ds.name}: {ds.rows:,} finished + {ds.active:,} active jobs in {ds.queues} queues,"
          f" {ds.analysis_rows:,} analysis rows, {size}; loaded in {loaded - started:.0f} s,"
          f" indexed and vacuumed in {time.perf_counter() - loaded:.0f} s", flush=True)
    return dsn


class Writer(threading.Thread):
    """Finishes jobs (and writes analysis rows) at the history's rate, stamped evenly in time.

    Started once per dataset, it first fills the gap since the history ended (the build time).
    `pause()` returns once no insert is in flight; `resume()` skips the paused time, so every row
    written after it has a finish time after the resume.
    """

    def __init__(self, dsn: str, ds: Dataset, rate: float | None):
        super().__init__(daemon=True, name="writer")
        self.dsn = dsn
        self.ds = ds
        self.job_rate = rate if rate is not None else ds.job_rate
        self.analysis_rate = (rate / 10) if rate is not None else ds.analysis_rate
        self.stop = threading.Event()
        self._paused = False
        self._skip = False
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused, self._skip = False, True

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            last_job = conn.execute("SELECT max(finished_at) FROM jobs").fetchone()[0]
            last_analysis = conn.execute("SELECT max(created_at) FROM audio_events_cache"
                                         ).fetchone()[0]
            while not self.stop.is_set():
                with self._lock:
                    if not self._paused:
                        now = conn.execute("SELECT clock_timestamp()").fetchone()[0]
                        if self._skip:
                            last_job = last_analysis = now
                            self._skip = False
                        last_job = self._jobs(conn, last_job, now)
                        last_analysis = self._analysis(conn, last_analysis, now)
                self.stop.wait(1)

    def _jobs(self, conn, last, now):
        n = int((now - last).total_seconds() * self.job_rate)
        if n > 0:
            step = timedelta(seconds=1 / self.job_rate)
            conn.execute(f"""
                INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)
                SELECT {queue_name("floor(random() * %(queues)s)::int")}, {STATUS},
                       t - run - wait, t - run - wait, t - run, t
                FROM (SELECT %(last)s::timestamptz + k * %(step)s::interval AS t,
                             make_interval(secs => {RUN_SECONDS}) AS run,
                             make_interval(secs => {WAIT_SECONDS}) AS wait, random() AS r
                      FROM generate_series(1, %(n)s) AS k) AS s""",
                         {"queues": self.ds.queues, "last": last, "step": step, "n": n})
            last += n * step
        return last

    def _analysis(self, conn, last, now):
        n = int((now - last).total_seconds() * self.analysis_rate)
        if n > 0:
            step = timedelta(seconds=1 / self.analysis_rate)
            conn.execute(f"""
                INSERT INTO audio_events_cache (track_id, created_at, timeline, processing_ms)
                SELECT k, %(last)s::timestamptz + k * %(step)s::interval,
                       CASE WHEN random() < 0.97 THEN '[]'::jsonb END, ({PROCESSING_MS})::int
                FROM generate_series(1, %(n)s) AS k""", {"last": last, "step": step, "n": n})
            last += n * step
        return last


# --- the exporters and their configurations -----------------------------------------------------

class LiteralDumper(yaml.SafeDumper):
    """YAML with multi-line SQL as literal blocks, keys in the order written."""


LiteralDumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def dump(data: dict, header: str) -> str:
    return header + yaml.dump(data, Dumper=LiteralDumper, sort_keys=False, width=100)


def seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


def pipemon_config(dsn: str, interval: float, queues: int) -> dict:
    queue = {
        "name": "jobs", "kind": "queue", "dsn": dsn, "table": "jobs",
        "columns": {"id": "id", "queue": "queue", "state": "status",
                    "created_at": "created_at", "available_at": "run_at",
                    "started_at": "started_at", "finished_at": "finished_at"},
        "stuck_after": "30m",
    }
    if queues > 100:  # the default cap is 100 queue labels; the rest would be folded into other
        queue["max_queues"] = 1000
    return {
        "defaults": {"interval": seconds_text(interval),
                     "timeout": seconds_text(min(5.0, interval))},
        "sources": [queue, {
            "name": "analysis", "kind": "analysis", "dsn": dsn, "table": "audio_events_cache",
            "columns": {"id": "id", "created_at": "created_at"},
            "success": "timeline IS NOT NULL",
            "duration_seconds": "processing_ms / 1000.0",
        }],
    }


def query_exporter_config(dsn: str, interval: float | None) -> dict:
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    metrics, queries = {}, {}
    for q in QUERIES:
        for value in q["values"]:
            metrics[value] = {"type": "gauge", "description": q["help"]}
            if q["labels"]:
                metrics[value]["labels"] = list(q["labels"])
        query = {"databases": ["pipeline"], "metrics": list(q["values"])}
        if interval is not None:
            query["interval"] = int(interval)
        queries[q["name"]] = {**query, "sql": q["sql"] + "\n"}
    return {"databases": {"pipeline": {"dsn": url + "?application_name=query-exporter"}},
            "metrics": metrics, "queries": queries}


def sql_exporter_config(dsn: str, interval: float) -> dict:
    url = dsn.replace("postgresql://", "postgres://", 1)
    queries = [{"name": q["name"], "help": q["help"], "labels": list(q["labels"]),
                "values": list(q["values"]), "allow_zero_rows": True, "query": q["sql"] + "\n"}
               for q in QUERIES]
    return {"jobs": [{"name": "pipeline", "interval": seconds_text(interval),
                      "connections": [url + "?sslmode=disable&application_name=sql-exporter"],
                      "queries": queries}]}


GENERATED = ("# Generated by `python bench/bench_peers.py --write-configs` from"
             " bench/peers/queries.yaml.\n# The benchmark renders it again with its own DSN"
             " (one role per exporter) and interval.\n")


def committed_configs() -> dict[Path, str]:
    """The configurations as committed in bench/peers/, with an example DSN."""
    return {
        PEERS / "pipemon.yaml": dump(pipemon_config(
            EXAMPLE_DSN.format(role="bench_pipemon"), 15, 12), GENERATED),
        PEERS / "query-exporter.yaml": dump(query_exporter_config(
            EXAMPLE_DSN.format(role="bench_qe"), 15), GENERATED),
        PEERS / "sql-exporter.yml": dump(sql_exporter_config(
            EXAMPLE_DSN.format(role="bench_sqlexp"), 15), GENERATED),
    }


@dataclass(frozen=True)
class Exporter:
    key: str
    title: str
    role: str
    marker: str  # LIKE pattern of the one statement the exporter runs once per cycle
    mode: str  # where it queries: "schedule" or "scrape"


EXPORTERS = {
    "pipemon": Exporter("pipemon", "pipemon", "bench_pipemon", "%WITH grouped AS%",
                        "schedule"),
    "qe": Exporter("qe", "query-exporter", "bench_qe", "%AS active_jobs%", "schedule"),
    "qe-scrape": Exporter("qe-scrape", "query-exporter (on scrape)", "bench_qe_scrape",
                          "%AS active_jobs%", "scrape"),
    "sqlexp": Exporter("sqlexp", "sql-exporter", "bench_sqlexp", "%AS active_jobs%",
                       "schedule"),
}


def ensure_peer_venv(venv: Path) -> Path:
    """query-exporter in its own venv (its pins differ from pipemon's); created when missing."""
    exe = venv / "bin" / "query-exporter"
    if not exe.exists():
        print(f"creating {venv} with {QUERY_EXPORTER_PIN} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version"
                        "-check", QUERY_EXPORTER_PIN, PSYCOPG_PIN], check=True)
    return exe


def versions(qe_exe: Path) -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (result.stdout + result.stderr).strip().splitlines()[0]

    found = {
        "pipemon": out([str(PIPEMON), "--version"]),
        "query-exporter": out([str(qe_exe), "--version"]),
        "prometheus-sql-exporter": out(["dpkg-query", "-W", "-f", "${Version}",
                                        "prometheus-sql-exporter"]),
        "python": sys.version.split()[0],
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        found["git"] = out(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "exporter"],
                               capture_output=True, text=True).stdout.split("\n")
        found["exporter_changes"] = " ".join(line[3:] for line in dirty if line)
    return found


class Running:
    """One exporter process on a free port, its config and log in `folder`."""

    def __init__(self, exporter: Exporter, dsn: str, interval: float, ds: Dataset,
                 folder: Path, qe_exe: Path):
        self.exporter = exporter
        self.port = free_port()
        self.log = folder / f"{exporter.key}-{ds.name}.log"
        config = folder / f"{exporter.key}-{ds.name}.yaml"
        env = dict(os.environ)
        if exporter.key == "pipemon":
            config.write_text(dump(pipemon_config(dsn, interval, ds.queues), ""))
            cmd = [str(PIPEMON), "serve", "--config", str(config), "--web.listen-address",
                   f"127.0.0.1:{self.port}", "--log.level", "warning"]
        elif exporter.key in ("qe", "qe-scrape"):
            schedule = interval if exporter.mode == "schedule" else None
            config.write_text(dump(query_exporter_config(dsn, schedule), ""))
            cmd = [str(qe_exe), "--config", str(config), "-H", "127.0.0.1", "-p", str(self.port),
                   "-L", "warning"]
        else:
            config.write_text(dump(sql_exporter_config(dsn, interval), ""))
            cmd = [str(SQL_EXPORTER), "-config.file", str(config), "-web.listen-address",
                   f"127.0.0.1:{self.port}"]
            env.update(debian_service_env())
        self.handle = open(self.log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self.handle, stderr=subprocess.STDOUT, env=env,
                                     cwd=folder)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_http(self, timeout: float = 60) -> None:
        path = "/readyz" if self.exporter.key == "pipemon" else "/metrics"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.exporter.title} exited: {self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_get(self.port, path, {} if path != "/metrics" else PLAIN_HEADERS,
                                     timeout=5)
                if status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.exporter.title} not ready after {timeout:g}s: {self.tail()}")

    def tail(self) -> str:
        self.handle.flush()
        return " | ".join(self.log.read_text().splitlines()[-5:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.handle.close()


def debian_service_env() -> dict[str, str]:
    """GOGC, GOMAXPROCS and LOGLEVEL as the Debian package's service sets them."""
    env = {"LOGLEVEL": "warn"}
    path = Path("/etc/default/prometheus-sql-exporter")
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("GOGC", "GOMAXPROCS", "LOGLEVEL"):
                env[key.strip()] = value.strip().strip('"').lower()
    return env


# --- measuring ------------------------------------------------------------------------------------

def http_get(port: int, path: str, headers: dict, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scrape_text(port: int) -> str:
    status, body = http_get(port, "/metrics", PLAIN_HEADERS, timeout=60)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return body.decode()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def load(port: int, scrapers: int, seconds: float, pace: float | None = None,
         aligned: bool = False) -> dict:
    """`scrapers` threads scraping /metrics like Prometheus, back to back or every `pace` s,
    at random phases or all at the same instants (`aligned`: the worst case of concurrency)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.5
    end = start + seconds

    def scraper() -> None:
        mine, failed = [], []
        phase = 0.0 if aligned or not pace else random.uniform(0, pace)
        next_at = start + phase
        time.sleep(max(0.0, start - time.monotonic()))
        while True:
            if pace:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += pace
            if time.monotonic() >= end:
                break
            started = time.perf_counter()
            try:
                status, _ = http_get(port, "/metrics", PROMETHEUS_HEADERS, timeout=30)
                if status != 200:
                    raise OSError(f"HTTP {status}")
                mine.append(time.perf_counter() - started)
            except (OSError, http.client.HTTPException) as err:
                failed.append(str(err))
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=scraper) for _ in range(scrapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    return {"scrapers": scrapers, "pace_s": pace, "aligned": aligned, "n": len(latencies),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "per_s": len(latencies) / elapsed if elapsed else 0.0,
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": max(latencies, default=math.nan) * 1000}


class Stats:
    """pg_stat_statements of one role, from the cluster's `postgres` database."""

    def __init__(self, admin: str, role: str):
        self.conn = psycopg.connect(admin, autocommit=True)
        self.role_oid = self.conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s",
                                          (role,)).fetchone()[0]

    def reset(self) -> None:
        self.conn.execute("SELECT pg_stat_statements_reset(%s::oid, 0::oid, 0::bigint)",
                          (self.role_oid,))

    def marker_calls(self, marker: str) -> int:
        return self.conn.execute(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements"
            " WHERE userid = %s::oid AND query LIKE %s", (self.role_oid, marker)).fetchone()[0]

    def snapshot(self) -> dict[int, tuple[int, float, float, str]]:
        rows = self.conn.execute(
            "SELECT queryid, calls, total_exec_time, total_plan_time, query"
            " FROM pg_stat_statements WHERE userid = %s::oid", (self.role_oid,)).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def close(self) -> None:
        self.conn.close()


def diff(after: dict, before: dict) -> dict[int, tuple[int, float, float, str]]:
    out = {}
    for qid, (calls, exec_ms, plan_ms, text) in after.items():
        c0, e0, p0, _ = before.get(qid, (0, 0.0, 0.0, ""))
        if calls - c0:
            out[qid] = (calls - c0, exec_ms - e0, plan_ms - p0, text)
    return out


def is_unmapped_scan(text: str) -> bool:
    """pipemon's every-5-minutes check for unmapped raw states: the index lookup and the loose
    index scan, or the full count where no index leads with the state column."""
    return ("FROM pg_index" in text or "WITH RECURSIVE present" in text
            or ("IS NULL OR" in text and "NOT IN" in text))


class Prometheus(threading.Thread):
    """One scrape per interval, as a Prometheus would (it drives on-scrape exporters)."""

    def __init__(self, port: int, interval: float):
        super().__init__(daemon=True, name="prometheus")
        self.port, self.interval = port, interval
        self.stop = threading.Event()
        self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                http_get(self.port, "/metrics", PROMETHEUS_HEADERS, timeout=60)
            except (OSError, http.client.HTTPException):
                self.errors += 1
            self.stop.wait(self.interval)


def wait_calls(stats: Stats, marker: str, target: int, timeout: float) -> float:
    """Wait until the marker statement has run `target` times; return when it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stats.marker_calls(marker) >= target:
            return time.monotonic()
        time.sleep(0.2)
    raise RuntimeError(f"cycle {target} not seen within {timeout:g}s")


# --- accuracy -------------------------------------------------------------------------------------

def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile (promql/quantile.go, bucketQuantile) over (le, count)."""
    buckets = sorted(buckets)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return math.nan
    counts = []
    for _le, count in buckets:  # Prometheus makes the counts monotonic first
        counts.append(max(count, counts[-1]) if counts else count)
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(buckets) - 1) if counts[i] >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, end, count = 0.0, buckets[b][0], counts[b]
    if b > 0:
        start = buckets[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def parse(text: str) -> list:
    return list(text_string_to_metric_families(text))


def pipemon_histograms(families: list, name: str) -> dict[str, dict]:
    """queue -> {le: count, 'sum': s, 'count': n}, summed over outcomes; '' = every queue."""
    out: dict[str, dict] = {}
    for family in families:
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.labels.get("source") != "jobs":
                continue
            for queue in (sample.labels["queue"], ""):
                entry = out.setdefault(queue, {"le": {}, "sum": 0.0, "count": 0.0})
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    entry["le"][le] = entry["le"].get(le, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    entry["sum"] += sample.value
                elif sample.name.endswith("_count"):
                    entry["count"] += sample.value
    return out


def metric_total(families: list, name: str, **labels: str) -> float:
    total = 0.0
    for family in families:
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def rel(measured: float, exact: float) -> float:
    if exact == 0:
        return 0.0 if measured == 0 else math.inf
    return (measured - exact) / exact


def pipemon_accuracy(conn, text: str, id_range: tuple[int, int],
                     analysis_range: tuple[int, int]) -> dict:
    families = parse(text)
    hist = pipemon_histograms(families, "pipemon_queue_job_run_seconds")
    rows = conn.execute(
        "SELECT queue, count(*), avg(run), percentile_cont(ARRAY[0.5, 0.95, 0.99])"
        " WITHIN GROUP (ORDER BY run)"
        " FROM (SELECT queue, extract(epoch FROM finished_at - started_at)::float8 AS run"
        "       FROM jobs WHERE id > %s AND id <= %s AND status = ANY(%s)) AS j"
        " GROUP BY ROLLUP (queue)", (*id_range, list(FINAL_STATES))).fetchall()
    exact = {(queue or ""): (count, avg, pcts) for queue, count, avg, pcts in rows}
    result: dict = {"jobs_exact": exact.get("", (0,))[0],
                    "jobs_counted": hist.get("", {}).get("count", 0.0),
                    "finished_total": metric_total(families, "pipemon_queue_jobs_finished_total",
                                                   source="jobs")}
    worst: dict[str, float] = {}
    for queue, (count, avg, pcts) in exact.items():
        entry = hist.get(queue)
        if entry is None or not count:
            continue
        buckets = list(entry["le"].items())
        for q, exact_value in zip((0.5, 0.95, 0.99), pcts, strict=True):
            measured = histogram_quantile(q, buckets)
            key = f"p{round(q * 100)}"
            if queue == "":
                result[key] = {"histogram": measured, "exact": exact_value,
                               "error": rel(measured, exact_value)}
            elif count >= 100:  # per-queue worst error, queues with 100+ jobs
                worst[key] = max(worst.get(key, 0.0), abs(rel(measured, exact_value)))
        if queue == "":
            mean = entry["sum"] / entry["count"] if entry["count"] else math.nan
            result["avg"] = {"histogram": mean, "exact": avg, "error": rel(mean, avg)}
    result["worst_queue_error"] = worst
    analysis_exact = conn.execute("SELECT count(*) FROM audio_events_cache WHERE id > %s"
                                  " AND id <= %s", analysis_range).fetchone()[0]
    result["analysis_exact"] = analysis_exact
    result["analysis_counted"] = metric_total(families, "pipemon_analysis_results_total",
                                              source="analysis")
    result["counts_match"] = (result["jobs_counted"] == result["jobs_exact"]
                              == result["finished_total"]
                              and result["analysis_counted"] == analysis_exact)
    return result


def peer_values(families: list, exporter: Exporter) -> dict[tuple, float]:
    """(value column, label values...) -> value, from either peer's exposition."""
    columns = {v: q for q in QUERIES for v in q["values"]}
    out = {}
    for family in families:
        for sample in family.samples:
            if exporter.key == "sqlexp":
                column = sample.labels.get("col")
                if sample.name != "sql_" + columns.get(column, {}).get("name", "?"):
                    continue
            else:
                column = sample.name
            if column not in columns:
                continue
            key = (column, *(sample.labels.get(label, "") for label in columns[column]["labels"]))
            out[key] = sample.value
    return out


def exact_values(conn) -> dict[tuple, float]:
    out = {}
    for q in QUERIES:
        cur = conn.execute(q["sql"])
        names = [d.name for d in cur.description]
        for row in cur.fetchall():
            record = dict(zip(names, row, strict=True))
            for value in q["values"]:
                key = (value, *(record[label] for label in q["labels"]))
                out[key] = float(record[value])
    return out


def peer_accuracy(conn, port: int, exporter: Exporter) -> dict:
    """The peer's values when scraped against the same SQL run right then (staleness only)."""
    text = scrape_text(port)
    exact = exact_values(conn)
    measured = peer_values(parse(text), exporter)
    missing = sorted({k[0] for k in exact if k not in measured})
    errors: dict[str, float] = {}
    for key, value in exact.items():
        if key in measured:
            errors[key[0]] = max(errors.get(key[0], 0.0), abs(rel(measured[key], value)))
    return {"missing": missing, "worst_error": errors, "series": len(measured)}


# --- one exporter on one dataset -----------------------------------------------------------------

@dataclass
class Settings:
    interval: float
    cycles: int
    load_seconds: float
    paced: bool
    single: bool
    accuracy: bool


@dataclass
class Result:
    exporter: str
    dataset: dict
    settings: dict
    values: dict = field(default_factory=dict)


def measure(exporter: Exporter, ds: Dataset, admin: str, dsn: str, writer: Writer,
            settings: Settings, folder: Path, qe_exe: Path) -> Result:
    interval = settings.interval
    role_dsn = f"postgresql://{exporter.role}@127.0.0.1:{conninfo_port(dsn)}/{ds.name}"
    stats = Stats(admin, exporter.role)
    stats.reset()
    values: dict = {"mode": exporter.mode}
    is_pipemon = exporter.key == "pipemon"
    running = prometheus = None
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        if is_pipemon and settings.accuracy:
            writer.pause()
        running = Running(exporter, role_dsn, interval, ds, folder, qe_exe)
        running.wait_http()
        prometheus = Prometheus(running.port, interval)
        prometheus.start()
        first_timeout = interval * 2 + 60
        seen = wait_calls(stats, exporter.marker, 1, first_timeout)
        if is_pipemon:
            running.wait_http()  # /readyz: both sources finished their first poll
        id_start = analysis_start = 0
        if is_pipemon and settings.accuracy:
            id_start = conn.execute("SELECT max(id) FROM jobs").fetchone()[0]
            analysis_start = conn.execute("SELECT max(id) FROM audio_events_cache").fetchone()[0]
            writer.resume()
        time.sleep(max(0.0, seen + interval / 2 - time.monotonic()))
        snapshots = [stats.snapshot()]
        calls0 = stats.marker_calls(exporter.marker)
        cpu0, wall0 = cpu_seconds(running.pid), time.monotonic()
        walls = []
        for k in range(1, settings.cycles + 1):
            seen = wait_calls(stats, exporter.marker, calls0 + k, interval * 3 + 60)
            time.sleep(max(0.0, seen + interval / 2 - time.monotonic()))
            snapshots.append(stats.snapshot())
            if is_pipemon:
                walls.append(pipemon_poll_seconds(running.port))
        cpu1, wall1 = cpu_seconds(running.pid), time.monotonic()
        cycles = stats.marker_calls(exporter.marker) - calls0
        if cycles != settings.cycles:
            raise RuntimeError(f"{cycles} cycles ran where {settings.cycles} were measured")
        per_cycle, unmapped = [], None
        for before, after in itertools.pairwise(snapshots):
            delta = diff(after, before)
            per_cycle.append(sum(e for _c, e, _p, text in delta.values()
                                 if not is_unmapped_scan(text)))
        window = diff(snapshots[-1], snapshots[0])
        everything = snapshots[-1]  # since the reset, first cycle included
        for calls, exec_ms, _plan, text in everything.values():
            if is_unmapped_scan(text):
                unmapped = {"calls": calls, "mean_ms": exec_ms / calls,
                            "amortized_ms": exec_ms / calls * interval / UNMAPPED_CHECK_INTERVAL}
        steady = [v for v in window.values() if not is_unmapped_scan(v[3])]
        values.update({
            "cycles": cycles,
            "db_ms_median": statistics.median(per_cycle),
            "db_ms_p90": percentile(per_cycle, 0.9),
            "db_ms_mean": sum(v[1] for v in steady) / cycles,
            "plan_ms_mean": sum(v[2] for v in steady) / cycles,
            "statements_per_cycle": sum(v[0] for v in steady) / cycles,
            "unmapped_scan": unmapped,
            "statements": sorted(
                ({"query": " ".join(text.split())[:160], "calls": calls,
                  "exec_ms_per_cycle": exec_ms / cycles, "mean_ms": exec_ms / calls}
                 for calls, exec_ms, _p, text in window.values()),
                key=lambda s: -s["exec_ms_per_cycle"]),
            "cpu_s_per_hour": (cpu1 - cpu0) / (wall1 - wall0) * 3600,
            "measured_s": wall1 - wall0,
        })
        values["db_ms_with_unmapped"] = values["db_ms_median"] + (
            unmapped["amortized_ms"] if unmapped else 0.0)
        if walls:
            values["poll_wall_ms_median"] = statistics.median(w for w in walls if w) * 1000
        if is_pipemon and settings.accuracy:
            writer.pause()
            id_end = conn.execute("SELECT max(id) FROM jobs").fetchone()[0]
            analysis_end = conn.execute("SELECT max(id) FROM audio_events_cache").fetchone()[0]
            calls = stats.marker_calls(exporter.marker)
            seen = wait_calls(stats, exporter.marker, calls + 2, interval * 4 + 60)
            time.sleep(max(0.0, seen + interval / 2 - time.monotonic()))
            values["accuracy"] = pipemon_accuracy(conn, scrape_text(running.port),
                                                  (id_start, id_end),
                                                  (analysis_start, analysis_end))
            writer.resume()
        elif settings.accuracy:
            values["accuracy"] = peer_accuracy(conn, running.port, exporter)
        prometheus.stop.set()
        prometheus.join()
        values["prometheus_scrape_errors"] = prometheus.errors
        text = scrape_text(running.port)
        families = parse(text)
        values["series"] = sum(len(f.samples) for f in families)
        values["bytes"] = len(text.encode())
        _status, body = http_get(running.port, "/metrics", PROMETHEUS_HEADERS)
        values["bytes_scraped"] = len(body)
        values["bytes_plain_gzip"] = len(gzip.compress(text.encode()))
        if is_pipemon:
            values["poll_errors"] = metric_total(families, "pipemon_source_poll_errors_total")
        values["load"] = {}
        if settings.single:
            values["load"]["1"] = load(running.port, 1, settings.load_seconds / 3)
        values["load"]["10"] = load(running.port, 10, settings.load_seconds)
        if settings.paced:
            values["load"]["10 paced"] = load(running.port, 10, settings.load_seconds, pace=1.0)
            values["load"]["10 aligned"] = load(running.port, 10, settings.load_seconds,
                                                pace=1.0, aligned=True)
        values["rss_hwm_mib"] = proc_status(running.pid, "VmHWM") / 2**20
        values["rss_mib"] = proc_status(running.pid, "VmRSS") / 2**20
        if running.proc.poll() is not None:
            raise RuntimeError(f"{exporter.title} exited: {running.tail()}")
    finally:
        if prometheus is not None:
            prometheus.stop.set()
        if running is not None:
            running.stop()
        if is_pipemon and settings.accuracy:
            writer.resume()
        stats.close()
        conn.close()
    return Result(exporter.key, {"rows": ds.rows, "queues": ds.queues, "active": ds.active,
                                 "analysis_rows": ds.analysis_rows},
                  {"interval_s": interval, "cycles": settings.cycles,
                   "load_s": settings.load_seconds}, values)


def conninfo_port(dsn: str) -> int:
    from psycopg.conninfo import conninfo_to_dict

    return int(conninfo_to_dict(dsn).get("port") or 5432)


def pipemon_poll_seconds(port: int) -> float:
    """The last poll durations of both sources, from /health (summed: they run apart)."""
    status, body = http_get(port, "/health", {})
    if status not in (200, 503):
        return 0.0
    return sum(s.get("last_duration_seconds") or 0.0 for s in json.loads(body)["sources"])


# --- the run and its report ----------------------------------------------------------------------

def human(n: float) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:g}{suffix}"
    return f"{n:g}"


def ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:,.1f}x"


def pct(error: float | None) -> str:
    if error is None or math.isnan(error):
        return "n/a"
    return f"{error * 100:+.1f} %"


def main_table(results: list[Result]) -> str:
    by = {r.exporter: r.values for r in results}
    keys = [k for k in EXPORTERS if k in by]
    base = by.get("pipemon", {})
    head = "| | " + " | ".join(EXPORTERS[k].title for k in keys) + " |"
    lines = [head, "|---" * (len(keys) + 1) + "|"]

    def row(label: str, cell: Callable[[str, dict], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(k, by[k]) for k in keys) + " |")

    interval = results[0].settings["interval_s"]
    row("queries run", lambda k, v: f"every {interval:g} s" if v["mode"] == "schedule"
        else "on every scrape")
    row("DB time per cycle, median (p90) ms",
        lambda k, v: f"{ms(v['db_ms_median'])} ({ms(v['db_ms_p90'])})")
    row("+ pipemon's unmapped-state check, amortized (every 5 m)",
        lambda k, v: (f"{ms(v['db_ms_with_unmapped'])} (scan {ms(v['unmapped_scan']['mean_ms'])}"
                      " ms)") if v.get("unmapped_scan") else "-")
    row("DB time ratio to pipemon (steady; with the scan)",
        lambda k, v: "1x" if k == "pipemon" else
        f"{ratio(v['db_ms_median'], base.get('db_ms_median'))};"
        f" {ratio(v['db_ms_median'], base.get('db_ms_with_unmapped'))}")
    row("statements per cycle", lambda k, v: f"{v['statements_per_cycle']:.1f}")
    row("poll wall time, median ms (pipemon /health, both sources)",
        lambda k, v: ms(v["poll_wall_ms_median"]) if "poll_wall_ms_median" in v else "-")
    row("series on /metrics (bytes, as scraped)",
        lambda k, v: f"{v['series']:,} ({v['bytes_scraped']:,})")
    for key, label in (("1", "1 scraper"), ("10", "10 scrapers back to back"),
                       ("10 paced", "10 scrapers, 1/s each"),
                       ("10 aligned", "10 scrapers, 1/s each, all at the same instants")):
        if all(key in by[k]["load"] for k in keys):
            row(f"/metrics p50 / p99 ms, {label}",
                lambda k, v, key=key: f"{ms(v['load'][key]['p50_ms'])} /"
                f" {ms(v['load'][key]['p99_ms'])}")
    row("scrapes/s with 10 back to back", lambda k, v: f"{v['load']['10']['per_s']:,.0f}")
    row("/metrics p99 ratio to pipemon (10 back to back)",
        lambda k, v: "1x" if k == "pipemon" else
        ratio(v["load"]["10"]["p99_ms"], base.get("load", {}).get("10", {}).get("p99_ms")))
    row("CPU s per hour of polling", lambda k, v: f"{v['cpu_s_per_hour']:,.1f}")
    row("CPU ratio to pipemon", lambda k, v: "1x" if k == "pipemon" else
        ratio(v["cpu_s_per_hour"], base.get("cpu_s_per_hour")))
    row("peak RSS (VmHWM) MiB", lambda k, v: f"{v['rss_hwm_mib']:.1f}")
    return "\n".join(lines)


def accuracy_table(results: list[Result]) -> str:
    lines = ["| exporter | what | exported | exact | error |", "|---|---|---|---|---|"]
    for r in results:
        acc = r.values.get("accuracy")
        if not acc:
            continue
        title = EXPORTERS[r.exporter].title
        if r.exporter == "pipemon":
            lines.append(f"| {title} | jobs counted / finished in the window |"
                         f" {acc['jobs_counted']:,.0f} | {acc['jobs_exact']:,} |"
                         f" {'match' if acc['counts_match'] else 'MISMATCH'} |")
            for key in ("p50", "p95", "p99", "avg"):
                if key in acc:
                    a = acc[key]
                    worst = acc["worst_queue_error"].get(key)
                    extra = f" (worst queue {pct(worst)})" if worst is not None else ""
                    lines.append(f"| {title} | run time {key}, all queues, s |"
                                 f" {a['histogram']:.1f} | {a['exact']:.1f} |"
                                 f" {pct(a['error'])}{extra} |")
        else:
            worst = acc["worst_error"]
            for column in ("jobs_finished_last_hour", "job_run_seconds_avg_last_hour",
                           "job_run_seconds_p99_last_hour", "analyses_last_hour"):
                if column in worst:
                    lines.append(f"| {title} | {column}, worst series | | |"
                                 f" {worst[column] * 100:.2f} % |")
            if acc["missing"]:
                lines.append(f"| {title} | missing | {', '.join(acc['missing'])} | | |")
    return "\n".join(lines)


def statements_table(results: list[Result], top: int = 8) -> str:
    lines = ["| exporter | statement (normalized by pg_stat_statements) | calls/cycle |"
             " ms/cycle | mean ms |", "|---|---|---|---|---|"]
    for r in results:
        cycles = r.values["cycles"]
        for s in r.values["statements"][:top]:
            if s["exec_ms_per_cycle"] < 0.005:
                continue
            query = s["query"].replace("|", "\\|")
            query = query if len(query) < 90 else query[:87] + "..."
            lines.append(f"| {EXPORTERS[r.exporter].title} | `{query}` |"
                         f" {s['calls'] / cycles:.1f} | {ms(s['exec_ms_per_cycle'])} |"
                         f" {ms(s['mean_ms'])} |")
    return "\n".join(lines)


def explain_active(dsn: str, ds: Dataset, folder: Path) -> dict:
    """EXPLAIN ANALYZE of pipemon's active-jobs query and of the peers' one, on this data."""
    from prometheus_client import CollectorRegistry

    from pipemon.app import App
    from pipemon.config import load as load_config

    config = folder / f"explain-{ds.name}.yaml"
    config.write_text(dump(pipemon_config(dsn, 15, ds.queues), ""))
    app = App(load_config(config), registry=CollectorRegistry())
    try:
        pipemon_sql = app.runners[0].source.schema.active_sql()
        with psycopg.connect(dsn, autocommit=True) as conn:
            queries = {"pipemon": (pipemon_sql.as_string(conn), {"stuck": 1800.0})}
            for q in QUERIES:
                if q["name"] in ("jobs_active", "job_oldest_waiting_seconds", "jobs_stuck"):
                    queries[q["name"]] = (q["sql"], None)
            out = {}
            for name, (query, params) in queries.items():
                for _ in range(3):  # warm
                    conn.execute(query, params)
                plan = [r[0] for r in conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS) " + query, params).fetchall()]
                out[name] = {"plan": plan, "execution_ms": float(
                    next(line for line in plan if "Execution Time" in line).split()[2])}
            return out
    finally:
        app.close()


def growth_table(results: list[Result], dimension: str) -> str:
    keys = [k for k in EXPORTERS if any(r.exporter == k for r in results)]
    points = sorted({(r.dataset["rows"], r.dataset["queues"]) for r in results},
                    key=lambda p: p if dimension == "rows" else (p[1], p[0]))
    head = ["rows" if dimension == "rows" else "queues (pipemon series)"]
    for k in keys:
        head.append(f"{EXPORTERS[k].title}: DB ms/cycle")
    for k in keys:
        head.append(f"{EXPORTERS[k].title}: /metrics p50 / p99 ms (10 scrapers)")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for rows, queues in points:
        here = {r.exporter: r.values for r in results
                if (r.dataset["rows"], r.dataset["queues"]) == (rows, queues)}
        pipemon_series = here.get("pipemon", {}).get("series")
        label = (human(rows) if dimension == "rows"
                 else f"{queues} ({pipemon_series:,})" if pipemon_series else str(queues))
        cells = [label]
        for k in keys:
            v = here.get(k)
            if v is None:
                cells.append("")
                continue
            text = ms(v["db_ms_median"])
            if v.get("unmapped_scan"):  # its mean: the amortized share depends on the interval
                text += f" (scan {ms(v['unmapped_scan']['mean_ms'])} every 5 m)"
            cells.append(text)
        for k in keys:
            v = here.get(k)
            cells.append("" if v is None else
                         f"{ms(v['load']['10']['p50_ms'])} / {ms(v['load']['10']['p99_ms'])}"
                         f" ({v['series']:,} series)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict[str, list[Result]], meta: dict) -> str:
    """The markdown tables of a run (also rendered again from its JSON with --report)."""
    args = meta["args"]
    main, growth_keys = results["main"], [k for k in EXPORTERS if k != "qe-scrape"]
    small = min((r.dataset["rows"] for r in results["queues"]), default=args["rows"])
    text = [f"### {human(args['rows'])} finished jobs, {args['queues']} queues, polls every"
            f" {args['interval']:g} s, {args['cycles']} cycles\n"]
    if main:
        text += [main_table(main), "", accuracy_table(main), "", statements_table(main)]
    if results["rows"]:
        text += ["", "### Growth with rows\n", growth_table(
            results["rows"] + [r for r in main if r.exporter in growth_keys], "rows")]
    if results["queues"]:
        text += ["", f"### Growth with series ({human(small)} rows)\n",
                 growth_table(results["queues"], "queues")]
    return "\n".join(text) + "\n"


def load_results(path: Path) -> tuple[dict[str, list[Result]], dict]:
    data = json.loads(path.read_text())
    return ({part: [Result(**r) for r in rs] for part, rs in data["results"].items()},
            data["meta"])


def write_results(out: Path, results: dict[str, list[Result]], meta: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "results": {part: [r.__dict__ for r in rs]
                                      for part, rs in results.items()}}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    columns = ["part", "exporter", "rows", "queues", "interval_s", "cycles", "mode",
               "db_ms_median", "db_ms_p90", "db_ms_mean", "plan_ms_mean", "unmapped_scan_ms",
               "db_ms_with_unmapped", "statements_per_cycle", "poll_wall_ms_median", "series",
               "bytes", "bytes_scraped", "p50_ms_1", "p99_ms_1", "p50_ms_10", "p99_ms_10",
               "per_s_10", "errors_10", "p50_ms_10_paced", "p99_ms_10_paced", "cpu_s_per_hour",
               "rss_hwm_mib"]
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for part, rs in results.items():
            for r in rs:
                v = r.values
                loads = v.get("load", {})
                writer.writerow([
                    part, r.exporter, r.dataset["rows"], r.dataset["queues"],
                    r.settings["interval_s"], v.get("cycles"), v.get("mode"),
                    *(round(v[k], 3) if isinstance(v.get(k), float) else v.get(k) for k in (
                        "db_ms_median", "db_ms_p90", "db_ms_mean", "plan_ms_mean")),
                    round(v["unmapped_scan"]["mean_ms"], 3) if v.get("unmapped_scan") else "",
                    *(round(v[k], 3) if isinstance(v.get(k), float) else v.get(k) for k in (
                        "db_ms_with_unmapped", "statements_per_cycle", "poll_wall_ms_median",
                        "series", "bytes", "bytes_scraped")),
                    *(round(loads[n][k], 3) if n in loads else "" for n, k in (
                        ("1", "p50_ms"), ("1", "p99_ms"), ("10", "p50_ms"), ("10", "p99_ms"),
                        ("10", "per_s"), ("10", "errors"), ("10 paced", "p50_ms"),
                        ("10 paced", "p99_ms"))),
                    round(v.get("cpu_s_per_hour", 0), 2), round(v.get("rss_hwm_mib", 0), 1),
                ])


def problems(results: list[Result]) -> list[str]:
    """What makes the run fail (exit 1): broken exporters and wrong numbers, not slow ones."""
    found = []
    for r in results:
        v, title = r.values, EXPORTERS[r.exporter].title
        for name, stats in v.get("load", {}).items():
            if stats["errors"]:
                found.append(f"{title}: {stats['errors']} failed scrapes with {name} scrapers"
                             f" ({stats['first_error']})")
        if v.get("prometheus_scrape_errors"):
            found.append(f"{title}: {v['prometheus_scrape_errors']} failed periodic scrapes")
        if v.get("poll_errors"):
            found.append(f"{title}: {v['poll_errors']:g} failed polls")
        acc = v.get("accuracy")
        if acc and r.exporter == "pipemon" and not acc["counts_match"]:
            found.append(f"pipemon counted {acc['jobs_counted']:g} jobs (finished_total"
                         f" {acc['finished_total']:g}) and {acc['analysis_counted']:g} analyses"
                         f" where SQL finds {acc['jobs_exact']} and {acc['analysis_exact']}")
        if acc and r.exporter != "pipemon" and acc["missing"]:
            found.append(f"{title}: no series for {', '.join(acc['missing'])}")
    return found


def check_committed_configs() -> list[str]:
    return [f"{path.relative_to(ROOT)} is out of date: run bench/bench_peers.py --write-configs"
            for path, text in committed_configs().items()
            if not path.exists() or path.read_text() != text]


@contextlib.contextmanager
def cluster_and_roles(roles: list[str]) -> Iterator[str]:
    cluster = BenchCluster(free_port())
    try:
        cluster.init()
        cluster.start()
        admin = cluster.dsn()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            for role in roles:
                conn.execute(f'CREATE ROLE "{role}" LOGIN')
        yield admin
    finally:
        cluster.destroy()


def run_dataset(ds: Dataset, keys: list[str], admin: str, settings: Settings, folder: Path,
                qe_exe: Path, rate: float | None) -> list[Result]:
    roles = [EXPORTERS[k].role for k in keys]
    dsn = build(admin, ds, roles)
    writer = Writer(dsn, ds, rate)
    writer.start()
    results = []
    try:
        if settings.accuracy:  # the main run: how the active-jobs queries execute
            explained = explain_active(dsn, ds, folder)
            print("  active-jobs query, execution ms: " + ", ".join(
                f"{name} {v['execution_ms']:.1f}" for name, v in explained.items()), flush=True)
            EXPLAINED[ds.name] = explained
        for key in keys:
            print(f"  {EXPORTERS[key].title} on {ds.label()} ...", flush=True)
            result = measure(EXPORTERS[key], ds, admin, dsn, writer, settings, folder, qe_exe)
            v = result.values
            print(f"    DB {ms(v['db_ms_median'])} ms/cycle, /metrics p99"
                  f" {ms(v['load']['10']['p99_ms'])} ms (10 scrapers), {v['series']:,} series,"
                  f" CPU {v['cpu_s_per_hour']:.1f} s/h, RSS {v['rss_hwm_mib']:.1f} MiB",
                  flush=True)
            results.append(result)
            if writer.error is not None:
                raise RuntimeError(f"writer failed: {writer.error}")
    finally:
        writer.stop.set()
        writer.join(timeout=30)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{ds.name}" WITH (FORCE)')
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="finished jobs (main run)")
    parser.add_argument("--queues", type=int, default=12,
                        help="queues in the main run (12: about 1,000 pipemon series)")
    parser.add_argument("--cycles", type=int, default=20, help="cycles measured per exporter")
    parser.add_argument("--interval", type=float, default=15, help="poll interval, seconds")
    parser.add_argument("--load-seconds", type=float, default=30)
    parser.add_argument("--exporters", default=",".join(EXPORTERS),
                        help=f"comma-separated, of {', '.join(EXPORTERS)}")
    parser.add_argument("--growth-rows", default="100000,1000000",
                        help="extra row counts for the growth table ('' for none)")
    parser.add_argument("--growth-queues", default="1,120",
                        help="extra queue counts (at the smallest growth row count)")
    parser.add_argument("--growth-cycles", type=int, default=8)
    parser.add_argument("--growth-interval", type=float, default=5)
    parser.add_argument("--rate", type=float, default=None,
                        help="finished jobs per second written during the run (default: the"
                             " history's rate, rows / 30 days)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 100k rows, 2 s polls, 3 cycles, no growth; exit 1 if"
                             " anything is broken")
    parser.add_argument("--out", default=None,
                        help="results path without suffix (default bench/results/peers-<date>;"
                             " --quick: a temp dir)")
    parser.add_argument("--peers-venv", default=str(PEER_VENV))
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the exporters' logs and configs (kept anyway on failure)")
    parser.add_argument("--report", metavar="JSON",
                        help="render the tables of a saved run again (writes its .md) and exit")
    parser.add_argument("--write-configs", action="store_true",
                        help="write bench/peers/*.y*ml from bench/peers/queries.yaml and exit")
    args = parser.parse_args()

    if args.report:
        results, meta = load_results(Path(args.report))
        text = report(results, meta)
        Path(args.report).with_suffix(".md").write_text(text)
        print(text)
        return 0
    if args.write_configs:
        for path, text in committed_configs().items():
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    if args.quick:
        args.rows, args.cycles, args.interval, args.load_seconds = 100_000, 3, 2, 2
        args.growth_rows = args.growth_queues = ""
        args.rate = args.rate or 5.0
    keys = [k.strip() for k in args.exporters.split(",") if k.strip()]
    unknown = [k for k in keys if k not in EXPORTERS]
    if unknown:
        parser.error(f"unknown exporters: {', '.join(unknown)}")
    if not SQL_EXPORTER.exists() and "sqlexp" in keys:
        parser.error("prometheus-sql-exporter missing: apt-get install prometheus-sql-exporter")
    stale = check_committed_configs()
    if stale:
        print("\n".join(stale), file=sys.stderr)
        return 1
    qe_exe = ensure_peer_venv(Path(args.peers_venv))
    meta = {"date": date.today().isoformat(), "versions": versions(qe_exe),
            "cpus": os.cpu_count(), "args": vars(args)}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), flush=True)

    main_settings = Settings(args.interval, args.cycles, args.load_seconds, paced=not args.quick,
                             single=not args.quick, accuracy=True)
    growth_settings = Settings(args.growth_interval, args.growth_cycles,
                               max(5.0, args.load_seconds / 3), paced=False, single=False,
                               accuracy=False)
    growth_keys = [k for k in keys if k != "qe-scrape"]
    growth_rows = [int(x) for x in args.growth_rows.split(",") if x.strip()]
    growth_queues = [int(x) for x in args.growth_queues.split(",") if x.strip()]
    small = min(growth_rows, default=args.rows)
    results: dict[str, list[Result]] = {"main": [], "rows": [], "queues": []}
    folder = Path(tempfile.mkdtemp(prefix="pipemon-peers-"))
    started = time.monotonic()
    out = Path(args.out) if args.out else (
        folder / "peers-quick" if args.quick else  # --quick: shown, not kept
        BENCH / "results" / f"peers-{meta['date']}")
    roles = [EXPORTERS[k].role for k in EXPORTERS]
    print(f"exporter configs and logs: {folder} (removed after a run without problems)",
          flush=True)
    try:
        with cluster_and_roles(roles) as admin:
            for queues in growth_queues:
                print(f"growth by series: {queues} queues", flush=True)
                results["queues"] += run_dataset(Dataset(small, queues), growth_keys, admin,
                                                 growth_settings, folder, qe_exe, None)
            for rows in growth_rows:
                print(f"growth by rows: {rows:,}", flush=True)
                part = run_dataset(Dataset(rows, args.queues), growth_keys, admin,
                                   growth_settings, folder, qe_exe, None)
                results["rows"] += part
                if rows == small:
                    results["queues"] += part
            print(f"main: {args.rows:,} rows", flush=True)
            results["main"] = run_dataset(Dataset(args.rows, args.queues), keys, admin,
                                          main_settings, folder, qe_exe, args.rate)
    finally:
        meta["elapsed_s"] = round(time.monotonic() - started)
        meta["explain_active"] = EXPLAINED
        write_results(out, results, meta)
        print(f"results: {out}.json, .csv, .md", flush=True)

    text = report(results, meta)
    out.with_suffix(".md").write_text(text)
    print("\n" + text)
    found = problems(results["main"] + results["rows"] + results["queues"])
    for problem in found:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if not found and not args.keep_logs:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
