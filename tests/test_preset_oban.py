"""The oban preset against Oban itself: its schema and an embedded worker of oban-py, which
needs Python 3.12, so it runs from the venv `make install` builds (tests/queues/oban/worker.py).
The database's TimeZone is America/New_York: Oban's `timestamp without time zone` columns hold
UTC, and every age pipemon reports must be right anyway."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from testkit import ROOT
from testkit.app import (
    assert_finished_match,
    assert_schema_missing,
    example_queue_source,
    sample,
)

pytestmark = pytest.mark.postgres

OBAN_PYTHON = ROOT / ".venv-oban" / "bin" / "python"
WORKER = Path(__file__).resolve().parent / "queues" / "oban" / "worker.py"
FINAL = {"completed": ("completed_at", "succeeded"), "discarded": ("discarded_at", "failed"),
         "cancelled": ("cancelled_at", "cancelled")}


def oban(command: str, dsn: str) -> None:
    assert OBAN_PYTHON.exists(), \
        "oban-py needs Python 3.12: run `make install` (it builds .venv-oban from pyenv's 3.12)"
    result = subprocess.run([str(OBAN_PYTHON), str(WORKER), command, dsn], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"oban {command} failed:\n{result.stderr[-3000:]}"


def source(dsn: str, **extra):
    return example_queue_source("oban", dsn, **extra)


def value(app, name, **labels):
    return sample(app, name, source="jobs", **labels) or 0.0


@pytest.fixture
def oban_db(pg_dsn, db):
    """The test database in New York time, with Oban's schema."""
    name = db.execute("SELECT current_database()").fetchone()[0]
    db.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = 'America/New_York'")
    oban("install", pg_dsn)
    return pg_dsn


def truth(db) -> dict:
    """Finished counts and run-time sums by (queue, outcome), and the waits, from the rows."""
    finished, run_sum, waits = {}, {}, []
    for row in db.execute(
            "SELECT queue, state::text, attempted_at, scheduled_at, completed_at, discarded_at,"
            " cancelled_at, meta ? 'cancel_attempted_at' FROM oban_jobs").fetchall():
        queue, state, attempted, scheduled, *finals, cancelled_early = row
        if attempted is not None and scheduled <= attempted:
            waits.append((attempted - scheduled).total_seconds())
        if state not in FINAL:
            continue
        at = dict(zip(("completed_at", "discarded_at", "cancelled_at"), finals, strict=True))[
            FINAL[state][0]]
        key = (queue, FINAL[state][1])
        finished[key] = finished.get(key, 0) + 1
        if attempted is not None and not cancelled_early:
            run_sum[key] = run_sum.get(key, 0.0) + (at - attempted).total_seconds()
    return {"finished": finished, "run_sum": run_sum, "waits": waits}


def test_oban_metrics_match_ground_truth(make_app, oban_db, db):
    exporter = make_app([source(oban_db)])
    assert exporter.poll_all_once(), exporter.health()
    oban("run", oban_db)
    assert exporter.poll_all_once(), exporter.health()

    expected = truth(db)
    assert expected["finished"] == {("mail", "succeeded"): 7, ("mail", "failed"): 2,
                                    ("mail", "cancelled"): 1, ("parked", "cancelled"): 1}
    assert_finished_match(exporter, expected["finished"], expected["run_sum"])
    assert value(exporter, "pipemon_queue_job_failures_total", queue="mail",
                 reason="RuntimeError") == 2
    # the last attempt of each job that ran, with its wait (the retries: from their due time)
    assert value(exporter, "pipemon_queue_job_wait_seconds_count", queue="mail") == \
        len(expected["waits"]) == 10
    assert value(exporter, "pipemon_queue_job_wait_seconds_sum", queue="mail") == \
        pytest.approx(sum(expected["waits"]), abs=1e-3)
    # left: one job an hour ahead, two parked ones waiting (one `scheduled` but due 90 s ago)
    assert value(exporter, "pipemon_queue_jobs", queue="reports", state="scheduled") == 1
    assert value(exporter, "pipemon_queue_jobs", queue="parked", state="waiting") == 2
    assert 90 <= value(exporter, "pipemon_queue_oldest_waiting_seconds", queue="parked") < 150
    for state in ("waiting", "running", "retrying", "scheduled"):
        assert sample(exporter, "pipemon_queue_jobs", source="jobs", queue="mail",
                      state=state) == 0, state


def test_oban_stuck_retrying_and_unknown_states(make_app, oban_db, db):
    oban("run", oban_db)
    exporter = make_app([source(oban_db, stuck_after="30m")])
    # As Oban's fetch (fetch_jobs.sql) and a failed ack (ack_job.sql) write them: a parked job
    # taken an hour ago and still executing, the other failed once and due again in a minute,
    # and the hour-ahead one in `suspended`, which oban-py reads but never writes.
    parked = [r[0] for r in db.execute(
        "SELECT id FROM oban_jobs WHERE queue = 'parked' AND state <> 'cancelled' ORDER BY id")]
    db.execute("UPDATE oban_jobs SET state = 'executing', attempt = 1,"
               " attempted_at = timezone('UTC', now()) - interval '1 hour' WHERE id = %s",
               (parked[0],))
    db.execute("UPDATE oban_jobs SET state = 'retryable', attempt = 1,"
               " attempted_at = timezone('UTC', now()) - interval '1 minute',"
               " scheduled_at = timezone('UTC', now()) + interval '1 minute' WHERE id = %s",
               (parked[1],))
    db.execute("UPDATE oban_jobs SET state = 'suspended' WHERE queue = 'reports'")
    assert exporter.poll_all_once(), exporter.health()
    assert value(exporter, "pipemon_queue_jobs", queue="parked", state="running") == 1
    assert value(exporter, "pipemon_queue_stuck_jobs", queue="parked") == 1
    assert value(exporter, "pipemon_queue_jobs", queue="parked", state="retrying") == 1
    assert value(exporter, "pipemon_queue_unmapped_jobs", raw_state="suspended") == 1


def test_oban_schema_missing_is_a_clear_error(make_app, pg_dsn):
    assert_schema_missing(make_app([source(pg_dsn)]), "no oban_jobs table")
