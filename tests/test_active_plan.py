"""The generic preset's active-jobs query (read from a covering partial index) gives what the
query before it gave, on data made to trip it; and the plan check (`check-config --explain`)
tells a table with the recommended indexes from one without."""

from __future__ import annotations

import subprocess
import sys

import pytest
from psycopg import sql

from pipemon.config import load
from pipemon.db import Cursor
from pipemon.sources.presets.explain import explain_queue, explain_source
from pipemon.sources.presets.generic import GenericPreset
from testkit.app import queue_source, write_config
from testkit.before_active import before_active_sql

pytestmark = pytest.mark.postgres

COLUMNS = {"id": "id", "queue": "queue", "state": "status", "created_at": "created_at",
           "available_at": "run_at", "started_at": "started_at", "finished_at": "finished_at"}
STATES = {"queued": "waiting", "pending": "waiting", "later": "scheduled", "busy": "running",
          "again": "retrying", "ok": "succeeded", "err": "failed"}


def make_preset(tmp_path, **overrides) -> GenericPreset:
    source = queue_source("postgresql://pipemon@127.0.0.1/none", **overrides)
    config = load(write_config(tmp_path / "pipemon.yaml", [source]))
    return GenericPreset(config.sources[0])


@pytest.fixture
def tricky(db):
    """A job table with what trips an active-jobs query: NULL available_at and queue, a job
    created after its run_at, waiting jobs due later, two raw states per pipemon state, stuck,
    running and never started jobs, final and unknown states; and an enum twin of it."""
    db.execute("CREATE TYPE tricky_state AS ENUM ('queued', 'pending', 'later', 'busy', 'again',"
               " 'ok', 'err', 'paused')")
    for table, state_type in (("tricky", "text"), ("tricky_enum", "tricky_state")):
        db.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, queue text,"
                   f" status {state_type}, created_at timestamptz NOT NULL,"
                   " run_at timestamptz, started_at timestamptz, finished_at timestamptz)")
        db.execute(f"""INSERT INTO {table} (queue, status, created_at, run_at, started_at,
                                           finished_at) VALUES
            ('a', 'queued', now() - interval '5 min', NULL, NULL, NULL),
            ('a', 'queued', now() - interval '9 min', now() - interval '2 min', NULL, NULL),
            ('a', 'pending', now() - interval '1 min', now() - interval '20 min', NULL, NULL),
            ('a', 'queued', now() - interval '30 min', now() + interval '1 hour', NULL, NULL),
            ('a', 'pending', now(), now() + interval '5 min', NULL, NULL),
            ('a', 'later', now() - interval '40 min', now() - interval '40 min', NULL, NULL),
            ('a', 'busy', now() - interval '3 hours', now() - interval '3 hours',
                  now() - interval '2 hours', NULL),
            ('a', 'busy', now(), now(), now(), NULL),
            ('a', 'busy', now(), now(), NULL, NULL),
            ('a', 'again', now() - interval '50 min', now() + interval '1 min',
                  now() - interval '2 hours', NULL),
            ('b', 'pending', now() - interval '7 min', NULL, NULL, NULL),
            ('b', 'busy', now() - interval '1 hour', NULL, now() - interval '45 min', NULL),
            ('b', 'ok', now() - interval '2 hours', now() - interval '2 hours',
                  now() - interval '2 hours', now() - interval '1 hour'),
            (NULL, 'queued', now() - interval '11 min', now() - interval '11 min', NULL, NULL),
            (NULL, 'later', now(), now() + interval '1 day', NULL, NULL),
            ('c', 'queued', now(), now() + interval '1 hour', NULL, NULL),
            ('c', 'paused', now() - interval '1 day', NULL, NULL, NULL),
            ('d', 'err', now(), now(), now(), now())""")
    return db


CASES = {
    "every column": {},
    "enum state column": {"table": "tricky_enum"},
    "no queue column": {"columns": {k: v for k, v in COLUMNS.items() if k != "queue"}},
    "no available_at": {"columns": {k: v for k, v in COLUMNS.items() if k != "available_at"}},
    "no started_at": {"columns": {k: v for k, v in COLUMNS.items() if k != "started_at"}},
    "queue filter": {"queues": ["a", "c", "idle"]},
    "subquery table": {"table": "(SELECT * FROM tricky WHERE queue IS DISTINCT FROM 'b')"},
}


