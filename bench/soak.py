"""Soak: the real exporter polling every second against a changing database, for a long time.

A writer enqueues, starts and finishes jobs in 8 queues (a few fail) and writes analysis rows;
the exporter (`pipemon serve`, queue + analysis + checks sources, 1 s interval) is scraped every
5 s. Every 10 s the exporter's RSS and open file descriptors are read from /proc and written to
a CSV; at the end the first and last ten minutes are compared.

    python -m bench.soak --minutes 30 --out bench/results/soak.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from testkit import ROOT
from testkit.processes import Exporter

SCHEMA = (ROOT / "examples" / "schema.sql").read_text()


def rss_and_fds(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines()
                  if line.startswith("VmRSS:"))
    return rss_kb * 1024, len(os.listdir(f"/proc/{pid}/fd"))


def writer(dsn: str, stop: threading.Event) -> None:
    """Jobs flowing: ~20 enqueued, started and finished per second, 1 in 20 failing."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            conn.execute("INSERT INTO jobs (queue, status) SELECT 'q' || (i % 8), 'waiting'"
                         " FROM generate_series(1, 20) i")
            conn.execute("UPDATE jobs SET status = 'running', started_at = now() WHERE id IN"
                         " (SELECT id FROM jobs WHERE status = 'waiting' LIMIT 20)")
            conn.execute("UPDATE jobs SET finished_at = now(), status = CASE WHEN id % 20 = 0"
                         " THEN 'failed' ELSE 'succeeded' END WHERE id IN (SELECT id FROM jobs"
                         " WHERE status = 'running' AND started_at < now() - interval '1 second'"
                         " LIMIT 20)")
            conn.execute("INSERT INTO audio_events_cache (track_id, timeline, processing_ms)"
                         " SELECT i, CASE WHEN i % 10 = 0 THEN NULL ELSE '[]'::jsonb END, 500 + i"
                         " FROM generate_series(1, 5) i")
            stop.wait(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.csv"))
    args = parser.parse_args()
    admin = os.environ.get("PIPEMON_BENCH_POSTGRES_DSN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
    db = f"pipemon_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    dsn = make_conninfo(admin, dbname=db)
    folder = Path(tempfile.mkdtemp(prefix="pipemon-soak-"))
    stop = threading.Event()
    exporter = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        columns = {"id": "id", "queue": "queue", "state": "status", "created_at": "created_at",
                   "available_at": "run_at", "started_at": "started_at",
                   "finished_at": "finished_at"}
        sources = [
            {"name": "jobs", "kind": "queue", "dsn": dsn, "table": "jobs", "columns": columns,
             "unmapped_check_interval": "10s"},
            {"name": "analysis", "kind": "analysis", "dsn": dsn,
             "duration_seconds": "processing_ms / 1000.0"},
            {"name": "integrity", "kind": "checks", "dsn": dsn, "checks": [
                {"name": "failed_jobs", "sql": "SELECT queue, count(*) AS value FROM jobs"
                 " WHERE status = 'failed' GROUP BY queue"}]},
        ]
        # `pipemon serve` (its log in the temp dir), waited for before measuring it
        exporter = Exporter(folder, sources, ["--log.level", "warning"],
                            defaults={"interval": "1s", "timeout": "1s"}).start()
        thread = threading.Thread(target=writer, args=(dsn, stop), daemon=True)
        thread.start()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        end = started + args.minutes * 60
        rows = []
        scrape_errors = 0
        next_sample = started
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"{exporter.url}/metrics", timeout=5) as r:
                    r.read()
            except OSError:
                scrape_errors += 1
            if time.monotonic() >= next_sample:
                rss, fds = rss_and_fds(exporter.proc.pid)
                rows.append((round(time.monotonic() - started), rss, fds))
                next_sample += 10
            time.sleep(5)  # a scraper's pace, not a wait for a condition
        with open(out, "w", newline="") as fh:
            csv.writer(fh).writerows([("seconds", "rss_bytes", "open_fds"), *rows])
        window = max(1, len(rows) // 3)
        first, last = rows[:window], rows[-window:]
        print(f"soak: {args.minutes:g} min, {len(rows)} samples, scrape errors {scrape_errors}")
        for label, index in (("RSS MiB", 1), ("open fds", 2)):
            scale = 1 / 2**20 if index == 1 else 1
            head = statistics.median(r[index] for r in first) * scale
            tail = statistics.median(r[index] for r in last) * scale
            print(f"  {label}: first third median {head:.1f}, last third median {tail:.1f},"
                  f" max {max(r[index] for r in rows) * scale:.1f}")
        print(f"  curve: {out}")
    finally:
        stop.set()
        if exporter is not None:
            exporter.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
