"""Benchmark: resident memory of `pipemon serve` per config shape (issue 19).

Each shape runs as the real exporter process against real services on loopback: the bench's
job table (bench/peers/data.py: 100,000 finished and 10,000 active jobs in 12 queues, analysis
rows) in a throwaway database, moto's S3 server, testkit's Trigger.dev stand-in and host tools.
Per shape: start, 10 polls at 1 s, then 10 scrapers back to back for 10 s (what the peers
bench's load test does); then VmHWM (peak RSS) and VmRSS from /proc.

`--before REV` runs the same shapes with the exporter of git revision REV as well (a temporary
worktree on PYTHONPATH), side by side in one run.

    python -m bench.bench_memory [--before dc94f03] [--out bench/results/memory-<date>.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
from datetime import date
from pathlib import Path

import psycopg

from bench.peers.data import Dataset, build
from bench.peers.exporters import pipemon_config
from bench.peers.measure import load, proc_status
from testkit import ROOT
from testkit.fake_trigger import FakeTrigger
from testkit.net import http_request, wait_until
from testkit.processes import Exporter
from testkit.s3 import BUCKET, Moto, s3_client

ADMIN = os.environ.get("PIPEMON_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TRIGGER_KEY = "tr_dev_bench"
SHAPES = {
    "queue": ("queue",),
    "queue + analysis": ("queue", "analysis"),
    "queue + storage": ("queue", "storage"),
    "all kinds": ("queue", "analysis", "checks", "storage", "host", "trigger_dev"),
}


def sources(kinds: tuple[str, ...], dsn: str, s3_url: str, trigger_url: str,
            scratch: Path) -> list[dict]:
    by_name = {s["kind"]: s for s in pipemon_config(dsn, 1, 12)["sources"]}
    # The queue source as a user's config starts: without the peers bench's exact_quantiles
    # (which --before revisions do not know).
    queue = {k: v for k, v in by_name["queue"].items() if k != "exact_quantiles"}
    made = {
        "queue": queue,
        "analysis": by_name["analysis"],
        "checks": {"name": "integrity", "kind": "checks", "dsn": dsn, "checks": [
            {"name": "stuck", "sql": "SELECT count(*) AS value FROM jobs"
             " WHERE status = 'running' AND started_at < now() - interval '30 minutes'"},
            {"name": "by_queue", "sql": "SELECT queue, count(*) AS value FROM jobs"
             " WHERE status = 'waiting' GROUP BY queue"}]},
        "storage": {"name": "r2", "kind": "storage", "endpoint_url": s3_url, "bucket": BUCKET,
                    "access_key_id": "test-key", "secret_access_key": "test-secret",
                    "inventory": {"prefixes": ["stems/"], "interval": "10s"}},
        "host": {"name": "worker", "kind": "host", "tools": [
            {"name": "ffmpeg", "command": ["sh", "-c", "echo ffmpeg version 6.0"],
             "role": "transcoder"}], "scratch": [{"path": str(scratch)}]},
        "trigger_dev": {"name": "trigger", "kind": "trigger_dev", "base_url": trigger_url,
                        "secret_key": TRIGGER_KEY},
    }
    return [made[kind] for kind in kinds]


def measure(workdir: Path, config: list[dict], env: dict[str, str]) -> dict:
    exporter = Exporter(workdir, config, ["--log.level", "warning"], env=env,
                        defaults={"interval": "1s", "timeout": "1s"}).start(timeout=60)
    try:
        pid = exporter.proc.pid
        polls = "pipemon_source_poll_duration_seconds_count"
        wait_until(lambda: _min_count(exporter.url, polls) >= 10, 60, "10 polls of every source")
        rss_idle = proc_status(pid, "VmRSS") / 2**20
        scraped = load(exporter.url, 10, 10)  # what the peers bench's load test does
        if scraped["errors"]:
            raise RuntimeError(f"{scraped['errors']} scrapes failed: {scraped['first_error']}")
        _, body = http_request(exporter.url + "/metrics", {}, timeout=30)
        series = sum(1 for line in body.decode().splitlines() if line and line[0] != "#")
        return {"hwm": proc_status(pid, "VmHWM") / 2**20, "idle": rss_idle,
                "rss": proc_status(pid, "VmRSS") / 2**20, "series": series, "scrapes": scraped["n"]}
    finally:
        exporter.stop()


def _min_count(url: str, name: str) -> float:
    _, body = http_request(url + "/metrics", {}, timeout=10)
    counts = [float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
              if line.startswith(name + "{")]
    return min(counts, default=0.0)


def worktree(rev: str, folder: Path) -> Path:
    path = folder / f"pipemon-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_memory",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="also measure the exporter of this git revision")
    parser.add_argument("--runs", type=int, default=3, help="runs per shape (median reported)")
    parser.add_argument("--out", help="write the table to this markdown file too")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="pipemon-memory-"))
    versions = {"now": {}}
    if args.before:
        versions[args.before] = {"PYTHONPATH": str(worktree(args.before, folder) / "exporter")}
    ds = Dataset(100_000, 12)
    dsn = build(ADMIN, ds, [])
    moto, trigger = Moto(), FakeTrigger(TRIGGER_KEY).start()
    moto.start()
    s3_client(moto.url).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "auto"})
    scratch = folder / "scratch"
    scratch.mkdir()
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for run in range(args.runs):
            for shape, kinds in SHAPES.items():
                config = sources(kinds, dsn, moto.url, trigger.url, scratch)
                for version, env in versions.items():  # side by side: alternate versions
                    work = folder / f"{version}-{shape.replace(' ', '')}-{run}"
                    result = measure(work, config, env)
                    results.setdefault((shape, version), []).append(result)
                    print(f"{shape:18} {version:8} peak {result['hwm']:5.1f} MiB,"
                          f" idle {result['idle']:5.1f} MiB, {result['series']:,} series",
                          flush=True)
    finally:
        moto.stop()
        trigger.stop()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{ds.name}" WITH (FORCE)')
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(folder / f"pipemon-{args.before}")], check=False)
        shutil.rmtree(folder, ignore_errors=True)

    text = table(results, list(versions), args.runs)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(f"# bench_memory, {date.today().isoformat()}\n\n{text}")
    return 0


def table(results: dict, versions: list[str], runs: int) -> str:
    head = " | ".join(f"{v}: peak (idle) MiB, series" for v in versions)
    lines = [f"Median of {runs} runs per cell; peak = VmHWM after 10 scrapers for 10 s.", "",
             f"| config | {head} |", "|---|" + "---|" * len(versions)]
    for shape in SHAPES:
        cells = []
        for version in versions:
            got = results[(shape, version)]
            cells.append(f"{statistics.median(r['hwm'] for r in got):.1f}"
                         f" ({statistics.median(r['idle'] for r in got):.1f}),"
                         f" {got[0]['series']:,}")
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