@pytest.mark.parametrize("case", CASES)
def test_active_query_gives_what_the_query_before_it_gave(tricky, tmp_path, case):
    preset = make_preset(tmp_path, **{"table": "tricky", "columns": COLUMNS, "states": STATES,
                                      "stuck_after": "30m", **CASES[case]})
    indexes = preset.indexes()
    if "active jobs" in indexes:
        tricky.execute(indexes["active jobs"])
        tricky.execute(sql.SQL("VACUUM ANALYZE {}").format(preset.parts["rel"]))
    params = {"stuck": 1800.0}
    with tricky.transaction():  # one now() for both
        before = tricky.execute(before_active_sql(preset), params).fetchall()
        after = tricky.execute(preset.active_sql(), params).fetchall()
        # and as read from the index alone, whatever the planner would pick for 18 rows
        tricky.execute("SET LOCAL enable_seqscan = off")
        tricky.execute("SET LOCAL enable_bitmapscan = off")
        from_index = tricky.execute(preset.active_sql(), params).fetchall()
        plan = "\n".join(r[0] for r in tricky.execute(
            sql.SQL("EXPLAIN ") + preset.active_sql(), params))
    assert after == before
    assert from_index == before
    if "active jobs" in indexes:
        assert "Index Only Scan using tricky" in plan, plan
    assert before, "the data has active jobs"
    if case == "every column":
        rows = {(q, s): (n, stuck) for q, s, n, _age, stuck in before}
        age = {(q, s): a for q, s, _n, a, _stuck in before}
        assert rows[("a", "waiting")] == (3, 0)
        assert 300 <= age[("a", "waiting")] < 330  # ready: greatest(created, run_at or NULL)
        assert rows[("a", "scheduled")] == (3, 0)  # 2 raw waiting due later, 1 raw later
        assert rows[("a", "running")] == (3, 1)
        assert rows[("a", "retrying")] == (1, 0)  # started 2 h ago, but not running
        assert rows[("b", "running")] == (1, 1)
        assert 420 <= age[("b", "waiting")] < 450  # NULL run_at: ready since created
        assert rows[("c", "waiting")] == (0, 0)  # its only waiting job is due later
        assert rows[(None, "waiting")] == (1, 0)


def test_recommended_indexes_give_index_only_plans(db, tmp_path, pg_dsn):
    """On examples/schema.sql, which has them, with enough rows that plans matter."""
    fill(db)
    source = queue_source(pg_dsn, unmapped_check_interval="5m")
    config = load(write_config(tmp_path / "pipemon.yaml", [source])).sources[0]
    found = {f.query: f for f in explain_source(config)}
    assert set(found) == {"active jobs", "finished jobs", "started jobs", "unmapped states"}
    assert all(f.ok for f in found.values()), [str(f) for f in found.values()]
    assert str(found["active jobs"]) == \
        "active jobs: ok: Index Only Scan using jobs_active_idx on jobs"
    assert "using jobs_finished_at_idx on jobs" in found["finished jobs"].plan
    assert "using jobs_started_at_idx on jobs" in found["started jobs"].plan

    with db.transaction(), db.cursor() as raw:
        analyzed = explain_queue(GenericPreset(config), Cursor(raw, float("inf")), analyze=True)
    assert str(analyzed[0]) == "active jobs: ok: Index Only Scan using jobs_active_idx on jobs" \
        " (0 heap fetches for 2,000 rows)"

    # Rows changed since the last vacuum are read from the table, index or not.
    db.execute("UPDATE jobs SET attempts = attempts + 1 WHERE finished_at IS NULL")
    with db.transaction(), db.cursor() as raw:
        analyzed = explain_queue(GenericPreset(config), Cursor(raw, float("inf")), analyze=True)
    assert not analyzed[0].ok
    assert "heap fetches for 2,000 rows" in analyzed[0].plan
    assert "VACUUM the table" in analyzed[0].advice


