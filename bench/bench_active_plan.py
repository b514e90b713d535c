"""Benchmark: the generic preset's active-jobs query before and after the covering index (issue 19).

The data of `python -m bench.peers` (bench/peers/data.py: examples/schema.sql, N finished jobs
over 30 days, 10,000 active jobs in 12 queues, a quarter per state and 250 stuck, VACUUM ANALYZE,
and a writer finishing jobs at the history's rate) in a throwaway cluster with
pg_stat_statements. Then, side by side on that data:

1. EXPLAIN (ANALYZE, BUFFERS) of the active-jobs query before (the query of commit dc94f03,
   without `jobs_active_idx`) and after (the current query, with it);
2. per-query execution time, the median of `--runs` rounds, each round running every variant
   once, `--pause` seconds apart (EXPLAIN (ANALYZE, TIMING OFF)'s Execution Time): pipemon's
   query before, after, and after without the index; the peers' three gauge queries
   (bench/peers/queries.yaml) without and with the index; the incremental reads (the
   late-commit window) with the recommended (time, id) indexes and with covering ones;
3. DB time per poll: pipemon's real poll (both sources, as in bench.peers) and the peers' seven
   queries, `--cycles` times, from pg_stat_statements (one role each), before and after;
4. the same per-query times once every active job has changed since the last vacuum (the
   visibility map cleared, as on a busy job table between autovacuums).

    python -m bench.bench_active_plan [--rows 10000000] [--runs 50] [--cycles 30]

Prints markdown; bench/results/active-plan-2026-12-01.md is one run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench.peers.data import Dataset, Writer, build, cluster_and_roles
from bench.peers.exporters import QUERIES, pipemon_config
from bench.peers.measure import Stats
from testkit.app import build_app
from testkit.before_active import before_active_sql

PIPEMON, PEERS = "bench_pipemon", "bench_peers"
ACTIVE_INDEX = "jobs_active_idx"
PEER_GAUGES = ("jobs_active", "job_oldest_waiting_seconds", "jobs_stuck")
# Covering versions of the incremental reads' indexes, tried against the recommended ones.
COVERING = {
    "jobs_finished_cover_idx": "CREATE INDEX jobs_finished_cover_idx ON jobs (finished_at, id)"
                               " INCLUDE (queue, status, started_at)",
    "jobs_started_cover_idx": "CREATE INDEX jobs_started_cover_idx ON jobs (started_at, id)"
                              " INCLUDE (queue, created_at, run_at)",
}
PLAIN = ("jobs_finished_at_idx", "jobs_started_at_idx")


@contextmanager
def without(conn: psycopg.Connection, *indexes: str):
    """A transaction in which `indexes` do not exist (rolled back: they are not rebuilt)."""
    with conn.transaction(force_rollback=True):
        for index in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
        yield


def window(conn) -> dict:
    """A steady-state poll's incremental read: the late-commit window (2 min) and 15 s."""
    since = conn.execute("SELECT now() - interval '135 seconds'").fetchone()[0]
    return {"since": since, "limit": 5000, "id_floor": None}


def execution_ms(conn, query, params) -> float:
    plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) ") + query,
                        params).fetchone()[0]
    return plan[0]["Execution Time"]


