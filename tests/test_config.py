"""Config loading: interpolation, secrets from files, durations, and one clear line per problem."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from pipemon import metrics as m
from pipemon.config import ConfigError, interpolate, load
from pipemon.kinds import KINDS
from pipemon.schema import duration
from pipemon.sources.queue import PRESETS
from testkit import ROOT

EXAMPLE = ROOT / "examples" / "pipemon.yaml"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipemon", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def problems_of(tmp_path, document: dict, env: dict | None = None) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load(path, env=env or {})
    return err.value.lines()


def queue(**overrides):
    source = {
        "name": "stems", "kind": "queue", "dsn": "postgresql://u@localhost/db", "table": "jobs",
        "columns": {"id": "id", "state": "status", "created_at": "created_at",
                    "finished_at": "finished_at"},
    }
    source.update(overrides)
    return source


def test_example_config_is_valid_and_complete():
    config = load(EXAMPLE, env={})
    stems, analysis = config.sources
    assert (stems.kind, stems.interval, stems.timeout, stems.stuck_after) == \
        ("queue", 15, 5, 1800)
    assert stems.columns.available_at == "run_at"
    assert stems.states["running"] == "running"
    assert (analysis.kind, analysis.table, analysis.cols.read_by) == \
        ("analysis", "audio_events_cache", "created_at")
    assert analysis.duration_seconds == "processing_ms / 1000.0"


@pytest.mark.parametrize(("text", "seconds"), [
    ("15s", 15), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400), ("0s", 0),
])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "5 minutes", "m", "", "1x", 15])
def test_durations_without_unit_are_refused(text):
    with pytest.raises(ValueError, match="expected a duration"):
        duration(text)


def test_interpolation_with_defaults_and_escapes():
    env = {"HOST": "db.internal", "EMPTY": ""}
    assert interpolate("postgresql://${HOST}:${PORT:-5432}/x", env) == \
        "postgresql://db.internal:5432/x"
    assert interpolate("${EMPTY:-fallback} $${HOST}", env) == "fallback ${HOST}"
    with pytest.raises(ValueError, match="environment variable MISSING is not set"):
        interpolate("${MISSING}", env)


def test_secret_from_file_relative_to_config(tmp_path):
    (tmp_path / "dsn.txt").write_text("postgresql://u:pw@localhost/db\n")
    path = tmp_path / "c.yaml"
    source = queue(dsn_file="dsn.txt")
    del source["dsn"]
    path.write_text(yaml.safe_dump({"sources": [source]}))
    config = load(path, env={})
    assert config.sources[0].dsn.reveal() == "postgresql://u:pw@localhost/db"
    assert "pw" not in repr(config)


def test_every_problem_is_reported_with_its_path(tmp_path):
    bad_columns = {"id": "id", "created_at": "c", "finished_at": "f", "colour": "x"}
    lines = problems_of(tmp_path, {
        "sources": [
            queue(),
            queue(name="second", columns=bad_columns, interval="10", stuck_after="soon",
                  states={"done": "finished"}),
            {"name": "a", "kind": "analysis", "dsn": "${NOT_SET}", "tabel": "x"},
            {"name": "b", "kind": "kafka"},
            queue(),
        ],
        "extra": 1,
    })
    file = str(tmp_path / "bad.yaml")
    expected = [
        "sources[1].interval: expected a duration like 15s, 5m or 1h30m, got '10'",
        "sources[1].columns.state: required",
        "sources[1].columns.colour: unknown key",
        "sources[1].states.done: expected one of scheduled, waiting, running, retrying, "
        "succeeded, failed, cancelled, got 'finished'",
        "sources[1].stuck_after: expected a duration like 15s, 5m or 1h30m, got 'soon'",
        "sources[2].dsn: environment variable NOT_SET is not set",
        "sources[2].tabel: unknown key",
        f"sources[3].kind: expected one of {', '.join(sorted(KINDS))}, got 'kafka'",
        "sources[4].name: duplicate source name 'stems'",
        "extra: unknown key",
    ]
    assert sorted(lines) == sorted(f"{file}: {line}" for line in expected)


def test_bucket_layouts_are_checked(tmp_path):
    lines = problems_of(tmp_path, {"sources": [
        queue(name="a", buckets={"run": ["1m", "30s"], "wait": {"min": "1s", "max": "1h"}}),
        queue(name="b", buckets={"run": [f"{n}s" for n in range(1, 102)], "wait": "fine"}),
        {"name": "c", "kind": "analysis", "dsn": "postgresql://u@h/d",
         "buckets": {"duration": {"min": "1m", "max": "1s", "count": 5}, "colour": 1}},
    ]})
    file = str(tmp_path / "bad.yaml")
    assert sorted(lines) == sorted(f"{file}: {line}" for line in [
        "sources[0].buckets.run: bounds must increase, got 60s then 30s",
        "sources[0].buckets.wait: expected the keys min, max and count, got min, max",
        "sources[1].buckets.run: 101 bounds, at most 100: each is a series",
        "sources[1].buckets.wait: expected a list of durations or a mapping with min, max and"
        " count, got 'fine'",
        "sources[2].buckets.duration: expected min < max and count >= 2",
        "sources[2].buckets.colour: unknown key",
    ])


def test_a_log_scale_layout_is_rounded_to_three_digits(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"sources": [queue(buckets={
        "run": {"min": "10s", "max": "10h", "count": 7}})]}))
    (source,) = load(path, env={}).sources
    # 3.9x apart, from 10 s to 10 h, as Go's ExponentialBucketsRange(10, 36000, 7) rounded
    assert source.buckets.run == (10.0, 39.1, 153.0, 600.0, 2350.0, 9200.0, 36000.0)
    assert source.buckets.wait == m.JOB_SECONDS_BUCKETS  # not given: the default layout


def test_dsn_and_dsn_file_conflict_and_unreadable_file(tmp_path):
    lines = problems_of(tmp_path, {"sources": [
        queue(dsn_file="x"), queue(name="b", dsn=None, dsn_file="missing.txt"),
        queue(name="c", dsn="postgresql://u:hunter2@[oops/db"),
    ]})
    assert any(line.endswith("sources[0].dsn: set either dsn or dsn_file, not both")
               for line in lines)
    assert any("sources[1].dsn_file: cannot read 'missing.txt'" in line for line in lines)
    assert any("sources[2].dsn: invalid DSN" in line for line in lines)
    assert not any("hunter2" in line for line in lines), lines


def test_presets_need_only_a_dsn_and_refuse_generic_keys(tmp_path):
    path = tmp_path / "presets.yaml"
    path.write_text(yaml.safe_dump({"sources": [
        {"name": p, "kind": "queue", "preset": p, "dsn": "postgresql://u@h/db"}
        for p in ("procrastinate", "pgboss", "graphile_worker")]}))
    assert [s.preset for s in load(path, env={}).sources] == \
        ["procrastinate", "pgboss", "graphile_worker"]
    lines = problems_of(tmp_path, {"sources": [
        {**queue(), "preset": "pgboss"}, {**queue(name="b"), "preset": "celery"}]})
    file = tmp_path / "bad.yaml"
    assert sorted(lines) == sorted([
        f"{file}: sources[0].table: not used with preset pgboss: the preset knows its schema",
        f"{file}: sources[0].columns: not used with preset pgboss: the preset knows its schema",
        f"{file}: sources[1].preset: expected one of generic, procrastinate, pgboss, "
        "graphile_worker, pgqueuer, pgmq, oban, river, got 'celery'",
    ])


def test_timeout_longer_than_interval_is_refused(tmp_path):
    lines = problems_of(tmp_path, {"sources": [queue(interval="5s", timeout="10s")]})
    assert lines == [f"{tmp_path / 'bad.yaml'}: sources[0].timeout: must not exceed interval "
                     "(5s): polls would overlap"]


def test_check_config_cli_valid():
    result = run_cli("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == \
        f"{EXAMPLE}: valid: 2 sources (1 analysis, 1 queue): stems, analysis"


def test_queue_library_example_is_valid_and_names_every_preset():
    """examples/queues.yaml has a source for each library preset (the preset tests run theirs)."""
    example = ROOT / "examples" / "queues.yaml"
    env = {**os.environ, "PIPEMON_POSTGRES_DSN": "postgresql://pipemon@db.internal/app"}
    result = run_cli("check-config", str(example), env=env)
    assert result.returncode == 0, result.stderr
    presets = {s.preset for s in load(example, env=env).sources}
    assert presets == set(PRESETS) - {"generic"}


@pytest.mark.parametrize("content", [
    "sources: [ {name: x",          # YAML syntax
    "- just\n- a list\n",           # wrong top-level type
    "sources:\n  - name: x\n    kind: queue\n    table: jobs\n",
])
def test_check_config_cli_invalid_exits_2_without_traceback(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith(f"{path}: ") for line in lines), result.stderr
    assert result.stdout == ""


def test_check_config_cli_missing_file(tmp_path):
    result = run_cli("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: cannot read file: " \
        "No such file or directory"


def test_serve_with_invalid_config_starts_nothing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sources: []\n")
    result = run_cli("serve", "--config", str(path), "--web.listen-address", "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}: sources: expected a non-empty list of sources"


def test_constant_labels_merge_over_the_defaults(tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text(yaml.safe_dump({
        "defaults": {"labels": {"env": "prod", "team": "platform"}},
        "sources": [queue(labels={"team": "media", "tier": 1}), queue(name="other")]}))
    media, other = load(path, env={}).sources
    assert media.labels == {"env": "prod", "team": "media", "tier": "1"}
    assert other.labels == {"env": "prod", "team": "platform"}


@pytest.mark.parametrize(("labels", "problem"), [
    ({"1env": "x"}, "sources[0].labels.1env: not a Prometheus label name"),
    ({"__env": "x"}, "sources[0].labels.__env: not a Prometheus label name"),
    ({"queue": "x"}, "sources[0].labels.queue: a label of pipemon's own series"),
    ({"le": "x"}, "sources[0].labels.le: a label of pipemon's own series"),
    ({"instance": "x"}, "sources[0].labels.instance: Prometheus sets 'instance' on every series"),
    ({"namespace": "x"}, "sources[0].labels.namespace: Prometheus sets 'namespace'"),
    ({"severity": "x"}, "sources[0].labels.severity: the rules set 'severity' on alerts"),
    ({"env": ""}, "sources[0].labels.env: expected a non-empty string"),
    ({"env": "a\nb"}, "sources[0].labels.env: expected one line of at most 128 characters"),
    ({"env": ["a"]}, "sources[0].labels.env: expected a non-empty string, got a list"),
    ("prod", "sources[0].labels: expected a mapping"),
])
def test_bad_constant_labels_are_named(tmp_path, labels, problem):
    lines = problems_of(tmp_path, {"sources": [queue(labels=labels)]})
    assert any(problem in line for line in lines), lines
