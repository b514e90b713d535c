"""The generic queue source against a real PostgreSQL: counts checked against ground truth."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from testkit.app import queue_source, sample

pytestmark = pytest.mark.postgres

BUCKETS = ("0.5", "1.0", "2.5", "5.0", "10.0", "20.0", "30.0", "45.0", "60.0", "90.0", "120.0",
           "180.0", "240.0", "300.0", "450.0", "600.0", "900.0", "1200.0", "1800.0", "2700.0",
           "3600.0", "5400.0", "7200.0", "10800.0", "14400.0", "21600.0", "43200.0", "+Inf")


def insert(db, queue: str, n: int, status: str = "waiting", **sql_values: str) -> list[int]:
    """Insert `n` jobs; `sql_values` are SQL expressions for other columns."""
    cols = ["queue", "status", *sql_values]
    exprs = ["%s", "%s", *sql_values.values()]
    rows = db.execute(
        f"INSERT INTO jobs ({', '.join(cols)}) SELECT {', '.join(exprs)} "
        "FROM generate_series(1, %s) RETURNING id", (queue, status, n)).fetchall()
    return [r[0] for r in rows]


def finish(db, ids: list[int], status: str, run_seconds: float) -> None:
    db.execute(
        "UPDATE jobs SET status = %s, started_at = now() - make_interval(secs => %s),"
        " finished_at = now() WHERE id = ANY(%s)", (status, run_seconds, ids))


def jobs(app, queue, state):
    return sample(app, "pipemon_queue_jobs", source="stems", queue=queue, state=state)


def finished(app, queue, outcome):
    return sample(app, "pipemon_queue_jobs_finished_total", source="stems", queue=queue,
                  outcome=outcome)


def run_buckets(app, queue, outcome):
    return [sample(app, "pipemon_queue_job_run_seconds_bucket", source="stems", queue=queue,
                   outcome=outcome, le=le) for le in BUCKETS]


@pytest.fixture
def app(make_app, pg_dsn):
    return make_app([queue_source(pg_dsn)])


def test_gauges_match_the_table_and_zero_fill_every_state(app, db):
    insert(db, "stems", 7)
    insert(db, "stems", 2, "running", started_at="now() - interval '2 hours'")  # stuck
    insert(db, "stems", 1, "running", started_at="now()")
    insert(db, "stems", 3, "waiting", run_at="now() + interval '10 minutes'")  # not yet due
    insert(db, "stems", 4, "retrying")
    insert(db, "mixdown", 1, "waiting", created_at="now() - interval '90 seconds'",
           run_at="now() - interval '90 seconds'")
    insert(db, "mixdown", 5, "succeeded", finished_at="now()")  # final: not a gauge
    assert app.poll_all_once()

    assert [jobs(app, "stems", s) for s in ("waiting", "scheduled", "running", "retrying")] == \
        [7, 3, 3, 4]
    assert [jobs(app, "mixdown", s) for s in ("waiting", "scheduled", "running", "retrying")] == \
        [1, 0, 0, 0]
    assert sample(app, "pipemon_queue_stuck_jobs", source="stems", queue="stems") == 2
    assert sample(app, "pipemon_queue_stuck_jobs", source="stems", queue="mixdown") == 0
    oldest = sample(app, "pipemon_queue_oldest_waiting_seconds", source="stems",
                    queue="mixdown")
    assert 90 <= oldest < 150
    assert sample(app, "pipemon_source_up", source="stems", kind="queue") == 1


def test_finished_jobs_counted_exactly_with_run_time_histograms(app, db):
    ids = insert(db, "stems", 10, created_at="now() - interval '1 minute'")
    assert app.poll_all_once()  # first poll: watermark at now(), nothing counted
    assert finished(app, "stems", "succeeded") == 0

    finish(db, ids[0:3], "succeeded", 0.5)
    finish(db, ids[3:5], "succeeded", 200)
    finish(db, ids[5:6], "succeeded", 4000)
    finish(db, ids[6:8], "failed", 45)
    finish(db, ids[8:9], "cancelled", 3)
    assert app.poll_all_once()

    assert finished(app, "stems", "succeeded") == 6
    assert finished(app, "stems", "failed") == 2
    assert finished(app, "stems", "cancelled") == 1
    # cumulative buckets: 3 jobs <= 0.5 s, 2 in (180, 240], 1 in (3600, 5400]
    assert run_buckets(app, "stems", "succeeded") == [3] * 12 + [5] * 9 + [6] * 7
    assert run_buckets(app, "stems", "failed") == [0] * 7 + [2] * 21  # 45 s: le="45.0"
    total = sample(app, "pipemon_queue_job_run_seconds_sum", source="stems", queue="stems",
                   outcome="succeeded")
    assert total == pytest.approx(3 * 0.5 + 2 * 200 + 4000, abs=0.1)

    # Nothing new: the overlap window re-reads these rows but counts none of them again.
    assert app.poll_all_once()
    assert finished(app, "stems", "succeeded") == 6
    assert sample(app, "pipemon_queue_job_run_seconds_count", source="stems", queue="stems",
                  outcome="succeeded") == 6


def test_configured_buckets_listed_or_spaced_on_a_log_scale(make_app, pg_dsn, db):
    # A transcoding queue whose jobs take hours: its own bounds, and no series for the rest.
    app = make_app([queue_source(pg_dsn, buckets={
        "run": ["1m", "30m", "2h", "8h"], "wait": {"min": "1s", "max": "100s", "count": 3}})])
    ids = insert(db, "films", 3, created_at="now() - interval '1 minute'")
    assert app.poll_all_once()
    finish(db, ids, "succeeded", 3 * 3600)
    assert app.poll_all_once()
    les = lambda name: sorted(  # noqa: E731
        labels["le"] for n, labels, _ in app_samples(app) if n == name)
    assert les("pipemon_queue_job_run_seconds_bucket") == \
        sorted(["60.0", "1800.0", "7200.0", "28800.0", "+Inf"] * 3)  # 3 outcomes
    assert les("pipemon_queue_job_wait_seconds_bucket") == ["+Inf", "1.0", "10.0", "100.0"]
    assert sample(app, "pipemon_queue_job_run_seconds_bucket", source="stems", queue="films",
                  outcome="succeeded", le="7200.0") == 0
    assert sample(app, "pipemon_queue_job_run_seconds_bucket", source="stems", queue="films",
                  outcome="succeeded", le="28800.0") == 3


def test_exact_quantiles_are_percentile_cont_over_the_same_jobs(make_app, pg_dsn, db):
    """exact_quantiles: per queue, the run times of the jobs finished and the wait times of
    the jobs started in the window, as PostgreSQL's percentile_cont gives them."""
    app = make_app([queue_source(pg_dsn, exact_quantiles={"quantiles": [0.99, 0.5, 0.9]})])
    ids = insert(db, "stems", 150, created_at="now() - interval '1 hour'",
                 run_at="now() - interval '1 hour'")
    waiting = insert(db, "films", 40, created_at="now() - make_interval(secs => random() * 900)")
    assert app.poll_all_once()
    db.execute("UPDATE jobs SET status = CASE WHEN id %% 10 = 0 THEN 'failed' ELSE 'succeeded'"
               " END, started_at = now() - make_interval(secs => 1 + random() * 1800),"
               " finished_at = now() WHERE id = ANY(%s)", (ids,))
    db.execute("UPDATE jobs SET status = 'running', started_at = now(), run_at = created_at"
               " WHERE id = ANY(%s)", (waiting,))
    assert app.poll_all_once()

    def exact(expr, job_ids):
        return db.execute(f"SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP"
                          f" (ORDER BY extract(epoch FROM {expr})) FROM jobs"
                          " WHERE id = ANY(%s)", (job_ids,)).fetchone()[0]

    for name, queue, expected, count in (
            ("run", "stems", exact("finished_at - started_at", ids), 150),
            ("wait", "films", exact("started_at - created_at", waiting), 40)):
        labels = {"source": "stems", "queue": queue}
        assert sample(app, f"pipemon_queue_job_{name}_window_jobs", **labels) == count
        for quantile, value in zip(("0.5", "0.9", "0.99"), expected, strict=True):
            assert sample(app, f"pipemon_queue_job_{name}_window_seconds", quantile=quantile,
                          **labels) == pytest.approx(value, rel=1e-6), (name, quantile)
    # No job started in "stems" during the window, none finished in "films": no quantile.
    names = {(n, labels.get("queue")) for n, labels, _ in app_samples(app)}
    assert ("pipemon_queue_job_wait_window_seconds", "stems") not in names
    assert ("pipemon_queue_job_run_window_seconds", "films") not in names


