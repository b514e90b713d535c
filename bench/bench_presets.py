"""Benchmark: poll cost must not grow with history (generic and each library preset; 10M jobs).

For each: a throwaway database with N finished jobs spread over 30 days, 1,000 finished in the
last 2 minutes (re-read every poll as the late-commit window) and 10,000 active jobs, with the
indexes docs/exporter.md recommends. Reports the median poll time and, per query, the rows and
buffers it touches (EXPLAIN (ANALYZE, BUFFERS)) and whether it scans the job table sequentially.

    python -m bench.bench_presets [--rows 10000000] [--polls 20] [--presets generic,pgboss]

pg-boss's schema is created by the real pg-boss (tests/queues/node, `make install` first),
pgqueuer's by pgqueuer's own DDL (`build_install_query()`, what `pgq install` runs), pgmq's by
the SQL its PyPI package ships (`install_pgmq_from_sql`) and `pgmq.create()`, River's as its
preset's test makes it (testkit/river.py: the riverqueue package's DDL and River's indexes).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import yaml
from prometheus_client import CollectorRegistry
from psycopg.conninfo import make_conninfo

from pipemon.app import App
from pipemon.config import load
from pipemon.incremental import window_params

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "queues" / "node"
SPREAD = "(%(rows)s::bigint - i) * (interval '30 days' / %(rows)s) + interval '3 minutes'"

GENERIC = {
    "schema": (ROOT / "examples" / "schema.sql").read_text(),
    "fill": [
        f"""INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)
        SELECT 'q' || (i %% 8), CASE WHEN i %% 50 = 0 THEN 'failed' ELSE 'succeeded' END,
               t - interval '40 seconds', t - interval '40 seconds', t - interval '30 seconds', t
        FROM (SELECT i, now() - {SPREAD} AS t FROM generate_series(1, %(rows)s) i) s""",
        """INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)
        SELECT 'q' || (i %% 8), 'succeeded', now() - interval '3 minutes',
               now() - interval '3 minutes', now() - interval '150 seconds',
               now() - (i * interval '120 milliseconds')
        FROM generate_series(1, 1000) i""",
        """INSERT INTO jobs (queue, status, created_at, run_at, started_at)
        SELECT 'q' || (i %% 8), (ARRAY['waiting','running','retrying','scheduled'])[1 + i %% 4],
               now() - (i %% 600) * interval '1 second', now() - (i %% 600) * interval '1 second',
               CASE WHEN i %% 4 = 1 THEN now() - interval '5 minutes' END
        FROM generate_series(1, 10000) i""",
    ],
    "indexes": [],  # examples/schema.sql already has them
    "table": "jobs",
    "source": {"table": "jobs", "columns": {
        "id": "id", "queue": "queue", "state": "status", "created_at": "created_at",
        "available_at": "run_at", "started_at": "started_at", "finished_at": "finished_at"}},
}

PGBOSS = {
    "fill": [
        f"""INSERT INTO pgboss.job (name, state, created_on, start_after, started_on,
                                    completed_on)
        SELECT 'q' || (i %% 8), CASE WHEN i %% 50 = 0 THEN 'failed' ELSE 'completed'
               END::pgboss.job_state,
               t - interval '40 seconds', t - interval '40 seconds', t - interval '30 seconds', t
        FROM (SELECT i, now() - {SPREAD} AS t FROM generate_series(1, %(rows)s) i) s""",
        """INSERT INTO pgboss.job (name, state, created_on, start_after, started_on, completed_on)
        SELECT 'q' || (i %% 8), 'completed', now() - interval '3 minutes',
               now() - interval '3 minutes', now() - interval '150 seconds',
               now() - (i * interval '120 milliseconds')
        FROM generate_series(1, 1000) i""",
        """INSERT INTO pgboss.job (name, state, created_on, start_after, started_on)
        SELECT 'q' || (i %% 8), (ARRAY['created','active','retry'])[1 + i %% 3]::pgboss.job_state,
               now() - (i %% 600) * interval '1 second', now() - (i %% 600) * interval '1 second',
               CASE WHEN i %% 3 = 1 THEN now() - interval '5 minutes' END
        FROM generate_series(1, 10000) i""",
    ],
    # what docs/exporter.md recommends for pg-boss
    "indexes": [
        "CREATE INDEX pipemon_job_active ON pgboss.job (name, state) WHERE state < 'completed'",
        "CREATE INDEX pipemon_job_completed_on ON pgboss.job (completed_on, id)"
        " WHERE completed_on IS NOT NULL",
        "CREATE INDEX pipemon_job_started_on ON pgboss.job (started_on, id)"
        " WHERE started_on IS NOT NULL",
    ],
    "table": "job",
    "source": {"preset": "pgboss"},
}


# pgqueuer keeps no finished job in its table: a finished job is three log rows (queued, picked,
# successful or exception) by the same job id.
PGQUEUER = {
    "fill": [
        f"""INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint)
        SELECT t + d.offset_, i, d.status::pgqueuer_status, 0, 'q' || (i %% 8)
        FROM (SELECT i, now() - {SPREAD} AS t FROM generate_series(1, %(rows)s) i) s,
             (VALUES (interval '-40 seconds', 'queued'), (interval '-30 seconds', 'picked'),
                     (interval '0 seconds', 'successful')) AS d(offset_, status)""",
        """INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint)
        SELECT now() - (i * interval '120 milliseconds') + d.offset_, %(rows)s + i,
               d.status::pgqueuer_status, 0, 'q' || (i %% 8)
        FROM generate_series(1, 1000) i,
             (VALUES (interval '-40 seconds', 'queued'), (interval '-30 seconds', 'picked'),
                     (interval '0 seconds', 'successful')) AS d(offset_, status)""",
        """INSERT INTO pgqueuer (priority, created, updated, heartbeat, execute_after, status,
                                 entrypoint, attempts)
        SELECT 0, now() - (i %% 600) * interval '1 second',
               now() - (i %% 600) * interval '1 second', now(),
               now() - (i %% 600) * interval '1 second',
               (ARRAY['queued','picked','queued'])[1 + i %% 3]::pgqueuer_status, 'q' || (i %% 8),
               CASE WHEN i %% 3 = 2 THEN 1 ELSE 0 END
        FROM generate_series(1, 10000) i""",
    ],
    "indexes": [],  # pgqueuer's own are enough (docs/queues.md)
    "table": "pgqueuer",
    "source": {"preset": "pgqueuer"},
}


# pgmq: 8 queues made by pgmq.create(); the finished history is the archives, the live
# messages the queue tables (visible, leased, delayed, and read again after a lease ended).
PGMQ_QUEUES = [f"q{i}" for i in range(8)]
PGMQ = {
    "fill": [
        f"""INSERT INTO pgmq.a_q{i} (msg_id, read_ct, enqueued_at, last_read_at, archived_at, vt,
                                    message)
        SELECT n, 1, t - interval '40 seconds', t - interval '30 seconds', t, t + interval '30 s',
               '{{}}'::jsonb
        FROM (SELECT n, now() - (%(rows)s::bigint - n) * (interval '30 days' / %(rows)s)
                     - interval '3 minutes' AS t
              FROM generate_series(1, %(rows)s) n WHERE n %% 8 = {i}) s"""
        for i in range(8)
    ] + [
        f"""INSERT INTO pgmq.a_q{i} (msg_id, read_ct, enqueued_at, last_read_at, archived_at, vt,
                                    message)
        SELECT %(rows)s + n, 1, now() - interval '3 minutes', now() - interval '150 seconds',
               now() - (n * interval '120 milliseconds'), now(), '{{}}'::jsonb
        FROM generate_series(1, 1000) n WHERE n %% 8 = {i}"""
        for i in range(8)
    ] + [
        f"""INSERT INTO pgmq.q_q{i} (read_ct, enqueued_at, last_read_at, vt, message)
        SELECT CASE WHEN n %% 4 IN (1, 3) THEN 1 ELSE 0 END,
               now() - (n %% 600) * interval '1 second',
               CASE WHEN n %% 4 IN (1, 3) THEN now() - interval '5 minutes' END,
               CASE n %% 4 WHEN 1 THEN now() + interval '10 minutes'
                           WHEN 2 THEN now() + interval '1 hour'
                           ELSE now() - (n %% 600) * interval '1 second' END, '{{}}'::jsonb
        FROM generate_series(1, 1250) n"""
        for i in range(8)
    ],
    "indexes": [],  # pgmq's own (vt, archived_at) are enough (docs/queues.md)
    "table": "q_q0",
    "source": {"preset": "pgmq"},
}


# Oban: timestamps are naive UTC (timezone('UTC', ...)); finished jobs stay until the pruner.
OBAN = {
    "fill": [
        f"""INSERT INTO oban_jobs (state, queue, worker, attempt, inserted_at, scheduled_at,
                                   attempted_at, completed_at, discarded_at)
        SELECT CASE WHEN i %% 50 = 0 THEN 'discarded' ELSE 'completed' END::oban_job_state,
               'q' || (i %% 8), 'Bench', 1, t - interval '40 seconds', t - interval '40 seconds',
               t - interval '30 seconds', CASE WHEN i %% 50 <> 0 THEN t END,
               CASE WHEN i %% 50 = 0 THEN t END
        FROM (SELECT i, timezone('UTC', now()) - {SPREAD} AS t
              FROM generate_series(1, %(rows)s) i) s""",
        """INSERT INTO oban_jobs (state, queue, worker, attempt, inserted_at, scheduled_at,
                                  attempted_at, completed_at)
        SELECT 'completed', 'q' || (i %% 8), 'Bench', 1, u - interval '3 minutes',
               u - interval '3 minutes', u - interval '150 seconds',
               u - (i * interval '120 milliseconds')
        FROM generate_series(1, 1000) i, LATERAL (SELECT timezone('UTC', now()) AS u) n""",
        """INSERT INTO oban_jobs (state, queue, worker, attempt, inserted_at, scheduled_at,
                                  attempted_at)
        SELECT (ARRAY['available','executing','retryable','scheduled'])[1 + i %% 4]
                   ::oban_job_state, 'q' || (i %% 8), 'Bench', CASE WHEN i %% 4 IN (1, 2)
                   THEN 1 ELSE 0 END,
               u - (i %% 600) * interval '1 second',
               CASE i %% 4 WHEN 3 THEN u + interval '1 hour'
                           ELSE u - (i %% 600) * interval '1 second' END,
               CASE WHEN i %% 4 IN (1, 2) THEN u - interval '5 minutes' END
        FROM generate_series(1, 10000) i, LATERAL (SELECT timezone('UTC', now()) AS u) n""",
    ],
    # what docs/queues.md recommends: Oban indexes everything else itself
    "indexes": ["CREATE INDEX pipemon_oban_jobs_attempted_at ON oban_jobs (attempted_at, id)"
                " WHERE attempted_at IS NOT NULL"],
    "table": "oban_jobs",
    "source": {"preset": "oban"},
}


# River: timestamptz; finished jobs stay until the cleaner (a day; discarded ones 7 days).
RIVER = {
    "fill": [
        f"""INSERT INTO river_job (state, queue, kind, max_attempts, attempt, created_at,
                                   scheduled_at, attempted_at, finalized_at, errors)
        SELECT CASE WHEN i %% 50 = 0 THEN 'discarded' ELSE 'completed' END::river_job_state,
               'q' || (i %% 8), 'bench', 25, 1, t - interval '40 seconds',
               t - interval '40 seconds', t - interval '30 seconds', t,
               CASE WHEN i %% 50 = 0 THEN ARRAY[jsonb_build_object('error', 'boom')] END
        FROM (SELECT i, now() - {SPREAD} AS t FROM generate_series(1, %(rows)s) i) s""",
        """INSERT INTO river_job (state, queue, kind, max_attempts, attempt, created_at,
                                  scheduled_at, attempted_at, finalized_at)
        SELECT 'completed', 'q' || (i %% 8), 'bench', 25, 1, now() - interval '3 minutes',
               now() - interval '3 minutes', now() - interval '150 seconds',
               now() - (i * interval '120 milliseconds')
        FROM generate_series(1, 1000) i""",
        """INSERT INTO river_job (state, queue, kind, max_attempts, attempt, created_at,
                                  scheduled_at, attempted_at)
        SELECT (ARRAY['available','running','retryable','scheduled'])[1 + i %% 4]
                   ::river_job_state, 'q' || (i %% 8), 'bench', 25,
               CASE WHEN i %% 4 IN (1, 2) THEN 1 ELSE 0 END,
               now() - (i %% 600) * interval '1 second',
               CASE i %% 4 WHEN 3 THEN now() + interval '1 hour'
                           ELSE now() - (i %% 600) * interval '1 second' END,
               CASE WHEN i %% 4 IN (1, 2) THEN now() - interval '5 minutes' END
        FROM generate_series(1, 10000) i""",
    ],
    # what docs/queues.md recommends: River indexes everything else itself
    "indexes": ["CREATE INDEX pipemon_river_job_attempted_at ON river_job (attempted_at, id)"
                " WHERE attempted_at IS NOT NULL"],
    "table": "river_job",
    "source": {"preset": "river"},
}


def prepare_river(dsn: str) -> None:
    """River's schema as the river preset's test makes it (testkit/river.py)."""
    from testkit import river

    with psycopg.connect(dsn, autocommit=True) as conn:
        river.install(conn)


def prepare_oban(dsn: str) -> None:
    """Oban's own schema, installed by oban-py from .venv-oban (`make install`)."""
    subprocess.run([str(ROOT / ".venv-oban" / "bin" / "python"),
                    str(ROOT / "tests" / "queues" / "oban" / "worker.py"), "install", dsn],
                   check=True, timeout=120)