def medians(conn, variants: dict, runs: int, pause: float) -> dict[str, float]:
    """variant -> (dropped indexes, query, params or a function of the connection giving
    them): median execution ms, round-robin."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(runs + 1):
        for name, (dropped, query, params) in variants.items():
            time.sleep(pause)
            with without(conn, *dropped):
                ms = execution_ms(conn, query, params(conn) if callable(params) else params)
            if round_:  # the first round warms up
                times[name].append(ms)
    return {name: statistics.median(values) for name, values in times.items()}


def plan_text(conn, query, params, dropped=()) -> str:
    params = params(conn) if callable(params) else params
    with without(conn, *dropped):
        for _ in range(3):
            conn.execute(query, params)
        return "\n".join(r[0] for r in conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + query, params))


def one_line(plan: str) -> str:
    """The scan of the job table and the execution time of a plan, on one line."""
    scans = [line.strip().removeprefix("->  ").split("  (")[0] for line in plan.splitlines()
             if " on jobs" in line]
    buffers = next((line.strip() for line in plan.splitlines() if "Buffers: shared" in line), "")
    heap = next((line.strip() for line in plan.splitlines() if "Heap Fetches" in line), "")
    total = next(line for line in plan.splitlines() if "Execution Time" in line).strip()
    return "; ".join(x for x in (", ".join(scans), heap, buffers, total) if x)


def poll_ms(admin: str, dsn: str, app_dsn: str, peers_dsn: str, cycles: int, pause: float,
            before: bool, folder: Path) -> dict[str, object]:
    """DB time per cycle (median) of pipemon's poll and of the peers' seven queries, and
    pipemon's per-statement means, from pg_stat_statements."""
    config = pipemon_config(app_dsn, 15, 12)
    config["sources"][0]["unmapped_check_interval"] = "0s"  # 0.14 ms every 5 m: bench.peers
    workdir = folder / ("before" if before else "after")
    workdir.mkdir()
    app = build_app(workdir, config["sources"], defaults=config["defaults"])
    preset = app.runners[0].source.preset
    if before:
        preset.active_sql = lambda: before_active_sql(preset)
    admin_conn = psycopg.connect(dsn, autocommit=True)
    if before:
        admin_conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(ACTIVE_INDEX)))
    stats = {role: Stats(admin, role) for role in (PIPEMON, PEERS)}
    peers = psycopg.connect(peers_dsn, autocommit=True)
    peers.execute("SET jit = off")  # as pipemon's sessions: the comparison is of the plans
    try:
        # Polls every 5 s until the incremental reads re-read a whole late-commit window, as
        # they do once pipemon has run for longer than it.
        warm_until = time.monotonic() + 135
        while time.monotonic() < warm_until:
            assert app.poll_all_once(), app.health()
            for q in QUERIES:
                peers.execute(q["sql"]).fetchall()
            time.sleep(5)
        for s in stats.values():
            s.reset()
        per_cycle: dict[str, list[float]] = {PIPEMON: [], PEERS: []}
        for _ in range(cycles):
            for role, run in ((PIPEMON, app.poll_all_once),
                              (PEERS, lambda: [peers.execute(q["sql"]).fetchall()
                                               for q in QUERIES])):
                time.sleep(pause)
                start = sum(v[1] for v in stats[role].snapshot().values())
                run()
                per_cycle[role].append(sum(v[1] for v in stats[role].snapshot().values())
                                       - start)
        statements = sorted(((v[1] / v[0], v[0] / cycles, " ".join(v[3].split())[:70])
                             for v in stats[PIPEMON].snapshot().values()), reverse=True)
        return {"pipemon": statistics.median(per_cycle[PIPEMON]),
                "peers": statistics.median(per_cycle[PEERS]), "statements": statements}
    finally:
        if before:
            admin_conn.execute(next(s for s in schema_indexes() if ACTIVE_INDEX in s))
        app.close()
        peers.close()
        admin_conn.close()
        for s in stats.values():
            s.close()


def schema_indexes() -> list[str]:
    from bench.peers.data import split_schema

    return split_schema()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--queues", type=int, default=12)
    parser.add_argument("--runs", type=int, default=50, help="executions per query variant")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between executions")
    parser.add_argument("--cycles", type=int, default=30, help="polls measured, before and after")
    args = parser.parse_args()
    ds = Dataset(args.rows, args.queues)
    folder = Path(tempfile.mkdtemp(prefix="pipemon-bench-active-"))
    with cluster_and_roles([PIPEMON, PEERS]) as admin:
        dsn = build(admin, ds, [PIPEMON, PEERS])
        writer = Writer(dsn, ds, None)
        writer.start()
        try:
            run(args, admin, dsn, ds, folder)
        finally:
            writer.stop.set()
            writer.join(timeout=30)
        if writer.error is not None:
            raise RuntimeError(f"writer failed: {writer.error}")
    shutil.rmtree(folder, ignore_errors=True)