def test_without_exact_quantiles_no_window_series(app, db):
    ids = insert(db, "stems", 3)
    assert app.poll_all_once()
    finish(db, ids, "succeeded", 5)
    assert app.poll_all_once()
    assert not [n for n, _, _ in app_samples(app) if "_window_" in n]


def app_samples(app):
    return [(s.name, s.labels, s.value) for family in app.registry.collect()
            for s in family.samples]


def test_wait_time_observed_when_jobs_start(app, db):
    ids = insert(db, "stems", 4, created_at="now() - interval '42 seconds'",
                 run_at="now() - interval '42 seconds'")
    assert app.poll_all_once()
    db.execute("UPDATE jobs SET status = 'running', started_at = now() WHERE id = ANY(%s)",
               (ids[:3],))
    assert app.poll_all_once()
    labels = {"source": "stems", "queue": "stems"}
    assert sample(app, "pipemon_queue_job_wait_seconds_count", **labels) == 3
    assert sample(app, "pipemon_queue_job_wait_seconds_bucket", le="30.0", **labels) == 0
    assert sample(app, "pipemon_queue_job_wait_seconds_bucket", le="60.0", **labels) == 3
    assert jobs(app, "stems", "running") == 3
    assert jobs(app, "stems", "waiting") == 1


def test_late_commit_is_counted_once(app, db, pg_dsn):
    ids = insert(db, "stems", 3)
    assert app.poll_all_once()
    with psycopg.connect(pg_dsn) as slow:  # a worker whose transaction commits late
        slow.execute("SELECT now()")  # fixes the transaction's now() before the next poll
        slow.execute("UPDATE jobs SET status = 'succeeded', started_at = now(),"
                     " finished_at = now() WHERE id = ANY(%s)", (ids,))
        assert app.poll_all_once()
        assert finished(app, "stems", "succeeded") == 0  # not committed yet
        slow.commit()
    assert app.poll_all_once()
    assert finished(app, "stems", "succeeded") == 3
    assert app.poll_all_once()
    assert finished(app, "stems", "succeeded") == 3


