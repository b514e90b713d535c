"""Label values read from data (`label_value`, `LabelCap`) and the shapes CounterSet and
HistogramSet emit."""

from __future__ import annotations

import hashlib
import json
import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from pipemon.metrics import (
    MAX_LABEL_LENGTH,
    OTHER,
    CounterSet,
    HistogramFamily,
    HistogramSet,
    LabelCap,
    label_value,
)

# --- label_value ---


def test_short_text_unchanged():
    assert label_value("encode") == "encode"
    assert label_value("") == ""
    assert label_value("é ✓ 名前") == "é ✓ 名前"
    exact = "x" * MAX_LABEL_LENGTH
    assert label_value(exact) == exact


@pytest.mark.parametrize(("raw", "expected"), [
    (None, ""),
    (42, "42"),
    (1.5, "1.5"),
    (True, "True"),
    (b"raw", "b'raw'"),  # bytes are not decoded: their repr, never an exception
])
def test_non_text_values(raw, expected):
    assert label_value(raw) == expected


def test_long_text_keeps_its_start_and_a_hash_of_the_whole():
    text = "q" * 300
    value = label_value(text)
    assert len(value) == MAX_LABEL_LENGTH
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    assert value == "q" * (MAX_LABEL_LENGTH - 9) + "~" + digest
    assert label_value(text) == value  # stable
    assert len(label_value("x" * (MAX_LABEL_LENGTH + 1))) == MAX_LABEL_LENGTH


def test_long_values_sharing_a_long_start_stay_distinct():
    start = "tenant-42/" * 30
    a, b = label_value(start + "a"), label_value(start + "b")
    assert a != b
    assert a[:MAX_LABEL_LENGTH - 9] == b[:MAX_LABEL_LENGTH - 9] == start[:MAX_LABEL_LENGTH - 9]


def test_long_text_with_invalid_unicode_is_hashed_without_error():
    text = "\udcff" + "x" * 300  # a lone surrogate, as os.fsdecode or json.loads can produce
    value = label_value(text)
    assert len(value) == MAX_LABEL_LENGTH
    assert value.endswith("~" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:8])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_label_value_properties(text):
    value = label_value(text)
    assert len(value) <= MAX_LABEL_LENGTH
    assert label_value(text) == value
    if len(text) <= MAX_LABEL_LENGTH:
        assert value == text
    else:
        assert value.startswith(text[:MAX_LABEL_LENGTH - 9])


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=50), st.text(max_size=50), st.text(max_size=50))
def test_distinct_long_values_stay_distinct(start, end_a, end_b):
    prefix = (start * MAX_LABEL_LENGTH)[:MAX_LABEL_LENGTH]
    a, b = prefix + end_a, prefix + end_b
    if a != b:
        assert label_value(a) != label_value(b)  # up to a 32-bit hash collision


def render(value: str) -> bytes:
    class One:
        def collect(self):
            family = GaugeMetricFamily("pipemon_test", "help", labels=["queue"])
            family.add_metric([value], 1)
            yield family

    registry = CollectorRegistry()
    registry.register(One())
    return generate_latest(registry)


@pytest.mark.parametrize("length", [5, 300])
def test_label_value_from_json_with_a_lone_surrogate_renders(length):
    raw = json.loads('"queue-\\ud800"') + "x" * length
    assert b"queue-" in render(label_value(raw))


# --- LabelCap ---


def test_cap_admits_the_first_n_distinct_then_folds():
    cap = LabelCap(3)
    assert [cap(v) for v in ("a", "b", "a", "c")] == ["a", "b", "a", "c"]
    assert [cap(v) for v in ("d", "e", "d")] == [OTHER, OTHER, OTHER]
    assert cap.folded == {"d", "e"}  # distinct folded values, counted once each
    assert [cap(v) for v in ("a", "b", "c")] == ["a", "b", "c"]  # admission is for life
    assert cap("d") == OTHER  # and so is folding


def test_cap_maps_through_label_value():
    cap = LabelCap(2)
    assert cap(5) == "5"
    assert cap("5") == "5"  # the same label value: not a second admission
    assert cap(None) == ""
    assert cap("z") == OTHER
    long_a, long_b = "p" * 200 + "a", "p" * 200 + "b"
    cap = LabelCap(2)
    assert cap(long_a) != cap(long_b)  # two series, both admitted
    assert cap(long_a) == label_value(long_a)
    assert cap("p" * 200 + "c") == OTHER
    assert cap.folded == {label_value("p" * 200 + "c")}


def test_cap_of_zero_folds_everything():
    cap = LabelCap(0)
    assert cap("a") == OTHER and cap("b") == OTHER
    assert len(cap.folded) == 2


