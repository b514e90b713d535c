"""pipemon needs nothing but SELECT: proven by running it under such a role (docs/security.md)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from testkit.app import queue_source, sample

pytestmark = pytest.mark.postgres


@pytest.fixture
def reader(pg_dsn, db):
    """A login role with CONNECT, USAGE and SELECT on the watched tables, nothing else."""
    role = f"pipemon_ro_{uuid.uuid4().hex[:8]}"
    dbname = db.execute("SELECT current_database()").fetchone()[0]
    db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}')
    db.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    db.execute(f"GRANT SELECT ON jobs, audio_events_cache TO {role}")
    yield role, make_conninfo(pg_dsn, user=role)
    db.execute(f"DROP OWNED BY {role}")
    db.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("forced_read_only", [False, True])
def test_select_only_role_is_enough(make_app, db, reader, forced_read_only):
    role, dsn = reader
    if forced_read_only:
        db.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
    app = make_app([
        queue_source(dsn),
        {"name": "analysis", "kind": "analysis", "dsn": dsn,
         "duration_seconds": "processing_ms / 1000.0"},
    ])
    assert app.poll_all_once(), app.health()
    db.execute("INSERT INTO jobs (queue, status, started_at, finished_at)"
               " VALUES ('q', 'succeeded', now(), now()), ('q', 'waiting', NULL, NULL)")
    db.execute("INSERT INTO audio_events_cache (track_id, timeline, processing_ms)"
               " VALUES (1, '[]', 900)")
    assert app.poll_all_once(), app.health()
    assert sample(app, "pipemon_queue_jobs_finished_total", source="stems", queue="q",
                  outcome="succeeded") == 1
    assert sample(app, "pipemon_queue_jobs", source="stems", queue="q", state="waiting") == 1
    assert sample(app, "pipemon_analysis_results_total", source="analysis",
                  outcome="succeeded") == 1
    # and the role really cannot write: the permissions above are all it has
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error):
        conn.execute("INSERT INTO jobs (queue, status) VALUES ('x', 'waiting')")


def test_a_table_the_role_may_not_read_is_a_permission_error(make_app, db, reader):
    _, dsn = reader
    db.execute("CREATE TABLE secret_jobs (LIKE jobs INCLUDING ALL)")
    app = make_app([queue_source(dsn, table="secret_jobs")])
    assert not app.poll_all_once()
    assert app.runners[0].last_error.reason == "permission"