def test_without_a_late_commit_window_the_late_rows_are_lost(make_app, pg_dsn, db):
    """The counter-proof of the test above: the window is what catches late commits."""
    app = make_app([queue_source(pg_dsn, late_commit_window="0s")])
    ids = insert(db, "stems", 3)
    assert app.poll_all_once()
    with psycopg.connect(pg_dsn) as slow:
        slow.execute("SELECT now()")
        slow.execute("UPDATE jobs SET status = 'succeeded', finished_at = now()"
                     " WHERE id = ANY(%s)", (ids,))
        assert app.poll_all_once()
        slow.commit()
    assert app.poll_all_once()
    assert finished(app, "stems", "succeeded") == 0


def test_restart_starts_from_now_without_backfill(make_app, pg_dsn, db):
    ids = insert(db, "stems", 6)
    first = make_app([queue_source(pg_dsn)])
    assert first.poll_all_once()
    finish(db, ids[:4], "succeeded", 1)
    assert first.poll_all_once()
    assert finished(first, "stems", "succeeded") == 4

    restarted = make_app([queue_source(pg_dsn)])
    assert restarted.poll_all_once()
    assert restarted.poll_all_once()
    assert finished(restarted, "stems", "succeeded") == 0  # the 4 were before its start
    finish(db, ids[4:], "failed", 1)
    assert restarted.poll_all_once()
    assert finished(restarted, "stems", "failed") == 2
    assert finished(restarted, "stems", "succeeded") == 0


def test_a_job_finishing_again_after_a_retry_counts_again(app, db):
    (job,) = insert(db, "stems", 1)
    assert app.poll_all_once()
    finish(db, [job], "failed", 1)
    assert app.poll_all_once()
    db.execute("UPDATE jobs SET status = 'waiting', finished_at = NULL WHERE id = %s", (job,))
    assert app.poll_all_once()
    db.execute("UPDATE jobs SET status = 'succeeded', finished_at = clock_timestamp()"
               " WHERE id = %s", (job,))
    assert app.poll_all_once()
    assert (finished(app, "stems", "failed"), finished(app, "stems", "succeeded")) == (1, 1)