def test_folded_values_are_tracked_up_to_a_bound():
    cap = LabelCap(1)
    cap.MAX_TRACKED_FOLDED = 3
    assert cap("keep") == "keep"
    for i in range(10):
        assert cap(f"v{i}") == OTHER
    assert cap.folded == {"v0", "v1", "v2"}


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(0, 5), values=st.lists(st.text(max_size=3), max_size=40))
def test_cap_properties(limit, values):
    cap = LabelCap(limit)
    out = [cap(v) for v in values]
    distinct = list(dict.fromkeys(values))
    admitted = distinct[:limit]
    for raw, got in zip(values, out, strict=True):
        assert got == (raw if raw in admitted else OTHER)
    assert cap.folded == set(distinct[limit:])
    assert [cap(v) for v in values] == out  # stable on a second pass


def test_cap_is_thread_safe():
    cap = LabelCap(50)
    results: list[list[str]] = []

    def worker(offset: int) -> None:
        results.append([cap(f"v{(offset + i) % 200}") for i in range(2000)])

    threads = [threading.Thread(target=worker, args=(n * 37,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = {v for out in results for v in out if v != OTHER}
    assert len(admitted) == 50
    assert len(cap.folded) == 150 and not admitted & cap.folded


# --- CounterSet / HistogramSet ---


def test_counter_set_emits_sorted_with_prefix_and_zeros():
    counters = CounterSet()
    counters.ensure(("failed",))
    counters.inc(("succeeded",))
    counters.inc(("succeeded",), 2.5)
    family = CounterMetricFamily("pipemon_x_total", "help", labels=("source", "outcome"))
    counters.emit(family, ("db",))
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("pipemon_x_total", {"source": "db", "outcome": "failed"}, 0.0),
        ("pipemon_x_total", {"source": "db", "outcome": "succeeded"}, 3.5),
    ]
    counters.ensure(("succeeded",))  # never resets a value
    assert counters.values[("succeeded",)] == 3.5


def histogram(values, labels=("q",), buckets=(1, 2.5, 5)) -> tuple[HistogramSet, list]:
    hist = HistogramSet(buckets)
    hist.ensure(labels)
    for value in values:
        hist.observe(labels, value)
    family = HistogramFamily("pipemon_h", "help", labels=("source", "queue"))
    hist.emit(family, ("db",))
    return hist, family.samples


def test_histogram_emits_cumulative_buckets_inf_sum_and_count():
    _, samples = histogram([0.5, 1, 1.5, 2.5, 4, 100])
    buckets = [(s.labels["le"], s.value) for s in samples if s.name == "pipemon_h_bucket"]
    # upper bounds are inclusive (le), counts are cumulative, +Inf holds everything
    assert buckets == [("1.0", 2), ("2.5", 4), ("5.0", 5), ("+Inf", 6)]
    by_name = {s.name: s for s in samples if s.name != "pipemon_h_bucket"}
    assert by_name["pipemon_h_count"].value == 6
    assert by_name["pipemon_h_sum"].value == pytest.approx(109.5)
    assert by_name["pipemon_h_sum"].labels == {"source": "db", "queue": "q"}


def test_histogram_ignores_none_and_nan_and_clamps_negatives():
    _, samples = histogram([None, math.nan, -3.0, 0.0])
    buckets = [s.value for s in samples if s.name == "pipemon_h_bucket"]
    assert buckets == [2, 2, 2, 2]
    assert [s.value for s in samples if s.name == "pipemon_h_sum"] == [0.0]


def test_histogram_ensure_emits_zeros_and_series_are_sorted():
    hist = HistogramSet((1,))
    hist.ensure(("b",))
    hist.observe(("a",), 3)
    hist.ensure(("a",))  # never resets
    family = HistogramFamily("pipemon_h", "help", labels=("queue",))
    hist.emit(family, ())
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("pipemon_h_bucket", {"queue": "a", "le": "1.0"}, 0),
        ("pipemon_h_bucket", {"queue": "a", "le": "+Inf"}, 1),
        ("pipemon_h_count", {"queue": "a"}, 1),
        ("pipemon_h_sum", {"queue": "a"}, 3.0),
        ("pipemon_h_bucket", {"queue": "b", "le": "1.0"}, 0),
        ("pipemon_h_bucket", {"queue": "b", "le": "+Inf"}, 0),
        ("pipemon_h_count", {"queue": "b"}, 0),
        ("pipemon_h_sum", {"queue": "b"}, 0.0),
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-10, 1e4, allow_nan=False), max_size=50))
def test_histogram_properties(values):
    bounds = (0.5, 1, 10, 60, 600)
    _, samples = histogram(values, buckets=bounds)
    buckets = [s.value for s in samples if s.name == "pipemon_h_bucket"]
    assert buckets == sorted(buckets)  # cumulative
    assert buckets[-1] == len(values)
    for bound, n in zip(bounds, buckets, strict=False):
        assert n == sum(1 for v in values if max(v, 0.0) <= bound)
    [total] = [s.value for s in samples if s.name == "pipemon_h_sum"]
    assert total == pytest.approx(sum(max(v, 0.0) for v in values))
