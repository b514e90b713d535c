"""The SQL checks source against a real PostgreSQL: the example integrity checks on a database
seeded with known violations, broken checks next to good ones, labels and their cap."""

from __future__ import annotations

import pytest
import yaml

from pipemon.config import ConfigError, load
from testkit import ROOT
from testkit.app import sample, write_config
from testkit.net import free_port, wait_until

pytestmark = pytest.mark.postgres

INTEGRITY_SCHEMA = (ROOT / "examples" / "integrity_schema.sql").read_text()
EXAMPLE = ROOT / "examples" / "checks.yaml"


@pytest.fixture
def integrity(db):
    """The tracks/posts schema with known violations (the counts each check must find)."""
    db.execute(INTEGRITY_SCHEMA)
    db.execute("INSERT INTO tracks (title) SELECT 'track ' || g FROM generate_series(1, 5) g")
    db.execute("INSERT INTO posts (post_type, track_id) VALUES"
               " ('audio', 1), ('audio', 2), ('audio', 3), ('audio', 4),"  # migrated
               " ('audio', NULL), ('audio', NULL), ('audio', NULL),"       # 3 without a track
               " ('text', NULL), ('text', NULL)")
    db.execute("INSERT INTO playlist_entries (playlist_id, track_id, position) VALUES"
               " (1, 1, 1), (1, 2, 2), (1, 99, 3), (2, 100, 1), (3, 100, 1)")  # 3 dangling
    return db


def value(app, check, source="integrity", **labels):
    return sample(app, "pipemon_check_value", source=source, check=check, **labels)


def up(app, check, source="integrity"):
    return sample(app, "pipemon_check_up", source=source, check=check)


def errors(app, check, reason, source="integrity"):
    return sample(app, "pipemon_check_errors_total", source=source, check=check, reason=reason)


def checks_source(dsn: str, checks: list[dict], **overrides) -> dict:
    source = {"name": "integrity", "kind": "checks", "dsn": dsn, "interval": "30s",
              "timeout": "5s", "checks": checks}
    source.update(overrides)
    return source


def test_example_integrity_checks_give_exact_values(make_app, pg_dsn, integrity):
    [source] = yaml.safe_load(EXAMPLE.read_text())["sources"]
    integrity.execute("INSERT INTO tracks (title, created_at) VALUES"  # ids 6 and 7
                      " ('half an hour ago', now() - interval '30 minutes'),"
                      " ('two hours ago', now() - interval '2 hours')")
    integrity.execute("INSERT INTO posts (post_type, track_id)"
                      " VALUES ('audio', 98), ('audio', 99)")  # 2 to no track
    app = make_app([{**source, "dsn": pg_dsn}])
    assert app.poll_all_once()

    assert value(app, "audio_posts_without_track") == 3
    assert value(app, "playlist_entries_missing_track") == 3
    assert value(app, "posts_with_missing_track") == 2
    assert value(app, "migration_progress_percent") == 66.67  # 6 of 9 have a track_id
    assert value(app, "audio_posts_migrated") == 6
    assert value(app, "tracks_created", period="5m") == 5
    assert value(app, "tracks_created", period="1h") == 6
    ratio = value(app, "db_connection_usage_ratio")
    max_connections = int(integrity.execute("SHOW max_connections").fetchone()[0])
    connections = ratio * max_connections  # at least this test's and pipemon's
    assert connections == round(connections) >= 2
    for check in ("audio_posts_without_track", "playlist_entries_missing_track",
                  "posts_with_missing_track", "tracks_created",
                  "migration_progress_percent", "audio_posts_migrated",
                  "db_connection_usage_ratio"):
        assert up(app, check) == 1

    # The migration finishes and the data is repaired: every check follows.
    integrity.execute("UPDATE posts SET track_id = 5"
                      " WHERE post_type = 'audio' AND track_id IS NULL")
    integrity.execute("DELETE FROM playlist_entries WHERE track_id > 5")
    integrity.execute("UPDATE posts SET track_id = 5 WHERE track_id > 7")
    app = make_app([{**source, "dsn": pg_dsn}])  # a fresh one: every check is due at once
    assert app.poll_all_once()
    assert value(app, "audio_posts_without_track") == 0
    assert value(app, "playlist_entries_missing_track") == 0
    assert value(app, "posts_with_missing_track") == 0
    assert value(app, "migration_progress_percent") == 100
    assert value(app, "audio_posts_migrated") == 9

    integrity.execute("DELETE FROM posts WHERE post_type = 'audio'")
    app = make_app([{**source, "dsn": pg_dsn}])
    assert app.poll_all_once()
    assert value(app, "migration_progress_percent") == 100  # no audio post: nothing to migrate