def test_a_burst_larger_than_one_poll_is_read_over_several_polls(make_app, pg_dsn, db):
    app = make_app([queue_source(pg_dsn, page_size=100, max_rows_per_poll=300)])
    ids = insert(db, "stems", 1000)
    assert app.poll_all_once()
    finish(db, ids, "succeeded", 2)
    counts = []
    for _ in range(5):
        assert app.poll_all_once()
        counts.append(finished(app, "stems", "succeeded"))
    assert counts == [300, 600, 900, 1000, 1000]


def test_unmapped_states_and_queue_cap(make_app, pg_dsn, db):
    app = make_app([queue_source(pg_dsn, max_queues=2)])
    for queue in ("a", "b", "c", "d"):
        insert(db, queue, 1)
    insert(db, "a", 2, "paused")
    assert app.poll_all_once()
    queues = {labels["queue"] for name, labels in _samples(app, "pipemon_queue_jobs")}
    assert queues == {"a", "b", "other"}
    assert jobs(app, "other", "waiting") == 2
    assert sample(app, "pipemon_source_folded_label_values", source="stems",
                  label="queue") == 2
    assert sample(app, "pipemon_queue_unmapped_jobs", source="stems", raw_state="paused") == 2


def _plan_rows(node: dict) -> int:
    """Rows read by every scan in an EXPLAIN (ANALYZE, FORMAT JSON) plan, loops included."""
    own = node["Actual Rows"] * node["Actual Loops"] if "Scan" in node["Node Type"] else 0
    return own + sum(_plan_rows(child) for child in node.get("Plans", []))


@pytest.mark.parametrize("indexed", [True, False])
def test_unmapped_check_reads_an_index_when_there_is_one(make_app, pg_dsn, db, caplog, indexed):
    db.execute("CREATE TABLE big_jobs (id bigserial PRIMARY KEY, queue text, status text,"
               " created_at timestamptz DEFAULT now(), finished_at timestamptz)")
    db.execute("INSERT INTO big_jobs (queue, status, finished_at)"
               " SELECT 'stems', 'succeeded', now() FROM generate_series(1, 50000)")
    db.execute("INSERT INTO big_jobs (queue, status) VALUES ('stems', 'paused'),"
               " ('stems', 'paused'), ('stems', 'paused'), ('stems', NULL), ('stems', NULL),"
               " ('stems', 'waiting'), ('elsewhere', 'on-hold')")
    if indexed:
        db.execute("CREATE INDEX ON big_jobs (status, queue)")
    db.execute("ANALYZE big_jobs")
    source = queue_source(pg_dsn, table="big_jobs", queues=["stems"], columns={
        "id": "id", "queue": "queue", "state": "status", "created_at": "created_at",
        "finished_at": "finished_at"})
    app = make_app([source])
    assert app.poll_all_once()
    unmapped = {s.labels["raw_state"]: s.value for family in app.registry.collect()
                for s in family.samples if s.name == "pipemon_queue_unmapped_jobs"}
    assert unmapped == {"paused": 3, "(null)": 2}, "on-hold is outside the configured queues"
    warned = any("reads the whole table" in r.getMessage() for r in caplog.records)
    assert warned != indexed

    if indexed:
        query = app.runners[0].source.preset.unmapped_by_index_sql()
        plan = db.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query).fetchone()[0]
        assert _plan_rows(plan[0]["Plan"]) < 100, plan


def test_enum_state_column(make_app, pg_dsn, db):
    db.execute("CREATE TYPE job_state AS ENUM ('new', 'due_later', 'busy', 'done', 'held')")
    db.execute("CREATE TABLE enum_jobs (id serial PRIMARY KEY, status job_state NOT NULL,"
               " created_at timestamptz DEFAULT now(), run_at timestamptz DEFAULT now(),"
               " started_at timestamptz, finished_at timestamptz)")
    db.execute("CREATE INDEX ON enum_jobs (status)")
    db.execute("INSERT INTO enum_jobs (status, run_at, started_at) VALUES"
               " ('new', now(), NULL), ('new', now() + interval '1 hour', NULL),"
               " ('due_later', now() + interval '1 hour', NULL),"
               " ('busy', now(), now() - interval '2 hours'), ('held', now(), NULL)")
    source = queue_source(pg_dsn, table="enum_jobs", default_queue="all", columns={
        "id": "id", "state": "status", "created_at": "created_at", "available_at": "run_at",
        "started_at": "started_at", "finished_at": "finished_at"},
        states={"new": "waiting", "due_later": "scheduled", "busy": "running",
                "done": "succeeded"})
    app = make_app([source])
    assert app.poll_all_once()
    assert [jobs(app, "all", state) for state in ("waiting", "scheduled", "running")] == [1, 2, 1]
    assert sample(app, "pipemon_queue_stuck_jobs", source="stems", queue="all") == 1
    assert sample(app, "pipemon_queue_unmapped_jobs", source="stems", raw_state="held") == 1