def run(args, admin: str, dsn: str, ds: Dataset, folder: Path) -> None:
    time.sleep(5)  # the writer fills the gap since the history ended
    app = build_app(folder, pipemon_config(dsn, 15, ds.queues)["sources"])
    preset = app.runners[0].source.preset
    app.close()
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET jit = off")  # as pipemon's sessions
    stuck = {"stuck": 1800.0}
    before, after = before_active_sql(preset), preset.active_sql()
    print(f"# Active-jobs query: {ds.label()}, {ds.active:,} active jobs\n")

    print("## Plans (EXPLAIN (ANALYZE, BUFFERS), warm)\n")
    for title, query, dropped in (("Before: the query of dc94f03, without " + ACTIVE_INDEX,
                                   before, (ACTIVE_INDEX,)),
                                  ("After: the current query, with " + ACTIVE_INDEX, after, ()),
                                  ("After, without " + ACTIVE_INDEX, after, (ACTIVE_INDEX,))):
        print(f"### {title}\n\n```\n{plan_text(conn, query, stuck, dropped)}\n```\n")

    print(f"## Per query: median execution ms of {args.runs} rounds, {args.pause:g} s apart\n")
    peer = {q["name"]: sql.SQL(q["sql"]) for q in QUERIES if q["name"] in PEER_GAUGES}
    variants = {
        "pipemon active, before (dc94f03, no jobs_active_idx)": ((ACTIVE_INDEX,), before, stuck),
        "pipemon active, after (with jobs_active_idx)": ((), after, stuck),
        "pipemon active, after, without jobs_active_idx": ((ACTIVE_INDEX,), after, stuck),
        **{f"peers {name}, without jobs_active_idx": ((ACTIVE_INDEX,), q, None)
           for name, q in peer.items()},
        **{f"peers {name}, with jobs_active_idx": ((), q, None) for name, q in peer.items()},
    }
    table(medians(conn, variants, args.runs, args.pause))
    for statement in COVERING.values():
        conn.execute(statement)  # no VACUUM: the window's rows are as new as on a live table
    incremental = {
        "pipemon finished (late-commit window), (finished_at, id)":
            (tuple(COVERING), preset.finished_sql(False), window),
        "pipemon finished, covering (finished_at, id) INCLUDE (queue, status, started_at)":
            (PLAIN, preset.finished_sql(False), window),
        "pipemon started (late-commit window), (started_at, id)":
            (tuple(COVERING), preset.started_sql(False), window),
        "pipemon started, covering (started_at, id) INCLUDE (queue, created_at, run_at)":
            (PLAIN, preset.started_sql(False), window),
    }
    table(medians(conn, incremental, args.runs, args.pause))
    for variant, (dropped, query, params) in incremental.items():
        print(f"- {variant}: {one_line(plan_text(conn, query, params, dropped))}")
    for index in COVERING:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))

    print(f"\n## Per poll: median DB ms of {args.cycles} cycles (pg_stat_statements)\n")
    role_dsn = {role: make_conninfo(dsn, user=role) for role in (PIPEMON, PEERS)}
    print("| | pipemon | peers (7 queries) | peers ÷ pipemon |\n|---|---|---|---|")
    found = {}
    for label, is_before in (("before", True), ("after", False)):
        found[label] = poll_ms(admin, dsn, role_dsn[PIPEMON], role_dsn[PEERS], args.cycles,
                               args.pause, is_before, folder)
        r = found[label]
        print(f"| {label} | {r['pipemon']:.2f} | {r['peers']:.2f} |"
              f" {r['peers'] / r['pipemon']:.1f}x |")
    for label, r in found.items():
        print(f"\npipemon's statements, {label} (mean ms, calls per poll):\n")
        for mean, calls, text in r["statements"]:
            print(f"- {mean:.3f} ms x {calls:g}: `{text}`")

    print("\n## Every active job changed since the last vacuum (visibility map cleared)\n")
    conn.execute("UPDATE jobs SET attempts = attempts + 1 WHERE finished_at IS NULL")
    print(f"- before: {one_line(plan_text(conn, before, stuck, (ACTIVE_INDEX,)))}")
    print(f"- after: {one_line(plan_text(conn, after, stuck))}\n")
    table(medians(conn, {k: v for k, v in variants.items() if k.startswith("pipemon")},
                  args.runs, args.pause))
    conn.close()


def table(found: dict[str, float]) -> None:
    print("| query | median ms |\n|---|---|")
    for name, ms in found.items():
        print(f"| {name} | {ms:.3f} |")
    print()


if __name__ == "__main__":
    main()