def test_without_the_covering_index_it_says_which_to_create(db, tmp_path, pg_dsn):
    db.execute("DROP INDEX jobs_active_idx")
    fill(db)
    config = load(write_config(tmp_path / "pipemon.yaml", [queue_source(pg_dsn)])).sources[0]
    active = explain_source(config)[0]
    assert not active.ok
    assert "using jobs_status_queue_idx on jobs (reads every active job's row)" in active.plan
    assert active.advice == (
        'create: CREATE INDEX CONCURRENTLY "jobs_active_idx" ON "jobs" ("queue", "status")'
        ' INCLUDE ("run_at", "created_at", "started_at") WHERE "status" IN'
        " ('retrying', 'running', 'scheduled', 'waiting')")
    # what it says to create is what makes it ok
    db.execute(active.advice.removeprefix("create: "))
    db.execute("VACUUM ANALYZE jobs")
    assert explain_source(config)[0].ok


def test_without_indexes_every_full_read_is_named(db, tmp_path, pg_dsn):
    for index in ("jobs_active_idx", "jobs_status_queue_idx", "jobs_finished_at_idx",
                  "jobs_started_at_idx"):
        db.execute(f"DROP INDEX {index}")
    fill(db)
    config = load(write_config(tmp_path / "pipemon.yaml", [queue_source(pg_dsn)])).sources[0]
    found = {f.query: f for f in explain_source(config)}
    assert not any(f.ok for f in found.values()), [str(f) for f in found.values()]
    assert found["finished jobs"].plan.startswith("Seq Scan on jobs (reads all ~")
    assert found["finished jobs"].advice == \
        'create: CREATE INDEX CONCURRENTLY "jobs_finished_at_idx" ON "jobs" ("finished_at", "id")'
    assert found["started jobs"].advice.endswith('ON "jobs" ("started_at", "id")')
    assert found["unmapped states"].plan == \
        "reads the whole table every unmapped_check_interval"
    assert found["unmapped states"].advice.endswith('ON "jobs" ("status", "queue")')


def test_a_subquery_table_gets_plans_but_no_index_to_create(db, tmp_path, pg_dsn):
    fill(db)
    source = queue_source(pg_dsn, table="(SELECT * FROM jobs WHERE queue <> 'ignored')",
                          unmapped_check_interval="0s")
    config = load(write_config(tmp_path / "pipemon.yaml", [source])).sources[0]
    found = explain_source(config)
    assert [f.query for f in found] == ["active jobs", "finished jobs", "started jobs"]
    assert all(f.advice == "" for f in found)
    # the subquery is pulled up: its table's index serves it
    assert str(found[0]) == "active jobs: ok: Index Only Scan using jobs_active_idx on jobs"


def fill(db, finished: int = 50_000, active: int = 2_000) -> None:
    """Enough finished jobs that reading the table whole costs, and the active ones of a
    working queue; vacuumed, as autovacuum leaves a table."""
    db.execute("INSERT INTO jobs (queue, status, created_at, run_at, started_at, finished_at)"
               " SELECT 'q' || i %% 4, 'succeeded', t, t, t, t + interval '1 minute' FROM"
               " (SELECT i, now() - i * interval '10 seconds' AS t"
               "  FROM generate_series(1, %s) AS i) AS s", (finished,))
    db.execute("INSERT INTO jobs (queue, status, started_at)"
               " SELECT 'q' || i %% 4, (ARRAY['waiting', 'running', 'retrying', 'scheduled'])"
               "[1 + i / 4 %% 4], CASE WHEN i / 4 %% 4 = 1 THEN now() END"
               " FROM generate_series(1, %s) AS i", (active,))
    db.execute("VACUUM ANALYZE jobs")


def test_check_config_explain_exits_1_and_names_the_index_to_create(db, tmp_path, pg_dsn):
    fill(db)
    path = write_config(tmp_path / "pipemon.yaml", [queue_source(pg_dsn)])
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "pipemon", "check-config", "--explain", str(path)],
        capture_output=True, text=True, timeout=60)
    good = run()
    assert good.returncode == 0, good.stdout + good.stderr
    assert "stems: active jobs: ok: Index Only Scan using jobs_active_idx on jobs" in good.stdout
    db.execute("DROP INDEX jobs_active_idx")
    slow = run()
    assert slow.returncode == 1, slow.stdout + slow.stderr
    line = next(x for x in slow.stdout.splitlines() if x.startswith("stems: active jobs:"))
    assert "slow:" in line and 'create: CREATE INDEX CONCURRENTLY "jobs_active_idx"' in line