def test_queue_filter_and_default_queue(make_app, pg_dsn, db):
    insert(db, "stems", 2)
    insert(db, "other-team", 5)
    filtered = make_app([queue_source(pg_dsn, queues=["stems", "idle"])])
    assert filtered.poll_all_once()
    assert {labels["queue"] for _, labels in _samples(filtered, "pipemon_queue_jobs")} == \
        {"stems", "idle"}
    assert jobs(filtered, "idle", "waiting") == 0  # configured queues are always exported

    source = queue_source(pg_dsn, default_queue="all")
    del source["columns"]["queue"]
    single = make_app([source])
    assert single.poll_all_once()
    assert jobs(single, "all", "waiting") == 7


def test_subquery_table_and_timestamp_without_time_zone(make_app, pg_dsn, db):
    db.execute("CREATE TABLE legacy (job_id int, q text, st text, enq timestamp,"
               " fin timestamp)")
    db.execute("INSERT INTO legacy VALUES (1, 'x', 'new', localtimestamp, NULL),"
               " (2, 'x', 'new', localtimestamp, NULL)")
    source = queue_source(
        pg_dsn, table="(SELECT job_id, q, st, enq, fin FROM legacy WHERE q <> 'ignored')",
        columns={"id": "job_id", "queue": "q", "state": "st", "created_at": "enq",
                 "finished_at": "fin"},
        states={"new": "waiting", "ok": "succeeded", "err": "failed"})
    app = make_app([source])
    assert app.poll_all_once()
    db.execute("UPDATE legacy SET st = 'err', fin = localtimestamp WHERE job_id = 1")
    assert app.poll_all_once()
    assert jobs(app, "x", "waiting") == 1
    assert finished(app, "x", "failed") == 1
    # no started_at column: no run/wait histograms, and no stuck jobs
    assert sample(app, "pipemon_queue_job_run_seconds_count", source="stems", queue="x",
                  outcome="failed") is None
    assert sample(app, "pipemon_queue_stuck_jobs", source="stems", queue="x") == 0


def test_analysis_results_counted_with_durations(make_app, pg_dsn, db):
    app = make_app([{
        "name": "analysis", "kind": "analysis", "dsn": pg_dsn, "table": "audio_events_cache",
        "duration_seconds": "processing_ms / 1000.0"}])
    assert app.poll_all_once()
    db.execute("INSERT INTO audio_events_cache (track_id, timeline, processing_ms) VALUES"
               " (1, '[]', 800), (2, '[]', 12000), (3, NULL, 500), (4, '[1]', NULL)")
    assert app.poll_all_once()
    assert app.poll_all_once()
    value = lambda name, **kw: sample(app, name, source="analysis", **kw)  # noqa: E731
    assert value("pipemon_analysis_results_total", outcome="succeeded") == 3
    assert value("pipemon_analysis_results_total", outcome="failed") == 1
    assert value("pipemon_analysis_duration_seconds_count") == 3
    assert value("pipemon_analysis_duration_seconds_bucket", le="1.0") == 2
    assert value("pipemon_analysis_duration_seconds_bucket", le="30.0") == 3
    # no peak_dbfs, no loudness_lufs: no level series at all
    assert value("pipemon_analysis_peak_dbfs_count") is None
    assert value("pipemon_analysis_clipped_total") is None
    assert value("pipemon_analysis_loudness_lufs_count") is None


