"""`python -m bench.peers`: the command line and the run (see bench/peers/__init__.py)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import psycopg

import bench.peers
from bench.peers.data import Dataset, Writer, build, cluster_and_roles
from bench.peers.exporters import (
    EXPORTERS,
    PEER_VENV,
    SQL_EXPORTER,
    check_committed_configs,
    committed_configs,
    ensure_peer_venv,
    versions,
)
from bench.peers.measure import Result, Settings, explain_active, measure
from bench.peers.report import load_results, ms, problems, report, write_results
from testkit import ROOT

EXPLAINED: dict[str, dict] = {}  # dataset -> EXPLAIN ANALYZE of the active-jobs queries


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
    parser = argparse.ArgumentParser(prog="python -m bench.peers",
                                     description=bench.peers.__doc__.split("\n")[0])
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
    parser.add_argument("--accuracy-jobs", type=int, default=1000,
                        help="jobs per queue finished at once before the accuracy scrape")
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
                             single=not args.quick, accuracy=True,
                             accuracy_jobs=100 if args.quick else args.accuracy_jobs)
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
        ROOT / "bench" / "results" / f"peers-{meta['date']}")
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
