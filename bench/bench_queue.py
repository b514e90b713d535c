"""Benchmark: queue-source poll time on a large job table, and /metrics response time.

Builds a database with N finished jobs spread over 30 days (the last 2 minutes busy, as in
steady state the overlap window is re-read every poll), plus active jobs in every state, then
measures side by side in one run:
  * poll time of the generic queue source with the documented indexes, and without them;
  * the unmapped-state check (a loose index scan with the indexes, a full scan without);
  * /metrics latency through the real HTTP server.
Prints medians and p90s; see bench/README.md for recorded results.

    python -m bench.bench_queue [--rows 1000000] [--polls 30] [--scrapes 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import yaml
from prometheus_client import CollectorRegistry
from psycopg.conninfo import make_conninfo

from pipemon.app import App
from pipemon.config import load
from pipemon.server import HttpServer

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = (ROOT / "examples" / "schema.sql").read_text()
INDEXES = ("jobs_status_queue_idx", "jobs_finished_at_idx", "jobs_started_at_idx")


def fill(conn, rows: int, active: int) -> None:
    conn.execute(SCHEMA)
    conn.execute(
        """INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)
        SELECT 'q' || (i %% 8), CASE WHEN i %% 50 = 0 THEN 'failed' ELSE 'succeeded' END,
               t - interval '40 seconds', t - interval '40 seconds', t - interval '30 seconds', t
        FROM (SELECT i, now() - (i * (interval '30 days' / %(rows)s)) AS t
              FROM generate_series(1, %(rows)s) i) s""", {"rows": rows})
    # the busy recent past: what every steady-state poll re-reads (the overlap window)
    conn.execute(
        """INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)
        SELECT 'q' || (i % 8), 'succeeded', now() - interval '3 minutes',
               now() - interval '3 minutes', now() - interval '150 seconds',
               now() - (i * interval '120 milliseconds')
        FROM generate_series(1, 1000) i""")
    conn.execute(
        """INSERT INTO jobs (queue, status, created_at, run_at, started_at)
        SELECT 'q' || (i %% 8), (ARRAY['waiting','running','retrying','scheduled'])[1 + i %% 4],
               now() - (i %% 600) * interval '1 second', now() - (i %% 600) * interval '1 second',
               CASE WHEN i %% 4 = 1 THEN now() - interval '5 minutes' END
        FROM generate_series(1, %(n)s) i""", {"n": active})
    conn.execute("VACUUM ANALYZE jobs")


def make_app(dsn: str, folder: Path, **overrides) -> App:
    source = {
        "name": "stems", "kind": "queue", "dsn": dsn, "table": "jobs", "timeout": "30s",
        "interval": "60s",
        "columns": {"id": "id", "queue": "queue", "state": "status", "created_at": "created_at",
                    "available_at": "run_at", "started_at": "started_at",
                    "finished_at": "finished_at"},
        "unmapped_check_interval": "0s", **overrides,
    }
    path = folder / f"{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump({"sources": [source]}))
    return App(load(path), registry=CollectorRegistry())


def time_polls(app: App, polls: int) -> list[float]:
    assert app.poll_all_once(), app.health()  # first poll sets the watermark
    durations = []
    for _ in range(polls):
        started = time.perf_counter()
        assert app.poll_all_once(), app.health()
        durations.append(time.perf_counter() - started)
    return durations


def summary(label: str, values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return (f"{label:<44} median {statistics.median(values) * 1000:9.2f} ms"
            f"   p90 {p90 * 1000:9.2f} ms   n={len(values)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--active", type=int, default=10_000)
    parser.add_argument("--polls", type=int, default=30)
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    admin = os.environ.get("PIPEMON_BENCH_POSTGRES_DSN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"pipemon_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(admin, dbname=name)
    folder = Path(tempfile.mkdtemp(prefix="pipemon-bench-"))
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            fill(conn, args.rows, args.active)
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('jobs'))"
                                ).fetchone()[0]
            print(f"table: {args.rows:,} finished + 1,000 recent + {args.active:,} active jobs,"
                  f" {size}, built in {time.perf_counter() - started:.0f}s")

            results = {}
            results["poll, with indexes"] = time_polls(make_app(dsn, folder), args.polls)
            unmapped = make_app(dsn, folder, unmapped_check_interval="1ms")
            results["poll + unmapped-state check (every 5m)"] = time_polls(unmapped, args.polls)

            app = make_app(dsn, folder)
            app.poll_all_once()
            server = HttpServer.of(app, "127.0.0.1", 0)
            server.start()
            url = f"http://127.0.0.1:{server.port}/metrics"
            scrapes, size_bytes = [], 0
            for _ in range(args.scrapes):
                started = time.perf_counter()
                with urllib.request.urlopen(url, timeout=10) as response:
                    size_bytes = len(response.read())
                scrapes.append(time.perf_counter() - started)
            server.stop()
            results[f"/metrics ({size_bytes:,} bytes)"] = scrapes

            for index in INDEXES:
                conn.execute(f"DROP INDEX {index}")
            results["poll, without the indexes"] = time_polls(make_app(dsn, folder),
                                                              max(5, args.polls // 3))
        for label, values in results.items():
            print(summary(label, values))
        with_idx = statistics.median(results["poll, with indexes"])
        without = statistics.median(results["poll, without the indexes"])
        print(f"ratio without/with indexes: {without / with_idx:.0f}x")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