def test_analysis_audio_levels_land_in_their_buckets(make_app, pg_dsn, db):
    """Successful results with a finite level are observed; failed ones, NULLs and a silent
    track's -Infinity are not. A peak above clipping_dbfs (-3) counts as clipping; -3 itself
    does not; a true peak above full scale lands in +Inf."""
    app = make_app([{
        "name": "analysis", "kind": "analysis", "dsn": pg_dsn, "table": "audio_events_cache",
        "peak_dbfs": "peak_dbfs", "loudness_lufs": "loudness_lufs"}])
    assert app.poll_all_once()
    value = lambda name, **kw: sample(app, name, source="analysis", **kw)  # noqa: E731
    # zero, not absent, before the first result
    assert value("pipemon_analysis_peak_dbfs_count") == 0
    assert value("pipemon_analysis_peak_dbfs_bucket", le="-3.0") == 0
    assert value("pipemon_analysis_clipped_total") == 0
    assert value("pipemon_analysis_loudness_lufs_bucket", le="+Inf") == 0
    db.execute("INSERT INTO audio_events_cache (track_id, timeline, peak_dbfs, loudness_lufs)"
               " VALUES (1, '[]', -6.0, -14.2), (2, '[]', -3.0, -13.0), (3, '[]', -0.5, -9.0),"
               " (4, NULL, 0.0, -8.0), (5, '[]', NULL, NULL),"
               " (6, '[]', '-Infinity', '-Infinity'), (7, '[]', 0.3, -30.0),"
               " (8, '[]', 'NaN', -14.0)")
    assert app.poll_all_once()
    assert value("pipemon_analysis_results_total", outcome="succeeded") == 7
    assert value("pipemon_analysis_results_total", outcome="failed") == 1
    peaks = {le: value("pipemon_analysis_peak_dbfs_bucket", le=le)
             for le in ("-24.0", "-6.0", "-5.0", "-3.0", "-1.0", "-0.5", "0.0", "+Inf")}
    assert peaks == {"-24.0": 0, "-6.0": 1, "-5.0": 1, "-3.0": 2, "-1.0": 2, "-0.5": 3,
                     "0.0": 3, "+Inf": 4}
    assert value("pipemon_analysis_peak_dbfs_count") == 4
    assert value("pipemon_analysis_peak_dbfs_sum") == pytest.approx(-9.2)
    assert value("pipemon_analysis_clipped_total") == 2  # -0.5 and 0.3; not -3.0, not failed
    loudness = {le: value("pipemon_analysis_loudness_lufs_bucket", le=le)
                for le in ("-30.0", "-14.5", "-14.0", "-13.0", "-12.0", "-8.0", "-6.0")}
    assert loudness == {"-30.0": 1, "-14.5": 1, "-14.0": 3, "-13.0": 4, "-12.0": 4, "-8.0": 5,
                        "-6.0": 5}
    assert value("pipemon_analysis_loudness_lufs_count") == 5
    assert value("pipemon_analysis_loudness_lufs_sum") == pytest.approx(-80.2)


def test_analysis_level_buckets_and_clipping_level_from_the_config(make_app, pg_dsn, db):
    app = make_app([{
        "name": "analysis", "kind": "analysis", "dsn": pg_dsn, "table": "audio_events_cache",
        "peak_dbfs": "peak_dbfs + 0", "clipping_dbfs": -1,
        "loudness_lufs": "coalesce(loudness_lufs, -70)",
        "buckets": {"peak": [-6, -1.5, -1], "loudness": [-23, -14]}}])
    assert app.poll_all_once()
    db.execute("INSERT INTO audio_events_cache (track_id, timeline, peak_dbfs, loudness_lufs)"
               " VALUES (1, '[]', -2.0, -20.0), (2, '[]', -1.0, NULL), (3, '[]', -0.9, -9.5)")
    assert app.poll_all_once()
    value = lambda name, **kw: sample(app, name, source="analysis", **kw)  # noqa: E731
    assert [value("pipemon_analysis_peak_dbfs_bucket", le=le)
            for le in ("-6.0", "-1.5", "-1.0", "+Inf")] == [0, 1, 2, 3]
    assert value("pipemon_analysis_clipped_total") == 1  # only -0.9 is above -1
    assert [value("pipemon_analysis_loudness_lufs_bucket", le=le)
            for le in ("-23.0", "-14.0", "+Inf")] == [1, 2, 3]  # NULL read as -70
    assert value("pipemon_analysis_loudness_lufs_bucket", le="-12.0") is None


def test_exporter_never_writes(make_app, pg_dsn, db):
    """Expressions from the config run in a read-only transaction: a write is refused."""
    app = make_app([{
        "name": "analysis", "kind": "analysis", "dsn": pg_dsn,
        "table": "(SELECT a.*, (SELECT count(*) FROM jobs) AS n FROM audio_events_cache a)",
        "duration_seconds": "nextval('jobs_id_seq')"}])
    assert app.poll_all_once()
    db.execute("INSERT INTO audio_events_cache (track_id, timeline) VALUES (1, '[]')")
    assert not app.poll_all_once()
    runner = app.runners[0]
    assert runner.last_error.reason == "sql_error"
    assert "read-only transaction" in runner.last_error.message
    assert db.execute("SELECT last_value FROM jobs_id_seq").fetchone()[0] == 1