def prepare_pgmq(dsn: str) -> None:
    from pgmq import install_pgmq_from_sql

    with psycopg.connect(dsn) as conn:
        install_pgmq_from_sql(conn=conn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in PGMQ_QUEUES:
            conn.execute("SELECT pgmq.create(%s)", (name,))


def prepare_pgqueuer(dsn: str) -> None:
    from pgqueuer.adapters.persistence.qb import QueryBuilderEnvironment

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(QueryBuilderEnvironment().build_install_query())


def prepare_pgboss(dsn: str) -> None:
    url = dsn_url(dsn)
    for command in ("setup",):
        subprocess.run(["node", "pgboss.mjs", url, command], cwd=NODE_DIR, check=True,
                       timeout=120)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(8):
            conn.execute("SELECT pgboss.create_queue(%s, '{}')", (f"q{i}",))


def dsn_url(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(dsn)
    return f"postgresql://{p.get('user', 'postgres')}@{p.get('host', '127.0.0.1')}:" \
           f"{p.get('port', 5432)}/{p['dbname']}"


def make_app(dsn: str, folder: Path, source: dict) -> App:
    config = {"name": "bench", "kind": "queue", "dsn": dsn, "timeout": "30s", "interval": "60s",
              "unmapped_check_interval": "0s", **source}
    path = folder / f"{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump({"sources": [config]}))
    return App(load(path), registry=CollectorRegistry())


def explain(conn, query, params: dict) -> tuple[int, int, int]:
    """(rows produced by scans, shared buffers touched, rows read by sequential scans of a job
    table: the planner seq-scans an empty partition, which costs nothing and counts 0)"""
    text = query.as_string(conn) if hasattr(query, "as_string") else query
    plan = "\n".join(r[0] for r in conn.execute(
        f"EXPLAIN (ANALYZE, BUFFERS) {text}", params).fetchall())
    buffers = re.search(r"Buffers: shared (?:hit=(\d+))?\s*(?:read=(\d+))?", plan)
    touched = sum(int(g) for g in buffers.groups() if g) if buffers else 0
    scanned = sum(int(n) for n in re.findall(
        r"(?:Scan|Scan Backward)[^\n]*actual time=[^ ]+ rows=(\d+)", plan))
    seq = 0
    for block in re.split(r"\n\s*->", plan):
        if re.search(r"Seq Scan on (jobs|job|pgqueuer_log|a_q\d|oban_jobs|river_job"
                     r"|j[0-9a-f]{56})\b", block):
            seq += sum(int(n) for n in re.findall(r" rows=(\d+) loops", block))
            seq += sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", block))
    return scanned, touched, seq


def bench(name: str, spec: dict, admin: str, rows: int, polls: int, folder: Path) -> None:
    db = f"pipemon_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    dsn = make_conninfo(admin, dbname=db)
    try:
        started = time.perf_counter()
        if name == "pgboss":
            prepare_pgboss(dsn)
        elif name == "pgqueuer":
            prepare_pgqueuer(dsn)
        elif name == "pgmq":
            prepare_pgmq(dsn)
        elif name == "oban":
            prepare_oban(dsn)
        elif name == "river":
            prepare_river(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            if "schema" in spec:
                conn.execute(spec["schema"])
            for statement in spec["fill"]:
                conn.execute(statement, {"rows": rows})
            for statement in spec["indexes"]:
                conn.execute(statement)
            conn.execute("ANALYZE")
            print(f"{name}: {rows:,} finished + 1,000 recent + 10,000 active jobs, built in "
                  f"{time.perf_counter() - started:.0f}s")
            app = make_app(dsn, folder, spec["source"])
            assert app.poll_all_once(), app.health()
            durations = []
            for _ in range(polls):
                t0 = time.perf_counter()
                assert app.poll_all_once(), app.health()
                durations.append(time.perf_counter() - t0)
            print(f"  poll: median {statistics.median(durations) * 1000:.2f} ms, "
                  f"max {max(durations) * 1000:.2f} ms over {polls} polls")
            preset = app.runners[0].source.preset
            since = conn.execute("SELECT now() - interval '2 minutes 15 seconds'").fetchone()[0]
            params = {**window_params(since, 5000, 0, {}), "stuck": 1800}
            shape = preset.shape()
            for label, query in (("active", preset.active_sql(*shape)),
                                 ("finished", preset.finished_sql(False, *shape)),
                                 ("started", preset.started_sql(False, *shape))):
                scanned, touched, seq = explain(conn, query, params)
                print(f"  {label:<9} rows scanned {scanned:>7,}  buffers {touched:>6,}  "
                      f"rows read by seq scans of the job table: {seq:,}")
            app.close()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--presets", default="generic,pgboss,pgqueuer,pgmq,oban,river")
    args = parser.parse_args()
    admin = os.environ.get("PIPEMON_BENCH_POSTGRES_DSN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
    folder = Path(tempfile.mkdtemp(prefix="pipemon-bench-"))
    specs = {"generic": GENERIC, "pgboss": PGBOSS, "pgqueuer": PGQUEUER, "pgmq": PGMQ, "oban": OBAN,
             "river": RIVER}
    for name in args.presets.split(","):
        bench(name, specs[name], admin, args.rows, args.polls, folder)


if __name__ == "__main__":
    main()
