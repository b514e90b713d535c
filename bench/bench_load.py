"""Load: N concurrent scrapers hammer /metrics for a while, as sources poll every second.

Starts the real exporter (queue with 8 queues and jobs moving, analysis, checks) against a
throwaway database, then N threads scrape /metrics back to back for `--seconds`. Reports
requests, errors, latency p50/p99/max and the exporter's RSS before and after. The scrapers
run on the same 2-core machine as the exporter, so these numbers are a floor, not a ceiling.

    python -m bench.bench_load --scrapers 50 --seconds 60
"""

from __future__ import annotations

import argparse
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

from bench.soak import SCHEMA, rss_and_fds, writer
from testkit.processes import Exporter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    admin = os.environ.get("PIPEMON_BENCH_POSTGRES_DSN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
    db = f"pipemon_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    dsn = make_conninfo(admin, dbname=db)
    stop = threading.Event()
    exporter = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        folder = Path(tempfile.mkdtemp(prefix="pipemon-load-"))
        columns = {"id": "id", "queue": "queue", "state": "status", "created_at": "created_at",
                   "available_at": "run_at", "started_at": "started_at",
                   "finished_at": "finished_at"}
        sources = [
            {"name": "jobs", "kind": "queue", "dsn": dsn, "table": "jobs", "columns": columns},
            {"name": "analysis", "kind": "analysis", "dsn": dsn},
        ]
        threading.Thread(target=writer, args=(dsn, stop), daemon=True).start()
        # `pipemon serve` (its log in the temp dir), waited for before measuring it
        exporter = Exporter(folder, sources, ["--log.level", "warning"],
                            defaults={"interval": "1s", "timeout": "1s"}).start()
        url = f"{exporter.url}/metrics"
        time.sleep(5)  # let every queue appear and the series count settle before measuring
        rss_before, fds_before = rss_and_fds(exporter.proc.pid)
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        end = time.monotonic() + args.seconds

        def scrape() -> None:
            mine, failed = [], []
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(url, timeout=10) as response:
                        response.read()
                    mine.append(time.perf_counter() - started)
                except OSError as err:
                    failed.append(str(err))
            with lock:
                latencies.extend(mine)
                errors.extend(failed)

        scrapers = [threading.Thread(target=scrape) for _ in range(args.scrapers)]
        for thread in scrapers:
            thread.start()
        for thread in scrapers:
            thread.join()
        rss_after, fds_after = rss_and_fds(exporter.proc.pid)
        ordered = sorted(latencies)
        p99 = ordered[int(len(ordered) * 0.99)] if ordered else float("nan")
        with urllib.request.urlopen(url, timeout=10) as response:
            size = len(response.read())
        print(f"{args.scrapers} scrapers for {args.seconds:g}s against a {size:,}-byte /metrics:"
              f" {len(latencies):,} scrapes ({len(latencies) / args.seconds:.0f}/s),"
              f" {len(errors)} errors")
        print(f"  latency median {statistics.median(ordered) * 1000:.1f} ms,"
              f" p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms")
        print(f"  exporter RSS {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB"
              f" after; open fds {fds_before} before, {fds_after} after")
        if errors:
            print(f"  first error: {errors[0]}")
    finally:
        stop.set()
        if exporter is not None:
            exporter.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