def _samples(app, name):
    for metric in app.registry.collect():
        for s in metric.samples:
            if s.name == name:
                yield s.name, s.labels


def test_failure_reasons_normalised_and_capped(make_app, pg_dsn, db):
    """failure_reason maps an error column to `reason`: "timeout after 31s" and "... 32s" are
    one reason, an id in a message does not make a new one, and past max_reasons: `other`."""
    app = make_app([queue_source(pg_dsn, failure_reason="error", max_reasons=3)])
    assert app.poll_all_once()
    errors = ["FFMPEG_FAILED", "FFMPEG_FAILED", "timeout after 31s", "timeout after 32s",
              "upload 9f8e7d6c5b4a3f21 refused", "upload 0a1b2c3d4e5f6a7b refused",
              "  VALIDATION_FAILED\n", None]
    for error in errors:
        db.execute("INSERT INTO jobs (queue, status, started_at, finished_at, error)"
                   " VALUES ('q', 'failed', now(), now(), %s)", (error,))
    db.execute("INSERT INTO jobs (queue, status, started_at, finished_at, error)"
               " VALUES ('q', 'succeeded', now(), now(), 'ignored: it succeeded')")
    assert app.poll_all_once()

    def failures(reason):
        return sample(app, "pipemon_queue_job_failures_total", source="stems", queue="q",
                      reason=reason)

    # the first three distinct reasons (in finish order) are admitted, the rest folded
    assert (failures("FFMPEG_FAILED"), failures("timeout after Ns"),
            failures("upload ID refused")) == (2, 2, 2)
    assert failures("other") == 2  # VALIDATION_FAILED and the missing one ("unknown")
    assert finished(app, "q", "failed") == 8
    assert sample(app, "pipemon_source_folded_label_values", source="stems",
                  label="reason") == 2


def test_normalised_reasons():
    from pipemon.sources.jobs import normalise_reason

    assert normalise_reason("  a\n  b ") == "a b"
    assert normalise_reason("job 123e4567-e89b-12d3-a456-426614174000 lost") == "job ID lost"
    assert normalise_reason("exit code 137 after 2.5s") == "exit code N after Ns"
    assert normalise_reason(None) == normalise_reason("") == "unknown"
    assert normalise_reason("x" * 200) == "x" * 64


def test_run_and_wait_times_per_stage(make_app, pg_dsn, db):
    """`stage` labels jobs by the pipeline stage they run, beside their queue."""
    app = make_app([queue_source(pg_dsn, stage="stage", max_stages=2)])
    assert app.poll_all_once()
    for stage, run, status in (("MERGING", 40, "succeeded"), ("MERGING", 50, "failed"),
                               ("COMPRESSION", 5, "succeeded"), ("CLEANUP", 1, "succeeded")):
        db.execute("INSERT INTO jobs (queue, status, stage, created_at, run_at, started_at,"
                   " finished_at) VALUES ('q', %s, %s, now() - interval '100 s',"
                   " now() - interval '100 s', now() - make_interval(secs => %s), now())",
                   (status, stage, run))
    assert app.poll_all_once()

    def stage_sample(name, **labels):
        return sample(app, f"pipemon_queue_stage_{name}", source="stems", queue="q", **labels)

    assert stage_sample("jobs_finished_total", stage="MERGING", outcome="failed") == 1
    assert stage_sample("job_run_seconds_sum", stage="MERGING", outcome="succeeded") == \
        pytest.approx(40, abs=1)
    assert stage_sample("job_run_seconds_count", stage="COMPRESSION", outcome="succeeded") == 1
    assert stage_sample("jobs_finished_total", stage="other", outcome="succeeded") == 1  # cap 2
    db.execute("INSERT INTO jobs (queue, status, stage, created_at, run_at, started_at)"
               " VALUES ('q', 'running', 'MERGING', now() - interval '7 s',"
               " now() - interval '7 s', now())")
    assert app.poll_all_once()
    assert stage_sample("job_wait_seconds_sum", stage="MERGING") == pytest.approx(7, abs=1)
    assert finished(app, "q", "succeeded") == 3  # the queue's own series are unchanged
