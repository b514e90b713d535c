"""The data: examples/schema.sql in a throwaway cluster with pg_stat_statements (testkit's
PgCluster), filled with N finished jobs over 30 days, 10,000 active jobs and N/10 analysis rows,
and a writer that keeps finishing jobs at the history's rate during the run."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg.conninfo import make_conninfo

from testkit import ROOT
from testkit.net import free_port
from testkit.postgres import PgCluster

SCHEMA = (ROOT / "examples" / "schema.sql").read_text()
HISTORY = timedelta(days=30)
FINAL_STATES = ("succeeded", "failed", "cancelled")
# The cluster: pg_stat_statements (with planning time) and room for 10M rows.
CLUSTER_SETTINGS = {
    "shared_buffers": "256MB", "max_wal_size": "4GB",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track_planning": "on", "pg_stat_statements.max": "5000",
}

# Lognormal run and wait times (seconds); a standard normal from two uniforms (Box-Muller).
NORMAL = "sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())"
RUN_SECONDS = f"exp(ln(60) + 0.9 * {NORMAL})"  # median 1 min, p99 about 8 min
WAIT_SECONDS = f"exp(ln(5) + {NORMAL})"
PROCESSING_MS = f"exp(ln(2000) + 0.7 * {NORMAL})"
STATUS = ("CASE WHEN r < 0.02 THEN 'failed' WHEN r < 0.022 THEN 'cancelled'"
          " ELSE 'succeeded' END")


def queue_name(expr: str) -> str:
    return f"'q' || lpad(({expr})::text, 3, '0')"


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

    def burst(self, per_queue: int) -> None:
        """`per_queue` jobs in every queue, finished now (call while paused): enough jobs per
        queue for the accuracy of its percentiles to mean something, whatever the rate."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"""
                INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)
                SELECT {queue_name("mod(k, %(queues)s)")}, {STATUS},
                       t - run - wait, t - run - wait, t - run, t
                FROM (SELECT k, clock_timestamp() AS t,
                             make_interval(secs => {RUN_SECONDS}) AS run,
                             make_interval(secs => {WAIT_SECONDS}) AS wait, random() AS r
                      FROM generate_series(1, %(n)s) AS k) AS s""",
                         {"queues": self.ds.queues, "n": per_queue * self.ds.queues})

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


def human(n: float) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:g}{suffix}"
    return f"{n:g}"


@contextlib.contextmanager
def cluster_and_roles(roles: list[str]) -> Iterator[str]:
    """A throwaway cluster (fsync off: loading speed; the exporters only read) with
    pg_stat_statements and a login role per exporter; yields its admin DSN."""
    cluster = PgCluster(free_port(), settings=CLUSTER_SETTINGS)
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