BROKEN = [
    ("bad_sql", "SELEC 1 AS value", "sql_error"),
    ("missing_table", "SELECT count(*) AS value FROM no_such_table", "schema"),
    ("no_value", "SELECT 1 AS n", "no_value"),
    ("non_numeric", "SELECT 'abc' AS value", "non_numeric"),
    ("null_value", "SELECT NULL::int AS value", "null_value"),
    ("too_many_rows", "SELECT g AS value, g AS n FROM generate_series(1, 4) g", "too_many_rows"),
    ("bad_label", 'SELECT 1 AS value, 2 AS "bad-label"', "bad_label"),
    ("duplicate_labels", "SELECT 1 AS value, 'x' AS n UNION ALL SELECT 2, 'x'",
     "duplicate_labels"),
    ("slow", "SELECT 1 AS value FROM pg_sleep(3)", "timeout"),
]


def test_broken_checks_are_reported_and_do_not_stop_the_others(make_app, pg_dsn, integrity):
    checks = [{"name": "before", "sql": "SELECT count(*) AS value FROM tracks"}]
    checks += [{"name": name, "sql": sql} for name, sql, _ in BROKEN]
    checks += [{"name": "after", "sql": "SELECT count(*) AS value FROM posts;"}]
    checks[-2]["timeout"] = "500ms"  # slow
    app = make_app([checks_source(pg_dsn, checks, max_rows=3)])
    assert app.poll_all_once()  # the database answered: the poll succeeded

    assert sample(app, "pipemon_source_up", source="integrity", kind="checks") == 1
    assert (value(app, "before"), value(app, "after")) == (5, 9)
    assert (up(app, "before"), up(app, "after")) == (1, 1)
    for name, _, reason in BROKEN:
        assert up(app, name) == 0, name
        assert errors(app, name, reason) == 1, name
        assert value(app, name) is None, name
    # every reason is exported for every check, at 0 until it happens
    assert errors(app, "before", "deadline") == 0
    assert errors(app, "bad_sql", "timeout") == 0


def test_label_columns_become_labels_capped_per_column(make_app, pg_dsn, integrity):
    app = make_app([checks_source(pg_dsn, [
        {"name": "posts_by_type",
         "sql": "SELECT post_type, count(*) AS value FROM posts GROUP BY post_type"},
        {"name": "capped",
         "sql": "SELECT item, n AS value, 7 AS shard FROM (VALUES ('a', 1), ('b', 2), ('c', 3),"
                " ('d', 4.5)) v (item, n) ORDER BY item"},
    ], max_label_values=2)])
    assert app.poll_all_once()
    assert value(app, "posts_by_type", post_type="audio") == 7
    assert value(app, "posts_by_type", post_type="text") == 2
    # a and b admitted; c and d folded into `other` and summed
    assert value(app, "capped", item="a", shard="7") == 1
    assert value(app, "capped", item="b", shard="7") == 2
    assert value(app, "capped", item="other", shard="7") == 7.5
    assert sample(app, "pipemon_source_folded_label_values", source="integrity",
                  label="capped.item") == 2
    assert sample(app, "pipemon_source_folded_label_values", source="integrity",
                  label="capped.shard") == 0


