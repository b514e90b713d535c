"""Measuring one exporter on one dataset: database time per cycle from pg_stat_statements
(snapshot at the midpoint between cycles), CPU and peak RSS from /proc, /metrics latency under
scrapers with Prometheus's headers, and accuracy (bench.peers.accuracy)."""

from __future__ import annotations

import gzip
import http.client
import itertools
import math
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench.peers.accuracy import metric_total, parse, peer_accuracy, pipemon_accuracy
from bench.peers.data import Dataset, Writer
from bench.peers.exporters import QUERIES, Contender, pipemon_config, start, tail
from testkit.net import http_request, wait_until

UNMAPPED_CHECK_INTERVAL = 300.0  # pipemon's default unmapped_check_interval (5m)
# What Prometheus 2.42 (Debian 12) sends with every scrape.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
}
PLAIN_HEADERS = {"Accept": "text/plain"}


def scrape_text(url: str) -> str:
    status, body = http_request(url + "/metrics", PLAIN_HEADERS, timeout=60)
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


def load(url: str, scrapers: int, seconds: float, pace: float | None = None,
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
                status, _ = http_request(url + "/metrics", PROMETHEUS_HEADERS, timeout=30)
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


class Scraper(threading.Thread):
    """One scrape per interval with Prometheus's headers, as a Prometheus would (it drives
    on-scrape exporters); lighter than testkit's real Prometheus, and counts its failures.
    For pipemon it also notes the poll time its sources have spent so far, from the same
    scrape, so that measuring poll times adds no request to the CPU being measured."""

    def __init__(self, url: str, interval: float, poll_totals: bool = False):
        super().__init__(daemon=True, name="scraper")
        self.url, self.interval = url, interval
        self.stop = threading.Event()
        self.errors = 0
        self.poll_totals: list[tuple[float, float]] | None = [] if poll_totals else None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                _status, body = http_request(self.url + "/metrics", PROMETHEUS_HEADERS,
                                             timeout=60)
                if self.poll_totals is not None:
                    self.poll_totals.append((time.monotonic(), poll_seconds_total(body)))
            except (OSError, http.client.HTTPException):
                self.errors += 1
            self.stop.wait(self.interval)


def poll_seconds_total(body: bytes) -> float:
    """The sum of pipemon_source_poll_duration_seconds over its sources, from a scrape."""
    text = gzip.decompress(body).decode() if body[:2] == b"\x1f\x8b" else body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("pipemon_source_poll_duration_seconds_sum{"))


