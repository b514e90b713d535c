"""A source's constant `labels:` (and `defaults.labels`) on every series of that source, in
both text formats, and nowhere else; check columns cannot take their names."""

from __future__ import annotations

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from pipemon.metrics import CounterSet, Families, HistogramSet, Spec, add_sample
from testkit.app import queue_source, sample

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
COUNTER = Spec("pipemon_c", "counter", "c", ("source", "queue"))
GAUGE = Spec("pipemon_g", "gauge", "g", ("source", "queue"))
HISTOGRAM = Spec("pipemon_h", "histogram", "h", ("source", "queue"))
SELF = Spec("pipemon_build", "gauge", "b", ("version",))


def samples_of(body: bytes, openmetrics: bool = False) -> list:
    parse = om_families if openmetrics else text_string_to_metric_families
    return [s for family in parse(body.decode()) for s in family.samples]


def test_each_family_type_gets_the_labels_of_its_source_only():
    families = Families({"a": {"env": "prod", "team": "media"}})
    counts, times = CounterSet(), HistogramSet((1.0, 5.0))
    counts.inc(("q",))
    times.observe(("q",), 2.0)
    for source in ("a", "b"):
        families(GAUGE).add_metric([source, "q"], 1)
        counts.emit(families(COUNTER), (source,))
        times.emit(families(HISTOGRAM), (source,))
        add_sample(families(Spec("pipemon_check_value", "gauge", "v", ("source", "check"))),
                   {"source": source, "check": "x", "region": "eu"}, 3)
    families(SELF).add_metric(["1.0"], 1)
    seen = {}
    for family in families:
        for s in family.samples:
            seen.setdefault(s.labels.get("source"), set()).add(
                (s.name, s.labels.get("env"), s.labels.get("team")))
    assert {env for _, env, _ in seen["a"]} == {"prod"}
    assert {team for _, _, team in seen["a"]} == {"media"}
    assert {(env, team) for _, env, team in seen["b"]} == {(None, None)}
    assert seen[None] == {("pipemon_build", None, None)}
    # the histogram's rendered lines carry them too, and only for its source
    [lines_a, lines_b] = families(HISTOGRAM).lines
    assert lines_a.count('env="prod"') == lines_a.count("\n") == 5
    assert "env=" not in lines_b


def test_a_histogram_series_rendered_before_a_change_of_labels_is_rendered_again():
    times = HistogramSet((1.0,))
    times.observe(("q",), 0.5)
    times.emit(Families({"a": {"env": "staging"}})(HISTOGRAM), ("a",))
    family = Families({"a": {"env": "prod"}})(HISTOGRAM)
    times.emit(family, ("a",))
    assert {s.labels["env"] for s in family.samples} == {"prod"}
    assert 'env="staging"' not in family.lines[0]


@pytest.mark.postgres
def test_labels_reach_every_series_of_their_source_in_both_formats(make_app, pg_dsn, db):
    app = make_app([
        queue_source(pg_dsn, labels={"team": "media", "pipeline": "stems"}),
        {"name": "integrity", "kind": "checks", "dsn": pg_dsn, "labels": {"env": "staging"},
         "checks": [{"name": "by_queue", "sql": "SELECT 'q' AS queue, 2 AS value"},
                    {"name": "clash", "sql": "SELECT 'x' AS team, 1 AS value"}]},
    ], defaults={"labels": {"env": "prod", "team": "platform"}})
    assert app.poll_all_once(), app.health()
    db.execute("INSERT INTO jobs (queue, status, created_at, started_at, finished_at)"
               " VALUES ('q', 'succeeded', now(), now(), now()), ('q', 'waiting', now(),"
               " NULL, NULL)")
    assert app.poll_all_once(), app.health()

    want = {"stems": {"env": "prod", "team": "media", "pipeline": "stems"},
            "integrity": {"env": "staging", "team": "platform"}}
    for content_type in ("text/plain", OPENMETRICS):
        _, _, body = app.exposition.body(content_type, None)
        samples = samples_of(body, openmetrics=content_type == OPENMETRICS)
        by_source: dict = {}
        for s in samples:
            source = s.labels.get("source")
            extra = {k: s.labels.get(k) for k in ("env", "team", "pipeline")
                     if k in s.labels}
            assert extra == want.get(source, {}), (content_type, s)
            by_source[source] = by_source.get(source, 0) + 1
        assert by_source["stems"] > 50 and by_source["integrity"] >= 4, by_source
        assert None in by_source  # pipemon_build_info and the config gauges: no source, none

    labels = want["stems"]
    assert sample(app, "pipemon_queue_jobs", source="stems", queue="q", state="waiting",
                  **labels) == 1
    assert sample(app, "pipemon_queue_jobs_finished_total", source="stems", queue="q",
                  outcome="succeeded", **labels) == 1
    assert sample(app, "pipemon_check_value", source="integrity", check="by_queue",
                  queue="q", env="staging", team="platform") == 2
    # a check column named like a constant label would make two `team` labels: refused
    assert sample(app, "pipemon_check_up", source="integrity", check="clash",
                  env="staging", team="platform") == 0
    assert sample(app, "pipemon_check_errors_total", source="integrity", check="clash",
                  reason="bad_label", env="staging", team="platform") >= 1