def test_long_label_values_sharing_a_long_start_stay_two_series(make_app, pg_dsn, integrity):
    """Two paths that differ only after their first 200 characters are two series (cut to
    128 characters with a hash of the whole), not a failed check."""
    app = make_app([checks_source(pg_dsn, [
        {"name": "by_path",
         "sql": "SELECT repeat('x', 250) || suffix AS path, n AS value"
                " FROM (VALUES ('/a', 1), ('/b', 2)) v (suffix, n)"},
    ])])
    assert app.poll_all_once()
    assert up(app, "by_path") == 1, app.runners[0].source.describe()
    values = sorted(s.value for family in app.registry.collect() for s in family.samples
                    if s.name == "pipemon_check_value" and s.labels["check"] == "by_path")
    assert values == [1, 2]
    assert errors(app, "by_path", "duplicate_labels") == 0


def test_each_check_runs_on_its_own_interval(make_app, pg_dsn, integrity):
    count = "SELECT count(*) AS value FROM tracks"
    app = make_app([checks_source(pg_dsn, [
        {"name": "often", "sql": count},
        {"name": "rarely", "sql": count, "interval": "10m"},
    ], interval="1s", timeout="1s")])
    assert app.poll_all_once()
    integrity.execute("INSERT INTO tracks (title) VALUES ('new')")
    wait_until(lambda: app.poll_all_once() and value(app, "often") == 6, 5,
               "the frequent check to see the new track")
    assert value(app, "rarely") == 5  # not run again yet: its last value stays


def test_checks_cut_off_by_the_deadline_run_first_next_time(make_app, pg_dsn, integrity):
    app = make_app([checks_source(pg_dsn, [
        {"name": "slow", "sql": "SELECT 1 AS value FROM pg_sleep(3)"},
        {"name": "quick", "sql": "SELECT 2 AS value"},
    ], interval="1s", timeout="1s")])
    assert app.poll_all_once()
    assert errors(app, "slow", "timeout") == 1
    assert errors(app, "quick", "deadline") == 1
    assert up(app, "quick") == 0

    assert app.poll_all_once()
    assert value(app, "quick") == 2  # ran first this time
    assert errors(app, "slow", "timeout") == 2


def test_unreachable_database_fails_the_poll_not_the_checks(make_app):
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    app = make_app([checks_source(nowhere, [{"name": "c", "sql": "SELECT 1 AS value"}],
                                  timeout="2s")])
    assert not app.poll_all_once()
    assert sample(app, "pipemon_source_up", source="integrity", kind="checks") == 0
    assert sample(app, "pipemon_source_poll_errors_total", source="integrity", kind="checks",
                  reason="connect") == 1
    assert up(app, "c") is None
    assert errors(app, "c", "timeout") == 0


def test_example_checks_config_is_valid():
    [source] = load(EXAMPLE, env={}).sources
    assert [c.name for c in source.checks] == [
        "audio_posts_without_track", "playlist_entries_missing_track",
        "posts_with_missing_track", "tracks_created",
        "migration_progress_percent", "audio_posts_migrated", "db_connection_usage_ratio"]
    assert [c.interval for c in source.checks] == [60, 60, 60, 60, 60, 60, 30]


def test_config_problems_are_reported(tmp_path):
    path = write_config(tmp_path / "bad.yaml", [checks_source("postgresql://u@h/db", [
        {"name": "a", "sql": "SELECT 1 AS value", "interval": "10s", "timeout": "10s"},
        {"name": "a", "sql": "SELECT 1 AS value", "colour": "red"},
        {"name": "b"},
        "SELECT 1",
    ])])
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert sorted(err.value.problems) == sorted([
        "sources[0].checks[0].interval: must not be shorter than the source's interval (30s):"
        " checks run at most once a poll",
        "sources[0].checks[0].timeout: must not exceed the source's timeout (5s), the deadline"
        " of a poll",
        "sources[0].checks[1].colour: unknown key",
        "sources[0].checks[1].name: duplicate check name 'a'",
        "sources[0].checks[2].sql: required",
        "sources[0].checks[3]: expected a mapping with name and sql",
    ])