def poll_walls(totals: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """Poll time per scrape interval (both sources' polls of one cycle) within [start, end]."""
    inside = [total for at, total in totals if start <= at <= end]
    return [b - a for a, b in itertools.pairwise(inside) if b > a]


def wait_calls(stats: Stats, marker: str, target: int, timeout: float) -> float:
    """Wait until the marker statement has run `target` times; return when it was seen."""
    wait_until(lambda: stats.marker_calls(marker) >= target, timeout, f"cycle {target}",
               interval=0.2)
    return time.monotonic()


@dataclass
class Settings:
    interval: float
    cycles: int
    load_seconds: float
    paced: bool
    single: bool
    accuracy: bool
    accuracy_jobs: int = 1000  # per queue, finished at once before the accuracy scrape


@dataclass
class Result:
    exporter: str
    dataset: dict
    settings: dict
    values: dict = field(default_factory=dict)


def measure(exporter: Contender, ds: Dataset, admin: str, dsn: str, writer: Writer,
            settings: Settings, folder: Path, qe_exe: Path) -> Result:
    interval = settings.interval
    role_dsn = f"postgresql://{exporter.role}@127.0.0.1:{conninfo_port(dsn)}/{ds.name}"
    stats = Stats(admin, exporter.role)
    stats.reset()
    values: dict = {"mode": exporter.mode}
    is_pipemon = exporter.key == "pipemon"
    running = scraper = None
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        if is_pipemon and settings.accuracy:
            writer.pause()
        running = start(exporter, role_dsn, interval, ds, folder, qe_exe)
        scraper = Scraper(running.url, interval, poll_totals=is_pipemon)
        scraper.start()
        first_timeout = interval * 2 + 60
        seen = wait_calls(stats, exporter.marker, 1, first_timeout)
        if is_pipemon:
            running.wait_ready("/readyz", 60)  # both sources finished their first poll
        id_start = analysis_start = 0
        if is_pipemon and settings.accuracy:
            id_start = conn.execute("SELECT max(id) FROM jobs").fetchone()[0]
            analysis_start = conn.execute("SELECT max(id) FROM audio_events_cache").fetchone()[0]
            writer.resume()
        time.sleep(max(0.0, seen + interval / 2 - time.monotonic()))
        snapshots = [stats.snapshot()]
        calls0 = stats.marker_calls(exporter.marker)
        cpu0, wall0 = cpu_seconds(running.proc.pid), time.monotonic()
        walls: list[float] = []
        for k in range(1, settings.cycles + 1):
            seen = wait_calls(stats, exporter.marker, calls0 + k, interval * 3 + 60)
            time.sleep(max(0.0, seen + interval / 2 - time.monotonic()))
            snapshots.append(stats.snapshot())
        cpu1, wall1 = cpu_seconds(running.proc.pid), time.monotonic()
        if is_pipemon:
            walls = poll_walls(scraper.poll_totals, wall0, wall1)
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
        if settings.accuracy and not is_pipemon:
            values["accuracy"] = peer_accuracy(conn, scrape_text(running.url), exporter)
        scraper.stop.set()
        scraper.join()
        values["prometheus_scrape_errors"] = scraper.errors
        text = scrape_text(running.url)
        families = parse(text)
        values["series"] = sum(len(f.samples) for f in families)
        values["bytes"] = len(text.encode())
        _status, body = http_request(running.url + "/metrics", PROMETHEUS_HEADERS, timeout=10)
        values["bytes_scraped"] = len(body)
        values["bytes_plain_gzip"] = len(gzip.compress(text.encode()))
        if is_pipemon:
            values["poll_errors"] = metric_total(families, "pipemon_source_poll_errors_total")
        values["load"] = {}
        if settings.single:
            values["load"]["1"] = load(running.url, 1, settings.load_seconds / 3)
        values["load"]["10"] = load(running.url, 10, settings.load_seconds)
        if settings.paced:
            values["load"]["10 paced"] = load(running.url, 10, settings.load_seconds, pace=1.0)
            values["load"]["10 aligned"] = load(running.url, 10, settings.load_seconds,
                                                pace=1.0, aligned=True)
        values["rss_hwm_mib"] = proc_status(running.proc.pid, "VmHWM") / 2**20
        values["rss_mib"] = proc_status(running.proc.pid, "VmRSS") / 2**20
        if is_pipemon and settings.accuracy:
            # Last: the burst of jobs it reads (1,000 per queue in one poll) is not the steady
            # state the numbers above describe.
            writer.pause()
            writer.burst(settings.accuracy_jobs)
            id_end = conn.execute("SELECT max(id) FROM jobs").fetchone()[0]
            analysis_end = conn.execute("SELECT max(id) FROM audio_events_cache").fetchone()[0]
            calls = stats.marker_calls(exporter.marker)
            seen = wait_calls(stats, exporter.marker, calls + 2, interval * 4 + 60)
            time.sleep(max(0.0, seen + interval / 2 - time.monotonic()))
            values["accuracy"] = pipemon_accuracy(conn, scrape_text(running.url),
                                                  (id_start, id_end),
                                                  (analysis_start, analysis_end))
            values["rss_hwm_after_burst_mib"] = proc_status(running.proc.pid, "VmHWM") / 2**20
            writer.resume()
        if running.proc.poll() is not None:
            raise RuntimeError(f"{exporter.title} exited: {tail(running)}")
    finally:
        if scraper is not None:
            scraper.stop.set()
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


def explain_active(dsn: str, ds: Dataset, folder: Path) -> dict:
    """EXPLAIN ANALYZE of pipemon's active-jobs query and of the peers' one, on this data."""
    from testkit.app import build_app  # imports pipemon, which --report does not need

    config = pipemon_config(dsn, 15, ds.queues)
    workdir = folder / f"explain-{ds.name}"
    workdir.mkdir(parents=True, exist_ok=True)
    app = build_app(workdir, config["sources"], defaults=config["defaults"])
    try:
        pipemon_sql = app.runners[0].source.preset.active_sql()
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
