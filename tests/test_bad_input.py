"""Bad input: fuzzed and hostile configs, and hostile data in the watched tables."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

from pipemon.config import Config, ConfigError, load
from testkit.app import queue_source, sample
from testkit.net import wait_until

KEYS = ["name", "kind", "dsn", "dsn_file", "interval", "timeout", "table", "columns", "states",
        "preset", "stuck_after", "queues", "checks", "bucket", "endpoint_url", "base_url",
        "secret_key", "success", "duration_seconds", "peak_dbfs", "loudness_lufs", "inventory",
        "tools", "scratch", "labels", "x"]
KINDS = ["queue", "analysis", "storage", "checks", "host", "trigger_dev", "nope"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["15s", "0s", "-1s", "5m", "1h30m",
                                                           "${UNSET}", "$${X}", "99999d"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), inner, max_size=5),
), max_leaves=20)
source = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=12), st.integers()), "kind": st.sampled_from(KINDS)},
    optional={key: values for key in KEYS if key not in ("name", "kind")})
documents = st.one_of(
    values,
    st.fixed_dictionaries({"sources": st.lists(source, max_size=3)},
                          optional={"defaults": values, "extra": values}),
)


def load_text(text: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text)
        return load(path, env={})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_config_document_is_valid_or_a_clean_error(document):
    try:
        result = load_text(yaml.safe_dump(document))
    except ConfigError as err:
        assert err.problems and all(isinstance(p, str) and "\n" not in p for p in err.problems)
    else:
        assert isinstance(result, Config)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_valid_or_a_clean_error(text):
    try:
        load_text(text)
    except ConfigError as err:
        assert err.problems


def problems(tmp_path, sources) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": sources}))
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    return [p.split(": ", 1)[1] for p in err.value.lines()]


def test_hostile_config_values(tmp_path):
    (tmp_path / "a_dir").mkdir()
    base = queue_source("postgresql://u@localhost/db")
    found = problems(tmp_path, [
        {**base, "interval": "99999d"},
        {**base, "name": "b", "timeout": "0s"},
        {**base, "name": "c", "dsn": None, "dsn_file": "a_dir"},
        {**base, "name": "d", "stuck_after": "-5m"},
    ])
    assert found == [
        "sources[0].interval: '99999d' is longer than a year",
        "sources[1].timeout: must be greater than zero, got '0s'",
        "sources[2].dsn_file: cannot read 'a_dir': Is a directory",
        "sources[3].stuck_after: expected a duration like 15s, 5m or 1h30m, got '-5m'",
    ]


def test_bad_audio_level_config(tmp_path):
    """Level layouts may be negative but must increase; each problem is one line naming the
    file, the key and what is wrong."""
    base = {"name": "a", "kind": "analysis", "dsn": "postgresql://u@localhost/db",
            "peak_dbfs": "peak_dbfs", "loudness_lufs": "loudness_lufs"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": [
        {**base, "buckets": {"peak": [-6, -3, -3, 0], "loudness": [-14, -20]}},
        {**base, "name": "b", "buckets": {"peak": ["-3dB"], "loudness": [-14, ".inf"]}},
        {**base, "name": "c", "buckets": {"peak": [], "loudness": [float("inf")]}},
        {**base, "name": "d", "peak_dbfs": None, "clipping_dbfs": -1},
        {**base, "name": "e", "clipping_dbfs": "loud", "loudness_lufs": ""},
    ]}))
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert err.value.lines() == [f"{path}: {line}" for line in [
        "sources[0].buckets.peak: bounds must increase, got -3 then -3",
        "sources[0].buckets.loudness: bounds must increase, got -14 then -20",
        "sources[1].buckets.peak: expected a number, got '-3dB'",
        "sources[1].buckets.loudness: expected a number, got '.inf'",
        "sources[2].buckets.peak: expected a non-empty list of numbers, got a list",
        "sources[2].buckets.loudness: expected finite numbers (+Inf is always the last bucket)",
        "sources[3].clipping_dbfs: not used without peak_dbfs (the expression of the peak level"
        " it is compared with)",
        "sources[4].loudness_lufs: expected a non-empty string, got ''",
        "sources[4].clipping_dbfs: expected a number, got 'loud'",
    ]]


@pytest.mark.postgres
def test_a_second_statement_in_a_config_expression_cannot_run(make_app, pg_dsn, db):
    app = make_app([{"name": "analysis", "kind": "analysis", "dsn": pg_dsn,
                     "success": "true; DROP TABLE jobs; SELECT true"}])
    assert not app.poll_all_once()
    assert app.runners[0].last_error.reason == "sql_error"
    assert db.execute("SELECT to_regclass('jobs') IS NOT NULL").fetchone()[0]


@pytest.mark.postgres
def test_hostile_queue_names_and_nulls(make_app, pg_dsn, db):
    long_name = "stem" * 2500  # 10 KB
    odd = 'mix"down\n\\{queue="x"}'
    db.execute("INSERT INTO jobs (queue, status) VALUES (%s, 'waiting'), (%s, 'waiting'),"
               " (%s, 'waiting')", (long_name, long_name[:-1] + "X", odd))
    # every mapped column NULL, in a view without constraints
    db.execute("CREATE VIEW nulls AS SELECT NULL::bigint AS id, NULL::text AS queue,"
               " NULL::text AS status, NULL::timestamptz AS created_at, NULL::timestamptz"
               " AS run_at, NULL::timestamptz AS started_at, NULL::timestamptz AS finished_at"
               " UNION ALL SELECT id, queue, status, created_at, run_at, started_at,"
               " finished_at FROM jobs")
    app = make_app([queue_source(pg_dsn, table="nulls")])
    assert app.poll_all_once(), app.health()
    text = generate_latest(app.registry).decode()
    parsed = {tuple(sorted(s.labels.items())): s.value
              for family in text_string_to_metric_families(text)
              for s in family.samples if s.name == "pipemon_queue_jobs"}
    queues = {dict(labels)["queue"] for labels in parsed}
    assert odd in queues  # quotes, newline and backslash survive, escaped on the wire
    long_labels = [q for q in queues if q.startswith("stemstem")]
    assert len(long_labels) == 2 and all(len(q) == 128 for q in long_labels)
    assert sample(app, "pipemon_queue_unmapped_jobs", source="stems", raw_state="(null)") == 1


@pytest.mark.postgres
def test_a_hundred_thousand_queue_names_stay_capped(make_app, pg_dsn, db):
    db.execute("INSERT INTO jobs (queue, status) SELECT 'q' || i, 'waiting'"
               " FROM generate_series(1, 100000) i")
    app = make_app([queue_source(pg_dsn, max_queues=50, timeout="30s", interval="60s")])
    assert app.poll_all_once(), app.health()
    queues = {s.labels["queue"] for m in app.registry.collect() for s in m.samples
              if s.name == "pipemon_queue_jobs"}
    assert len(queues) == 51 and "other" in queues
    assert sample(app, "pipemon_queue_jobs", source="stems", queue="other",
                  state="waiting") == 100000 - 50
    # the diagnostic counts the folded names, up to its own bound
    assert sample(app, "pipemon_source_folded_label_values", source="stems",
                  label="queue") == 10000


@pytest.mark.postgres
def test_future_timestamps_and_writer_clock_skew(make_app, pg_dsn, db):
    """A writer whose clock runs ahead is counted once; one that runs behind by less than
    late_commit_window is still counted (docs/exporter.md: the window bounds the skew)."""
    app = make_app([queue_source(pg_dsn)])
    ids = [r[0] for r in db.execute("INSERT INTO jobs (queue, status) SELECT 'q', 'waiting'"
                                    " FROM generate_series(1, 2) RETURNING id").fetchall()]
    assert app.poll_all_once()
    started = db.execute("SELECT now()").fetchone()[0]
    wait_until(lambda: db.execute("SELECT now() > %s + interval '3 seconds'",
                                  (started,)).fetchone()[0], 10, "3 s of database time")
    assert app.poll_all_once()  # the watermark is now past what the slow writer will write
    db.execute("UPDATE jobs SET status = 'succeeded', started_at = now(),"
               " finished_at = now() + interval '1 hour' WHERE id = %s", (ids[0],))
    db.execute("UPDATE jobs SET status = 'succeeded', started_at = now() - interval '2 min',"
               " finished_at = now() - interval '2.5 seconds' WHERE id = %s", (ids[1],))
    counts = []
    for _ in range(3):
        assert app.poll_all_once()
        counts.append(sample(app, "pipemon_queue_jobs_finished_total", source="stems",
                             queue="q", outcome="succeeded"))
    assert counts == [2, 2, 2]
    # one job "finished" an hour after it started, by a clock running ahead
    assert sample(app, "pipemon_queue_job_run_seconds_bucket", source="stems", queue="q",
                  outcome="succeeded", le="3600.0") == 2


@pytest.mark.postgres
def test_sql_ascii_database_with_invalid_utf8(make_app, postgres_server):
    name = "pipemon_t_sql_ascii"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C'"
                      " LC_CTYPE 'C' TEMPLATE template0")
    dsn = make_conninfo(postgres_server, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((Path(__file__).parent.parent / "examples" / "schema.sql").read_text())
            conn.execute("INSERT INTO jobs (queue, status) VALUES (convert_from("
                         "'\\xfffe71'::bytea, 'SQL_ASCII'), 'waiting'), ('plain', 'running')")
        app = make_app([queue_source(dsn)])
        assert app.poll_all_once(), app.health()
        assert sample(app, "pipemon_queue_jobs", source="stems", queue="\ufffd\ufffdq",
                      state="waiting") == 1
        assert sample(app, "pipemon_queue_jobs", source="stems", queue="plain",
                      state="running") == 1
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
