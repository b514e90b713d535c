"""pipemon's encoders render what prometheus_client's would, byte for byte, and hand every
request they do not cover back to prometheus_client."""

from __future__ import annotations

import itertools
import math

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder

from pipemon import encoders
from pipemon.metrics import add_sample

PROMETHEUS_2_42_ACCEPT = ("application/openmetrics-text;version=1.0.0,"
                          "application/openmetrics-text;version=0.0.1;q=0.75,"
                          "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
ACCEPTS = [
    None, "", "*/*", "text/plain", "text/plain;version=0.0.4", PROMETHEUS_2_42_ACCEPT,
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text; version=1.0.0; escaping=underscores",
    "application/openmetrics-text",
]


def families():
    jobs = GaugeMetricFamily("pipemon_queue_jobs", 'Jobs "now", by state.\nSecond line \\ ok.',
                             labels=["source", "queue", "state"])
    jobs.add_metric(["jobs", "stems", "waiting"], 12)
    jobs.add_metric(["jobs", 'a "quoted" \\ queue\nwith a newline', "running"], 0.5)
    jobs.add_metric(["jobs", "ünïcode ♫", "retrying"], math.nan)
    jobs.add_metric(["jobs", "x", "scheduled"], -math.inf)
    jobs.add_metric(["jobs", "y", "scheduled"], 1e22)
    jobs.add_metric(["jobs", "z", "scheduled"], 123456789.0)
    yield jobs
    info = GaugeMetricFamily("pipemon_build_info", "Version.", labels=["version"])
    info.add_metric(["1.0"], 1)
    yield info
    yield GaugeMetricFamily("pipemon_config_last_reload_successful", "No labels.", value=1)
    finished = CounterMetricFamily("pipemon_queue_jobs_finished_total", "Finished.",
                                   labels=["source", "queue", "outcome"])
    finished.add_metric(["jobs", "stems", "failed"], 3)
    finished.add_metric(["jobs", "stems", "succeeded"], 1234567)
    yield finished
    run = HistogramMetricFamily("pipemon_queue_job_run_seconds", "Run time.",
                                labels=["source", "queue", "outcome"])
    run.add_metric(["jobs", "stems", "succeeded"],
                   [("1.0", 1), ("2.5", 2), ("3600.0", 7), ("1e+06", 8), ("+Inf", 9)], 7300.25)
    yield run
    check = GaugeMetricFamily("pipemon_check_value", "Checks.", labels=["source", "check"])
    add_sample(check, {"source": "sql", "check": "orphans", "table": "posts", "zone": "b"}, 4)
    yield check
    yield GaugeMetricFamily("pipemon_empty", "A family without samples.", labels=["source"])


def client_render(accept):
    registry = CollectorRegistry(auto_describe=False)

    class Collector:
        def collect(self):
            return families()

    registry.register(Collector())
    encoder, _ = choose_encoder(accept or "")
    return encoder(registry)


@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_same_bytes_as_prometheus_client(accept):
    content_type, encoder = encoders.choose(accept or "")
    assert encoder is not None, f"{accept!r} should be rendered by pipemon"
    assert content_type == choose_encoder(accept or "")[1]
    assert encoder(families()) == client_render(accept)


@pytest.mark.parametrize("accept", [
    "application/openmetrics-text; version=1.0.0; escaping=dots",
    "application/openmetrics-text; version=1.0.0; escaping=values",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text; version=2.0.0",
])
def test_schemes_that_rewrite_names_stay_with_prometheus_client(accept):
    content_type, encoder = encoders.choose(accept)
    assert encoder is None
    assert content_type == choose_encoder(accept)[1]


def test_a_name_outside_the_legacy_set_is_refused_not_mangled():
    bad = GaugeMetricFamily("pipemon_check_value", "Checks.", labels=["source"])
    add_sample(bad, {"source": "sql", "dotted.label": "x"}, 1)
    with pytest.raises(ValueError, match=r"dotted\.label"):
        encoders.encode_openmetrics([bad])


def histogram_sets():
    """pipemon's own histogram families (metrics.HistogramFamily), which carry their text."""
    from pipemon.metrics import QUEUE_RUN_SECONDS, HistogramSet

    run = HistogramSet((1, 2.5, 3600, 1e6))
    run.ensure(("stems", "failed"))
    for value in (0.5, 2.5, 7000, 2e6):
        run.observe(("stems", "succeeded"), value)
    run.observe(('a "quoted" \\ queue\nwith a newline', "succeeded"), 1)
    return run, QUEUE_RUN_SECONDS


def rendered_both_ways(run, spec, accept):
    """(pipemon's bytes from the carried text, prometheus_client's from the samples)."""
    family = spec.family()
    run.emit(family, ("jobs",))
    assert family.lined == len(family.samples) > 0, "the family should carry its samples' text"
    _, encoder = encoders.choose(accept)
    registry = CollectorRegistry(auto_describe=False)

    class Collector:
        def collect(self):
            return [family]

    registry.register(Collector())
    return encoder([family]), choose_encoder(accept)[0](registry)


@pytest.mark.parametrize("accept", [PROMETHEUS_2_42_ACCEPT, "text/plain;version=0.0.4"])
def test_histograms_rendered_once_per_change_are_the_same_bytes(accept):
    run, spec = histogram_sets()
    ours, theirs = rendered_both_ways(run, spec, accept)
    assert ours == theirs
    again, _ = rendered_both_ways(run, spec, accept)  # from the kept text this time
    assert again == ours
    run.observe(("stems", "succeeded"), 1.5)  # the kept text of that series is stale now
    ours, theirs = rendered_both_ways(run, spec, accept)
    assert ours == theirs
    assert b'le="2.5",outcome="succeeded",queue="stems",source="jobs"} 3' in ours


def test_a_histogram_family_with_samples_added_otherwise_is_rendered_sample_by_sample():
    run, spec = histogram_sets()
    family = spec.family()
    run.emit(family, ("jobs",))
    family.add_metric(["other", "q", "succeeded"], [("+Inf", 1)], 2.0)  # no text carried
    registry = CollectorRegistry(auto_describe=False)

    class Collector:
        def collect(self):
            return [family]

    registry.register(Collector())
    accept = "text/plain;version=0.0.4"
    rendered = encoders.choose(accept)[1]([family])
    assert rendered == choose_encoder(accept)[0](registry)
    assert b'source="other"' in rendered


def test_histogram_samples_are_the_ones_add_metric_makes():
    """HistogramSet builds its samples itself (only the values change between renders); they
    must be prometheus_client's, for its encoders and for everything reading the families."""
    run, spec = histogram_sets()
    for _ in range(2):  # first render, then after an observation
        ours = spec.family()
        run.emit(ours, ("jobs",))
        theirs = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
        for labels in sorted(run._counts):
            cumulative = itertools.accumulate(run._counts[labels])
            theirs.add_metric(["jobs", *labels], list(zip(run._le, cumulative, strict=True)),
                              run._sums[labels])
        assert ours.samples == theirs.samples
        run.observe(("stems", "succeeded"), 3000)


@pytest.mark.parametrize("count", [0, 1, 999_999, 1_000_000, 12_345_678, 10**17, 2.5])
def test_count_text_is_float_to_go_string(count):
    from prometheus_client.utils import floatToGoString

    from pipemon.metrics import _count_text

    assert _count_text(count) == floatToGoString(count)
