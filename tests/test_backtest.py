"""`pipemon backtest`: the simulator, the promtool round trip, the judge, the Prometheus replay.

The scenario library itself, run against the shipped rules, is tests/test_backtest_library.py.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipemon.backtest import judge, promtool, report, rules, scenario, simulate
from pipemon.backtest.series import STALE, History, notation, openmetrics
from testkit import ROOT
from testkit.prometheus import Prometheus

RULES = ROOT / "rules"
LIBRARY = scenario.LIBRARY


def pipemon(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipemon", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def write_scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


# --- scenario files ---------------------------------------------------------------------------


def test_every_library_scenario_loads_and_states_expectations():
    paths = scenario.library()
    assert len(paths) >= 20, paths
    categories = set()
    for path in paths:
        loaded = scenario.load(path)
        categories.add(loaded.category)
        assert loaded.name == path.stem, f"{path.name}: name {loaded.name!r}"
        assert loaded.description, path.name
        if loaded.category == "fault":
            assert loaded.fire, f"{path.name}: a fault scenario must expect an alert"
        else:
            assert not loaded.fire, f"{path.name}: healthy and noise scenarios expect silence"
            whole = [q for q in loaded.quiet if q.start == 0 and q.end == loaded.duration]
            assert whole, f"{path.name}: not quiet all along"
    assert categories == {"healthy", "noise", "fault"}


def test_a_bad_scenario_gets_one_line_per_problem(tmp_path):
    path = write_scenario(tmp_path, """
name: broken
category: fault
duration: 1h
sources:
  - name: media
    kind: queue
    queues:
      - name: q
        arrivals: {per_minute: 5}
        run: {median: 30s, p95: 10s}
        workers: 2
        colour: blue
events:
  - {kind: fail_ratio, queue: media/nope, at: 10m, value: 0.5}
  - {kind: workers_gone, queue: media/q, at: soon}
expect:
  fire:
    - {after: 10m, severity: urgent, within: 95s}
""")
    with pytest.raises(scenario.ScenarioError) as err:
        scenario.load(path)
    problems = err.value.problems
    assert all(p.startswith(f"{path}: ") for p in problems), problems
    text = "\n".join(problems)
    for expected in ("sources[0].queues[0].run: p95 must not be below the median",
                     "sources[0].queues[0].colour: unknown key",
                     "events[0].queue: expected one of media/q, got 'media/nope'",
                     "events[1].at: expected a duration",
                     "expect.fire[0].severity: expected one of critical, warning, info"):
        assert expected in text, f"{expected!r} not in:\n{text}"


def test_the_command_refuses_a_bad_scenario_and_an_unknown_name(tmp_path):
    bad = write_scenario(tmp_path, "name: x\ncategory: noise\nduration: 1h\nsources: []\n")
    result = pipemon("backtest", str(bad))
    assert result.returncode == 2, result
    assert f"{bad}: sources: expected a non-empty list" in result.stderr
    result = pipemon("backtest", "no-such-scenario")
    assert result.returncode == 2
    assert "no scenario 'no-such-scenario'" in result.stderr
    listed = pipemon("backtest", "--list")
    assert listed.returncode == 0 and "fault-stall-workers-hung" in listed.stdout


def test_without_promtool_the_command_says_how_to_get_it(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    result = pipemon("backtest", "noise-failure-burst", env=env)
    assert result.returncode == 2
    assert "promtool not found on PATH: install it with `apt-get install prometheus`" \
        in result.stderr


# --- the simulated pipeline -------------------------------------------------------------------

QUEUE = """
name: sim
category: noise
duration: 40m
seed: 3
replicas: {replicas}
sources:
  - name: media
    kind: queue
    queues:
      - name: busy
        arrivals: {{per_minute: 60}}
        run: {{median: 20s, p95: 60s}}
        workers: 40
        fail_ratio: 0.01
      - name: cold
        arrivals: {{per_hour: 20}}
        run: {{median: 20s, p95: 40s}}
        workers: {{min: 0, max: 1, cold_start: [30s, 40s], idle_after: 1m}}
events:
{events}
"""


def simulated(tmp_path, events: str = "  []", replicas: int = 1) -> History:
    text = QUEUE.format(replicas=replicas, events=events)
    return simulate.history(scenario.load(write_scenario(tmp_path, text)))


def series(history: History, name: str, **labels: str) -> list:
    for key, values in history:
        found = dict(key)
        if found["__name__"] == name and all(found.get(k) == v for k, v in labels.items()):
            return values
    raise AssertionError(f"no series {name} {labels}")


def at(history: History, seconds: float) -> int:
    return round(seconds / history.step)


def test_a_healthy_busy_queue_completes_at_its_arrival_rate(tmp_path):
    history = simulated(tmp_path)
    done = series(history, "pipemon_queue_jobs_finished_total", queue="busy",
                  outcome="succeeded")
    per_minute = (done[-1] - done[0]) / 40
    assert 50 < per_minute < 70, per_minute
    waiting = series(history, "pipemon_queue_jobs", queue="busy", state="waiting")
    assert max(waiting) <= 5, "40 workers for a job a second: nothing should queue"


def test_scale_to_zero_workers_make_each_job_wait_for_a_cold_start(tmp_path):
    history = simulated(tmp_path)
    oldest = series(history, "pipemon_queue_oldest_waiting_seconds", queue="cold")
    waits = [v for v in oldest if v]
    assert waits, "no job ever waited on a queue whose workers scale to zero"
    assert max(waits) <= 45, f"a cold start is 30-40 s, saw a wait of {max(waits)} s"


def test_counters_reset_when_the_exporter_restarts_and_series_go_stale(tmp_path):
    history = simulated(tmp_path, "  - {kind: exporter_restart, at: 20m, down: 30s}")
    done = series(history, "pipemon_queue_jobs_finished_total", queue="busy",
                  outcome="succeeded")
    up = series(history, "up")
    assert up[at(history, 20 * 60)] == 0 and up[at(history, 20 * 60 + 30)] == 1
    assert done[at(history, 20 * 60)] == STALE, "a failed scrape marks every series stale"
    assert done[at(history, 20 * 60 + 15)] is None
    before, after = done[at(history, 20 * 60) - 1], done[at(history, 20 * 60 + 30)]
    assert after < before / 10, f"no reset: {before} -> {after}"
    values = [v for v in done if v not in (None, STALE)]
    drops = [i for i in range(1, len(values)) if values[i] < values[i - 1]]
    assert len(drops) == 1, "counters only go down at the restart"


def test_hung_workers_hold_their_jobs_and_complete_nothing(tmp_path):
    history = simulated(tmp_path,
                           "  - {kind: workers_hung, queue: media/busy, at: 20m, for: 10m}")
    done = series(history, "pipemon_queue_jobs_finished_total", queue="busy",
                  outcome="succeeded")
    running = series(history, "pipemon_queue_jobs", queue="busy", state="running")
    waiting = series(history, "pipemon_queue_jobs", queue="busy", state="waiting")
    hung = range(at(history, 20 * 60 + 15), at(history, 30 * 60))
    assert len({done[i] for i in hung}) == 1, "a completion while every worker hangs"
    assert all(running[i] == 40 for i in hung[4:]), [running[i] for i in hung]
    assert waiting[hung[-1]] > 400, waiting[hung[-1]]
    assert done[-1] > done[hung[-1]] + 100, "the queue did not recover after the workers did"


def test_workers_gone_return_their_jobs_to_the_queue(tmp_path):
    history = simulated(tmp_path,
                           "  - {kind: workers_gone, queue: media/busy, at: 20m, for: 10m}")
    running = series(history, "pipemon_queue_jobs", queue="busy", state="running")
    oldest = series(history, "pipemon_queue_oldest_waiting_seconds", queue="busy")
    assert running[at(history, 20 * 60 + 15)] == 0
    # The jobs the workers held return with their ready time: they waited before they ran.
    assert 600 <= oldest[at(history, 30 * 60) - 1] <= 720, "the oldest job waits all along"


def test_two_replicas_poll_apart_and_count_from_other_starts(tmp_path):
    history = simulated(tmp_path, replicas=2)
    keys = [dict(k) for k, _ in history if dict(k)["__name__"] == "up"]
    assert sorted(k["instance"] for k in keys) == ["pipemon-0:9864", "pipemon-1:9864"]
    one = series(history, "pipemon_queue_jobs_finished_total", queue="busy",
                 outcome="succeeded", instance="pipemon-0:9864")
    two = series(history, "pipemon_queue_jobs_finished_total", queue="busy",
                 outcome="succeeded", instance="pipemon-1:9864")
    offsets = {b - a for a, b in zip(one, two, strict=True)}
    assert min(offsets) > 900 and len(offsets) > 1, "same counts at the same instants"


AUDIO = """
name: audio
category: healthy
description: Audio levels of analysis results.
duration: 2h
seed: 5
sources:
  - {{name: analysis, kind: analysis, per_minute: 10, success_ratio: 0.9,
     duration: {{median: 4s, p95: 20s}}}}
events:
{events}
"""


def test_analysis_audio_levels_are_realistic_and_follow_their_events(tmp_path):
    """Successful results only; healthy: about one track in six peaks above -3 dBFS and the
    median loudness is the -14 LUFS target; audio_clipping and loudness_shift change the
    levels, not the results or their durations."""
    events = ("  - {kind: audio_clipping, source: analysis, at: 1h, for: 20m, share: 1}\n"
              "  - {kind: loudness_shift, source: analysis, at: 1h30m, lu: -9}")
    history = simulate.history(scenario.load(write_scenario(
        tmp_path, AUDIO.format(events=events))))

    def count(name, start, end, **labels):
        return increase(history, name, start, end, source="analysis", **labels)

    hour = 3600.0
    ok = count("pipemon_analysis_results_total", 0, hour, outcome="succeeded")
    assert 480 < ok < 600, ok
    for name in ("pipemon_analysis_peak_dbfs", "pipemon_analysis_loudness_lufs"):
        assert count(name + "_count", 0, hour) == ok, "one level per successful result"
        assert count(name + "_bucket", 0, hour, le="+Inf") == ok
    clipped = count("pipemon_analysis_clipped_total", 0, hour)
    assert 0.10 < clipped / ok < 0.25, clipped / ok
    above = ok - count("pipemon_analysis_peak_dbfs_bucket", 0, hour, le="-3.0")
    assert above == clipped, "clipping is a peak above -3 dBFS, the bucket bound"
    assert count("pipemon_analysis_peak_dbfs_bucket", 0, hour, le="0.0") == ok
    median = count("pipemon_analysis_loudness_lufs_bucket", 0, hour, le="-14.0") / ok
    assert 0.42 < median < 0.58, median
    off = (count("pipemon_analysis_loudness_lufs_bucket", 0, hour, le="-16.0")
           + ok - count("pipemon_analysis_loudness_lufs_bucket", 0, hour, le="-12.0"))
    assert off / ok < 0.15, off / ok
    # a limiter regression: every track clips; its loudness does not move
    hot = count("pipemon_analysis_peak_dbfs_count", hour, hour + 1200)
    assert count("pipemon_analysis_clipped_total", hour, hour + 1200) == hot
    median = count("pipemon_analysis_loudness_lufs_bucket", hour, hour + 1200,
                   le="-14.0") / hot
    assert 0.35 < median < 0.65, median
    # normalised to -23 LUFS: the tracks are quiet, and none clips
    late = count("pipemon_analysis_loudness_lufs_count", 5700, 7200)
    assert count("pipemon_analysis_loudness_lufs_bucket", 5700, 7200, le="-20.0") > 0.95 * late
    assert count("pipemon_analysis_clipped_total", 5700, 7200) < 0.05 * late
    # the audio draws change neither the results nor their durations
    calm = simulate.history(scenario.load(write_scenario(tmp_path, AUDIO.format(events="  []"))))
    for name in ("pipemon_analysis_results_total", "pipemon_analysis_duration_seconds_bucket"):
        assert [v for k, v in history if dict(k)["__name__"] == name] == \
            [v for k, v in calm if dict(k)["__name__"] == name]


# --- promtool round trip ----------------------------------------------------------------------


@pytest.mark.rules
def test_notation_and_staleness_reach_promtool_as_written(tmp_path):
    """What the history says at each step is what a PromQL query sees there."""
    history = History(10)
    values = [1.0, 1.0, 1.0, None, None, 5.0, STALE, None, 7.5, 7.5]
    history.put((("__name__", "x"), ("q", 'a"b,c\\d')), list(values))
    assert notation(values) == "1x2 _x2 5 stale _ 7.5x1"
    ruleset = rules.RuleSet((), (), (), (), {}, 0.0)
    seen = promtool.evaluate(ruleset, history, tmp_path, query="x")
    assert seen == {(("q", 'a"b,c\\d'),): [0, 1, 2, 3, 4, 5, 8, 9]}, seen


def test_promtool_output_is_parsed_label_by_label():
    got = ('{__name__="ALERTS", alertname="A", alertstate="firing", q="a\\"b, c", '
           'u="é\\n"} 1E+00, {alertname="B"} 2.5E+00')
    assert promtool.parse_samples(got) == [
        ((("__name__", "ALERTS"), ("alertname", "A"), ("alertstate", "firing"),
          ("q", 'a"b, c'), ("u", "é\n")), 1.0),
        ((("alertname", "B"),), 2.5)]
    assert promtool.parse_samples("nil") == []


@pytest.mark.rules
def test_pruning_recording_rules_no_alert_reads_changes_no_alert(tmp_path):
    ruleset = rules.load(RULES)
    kept = {r.get("record") for g in ruleset.pruned for r in g["rules"]}
    dropped = {r["record"] for g in ruleset.groups for r in g["rules"]
               if "record" in r and r["record"] not in kept}
    assert "source_queue:pipemon_queue_job_wait_seconds:quantile_rate5m" in dropped
    assert "source_queue:pipemon_queue_stalled:bool" in kept
    loaded = scenario.load(LIBRARY / "fault-stall-workers-hung.yaml")
    loaded = replace(loaded, duration=50 * 60.0)
    history = simulate.history(loaded)
    full = replace(ruleset, pruned=tuple(g for g in ruleset.groups if g["rules"]))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pruned_alerts = promtool.evaluate(ruleset, history, tmp_path / "a")
    full_alerts = promtool.evaluate(full, history, tmp_path / "b")
    assert pruned_alerts == full_alerts
    assert any(dict(a)["alertname"] == "PipemonQueueStalled" for a in pruned_alerts)


# --- the judge --------------------------------------------------------------------------------

CRITICAL = (("alertname", "PipemonQueueStalled"), ("queue", "q"), ("severity", "critical"))
LEVEL2 = (("alertname", "PipemonAlertEscalated"), ("escalation", "level2"),
          ("original_alertname", "PipemonQueueStalled"), ("queue", "q"),
          ("severity", "critical"))
WARNING = (("alertname", "PipemonQueueBacklogHigh"), ("queue", "q"), ("severity", "warning"))


def fault(**expect) -> scenario.Scenario:
    fire = scenario.Fire(after=600, within=95, match=scenario.Match(("critical",)), **expect)
    return scenario.Scenario("s", "fault", "d", 3600, 1, 1, (), (),
                             (scenario.Quiet(0, 600, scenario.Match()),), (fire,), False)


def test_the_judge_measures_detection_escalation_and_reset():
    firing = {CRITICAL: list(range(46, 200)), LEVEL2: list(range(106, 200)),
              WARNING: list(range(30, 35))}
    result = judge.judge(fault(escalate=(17 * 60, 32 * 60), healed=3000.0,
                               resolved_within=600.0), firing, 15)
    assert result.quiet[0].minutes == {WARNING: 1.25}
    check = result.fire[0]
    assert check.delay == 90 and check.level2 == 900
    assert check.level3 is None
    assert any("level3 never escalated" in p for p in check.problems), check.problems
    assert not result.ok

    late = {CRITICAL: list(range(48, 260))}
    result = judge.judge(fault(healed=3000.0, resolved_within=600.0), late, 15)
    assert result.fire[0].delay == 120
    problems = " / ".join(result.fire[0].problems)
    assert "fired 2m after 0:10:00, deadline 95s" in problems
    assert "still firing 10m after the fault ended at 0:50:00" in problems


def test_two_replicas_may_move_an_alert_by_one_evaluation_not_more():
    one = {CRITICAL: [10, 11, 12]}
    assert judge.compare(one, {CRITICAL: [11, 12, 13]}, 15) == []
    moved = judge.compare(one, {CRITICAL: [12, 13, 14]}, 15)
    assert moved and "two replicas 0:03:00-0:03:45" in moved[0]
    assert judge.compare(one, {**one, WARNING: [3]}, 15)


def test_the_markdown_lists_every_alert_that_fired_anywhere():
    quiet = judge.judge(replace(fault(), fire=()), {WARNING: [1]}, 15)
    fired = judge.judge(fault(), {CRITICAL: [44]}, 15)
    text = report.markdown([quiet, fired], {"scenarios": 2, "promtool": "2.42.0"})
    assert "| PipemonQueueBacklogHigh | warning | 0.25 | s |" in text
    assert "| PipemonQueueStalled | critical | 0 |  |" in text
    assert "| 60s | PipemonQueueStalled |" in text


# --- a real Prometheus as the source ----------------------------------------------------------


@pytest.mark.e2e
def test_replaying_a_prometheus_fires_what_the_scenario_fires(tmp_path):
    """Simulated metrics backfilled into a real Prometheus, pulled back by `pipemon backtest
    --prometheus` and evaluated: the stall pages at the same instant as in the scenario."""
    loaded = scenario.load(LIBRARY / "fault-stall-workers-hung.yaml")
    loaded = replace(loaded, duration=50 * 60.0)
    ruleset = rules.load(RULES)
    history = simulate.history(loaded, ruleset.metric_names)
    (tmp_path / "direct").mkdir()
    direct = promtool.evaluate(ruleset, history, tmp_path / "direct")
    stalled = [a for a in direct if dict(a)["alertname"] == "PipemonQueueStalled"]
    assert stalled, direct
    first = direct[stalled[0]][0]

    origin = (math.floor(time.time() / 3600) - 3) * 3600.0  # whole hours, 2-3 hours ago
    prometheus = Prometheus(tmp_path / "prometheus", targets=[])
    prometheus.backfill(openmetrics(history, origin))
    prometheus.start()
    try:
        start, end = origin + 10 * 60, origin + loaded.duration
        result = pipemon("backtest", "--prometheus", prometheus.url, "--json",
                         "--start", str(start), "--end", str(end), "--warmup", "10m")
    finally:
        prometheus.stop()
    assert result.returncode == 0, result.stderr
    replayed = json.loads(result.stdout)
    pages = [a for a in replayed["alerts"] if a["labels"]["alertname"] == "PipemonQueueStalled"]
    assert pages, replayed["alerts"]
    assert pages[0]["episodes"][0]["from"] == origin + first * history.step
    names = {a["labels"]["alertname"] for a in replayed["alerts"]}
    assert names <= {dict(a)["alertname"] for a in direct}, names
    assert replayed["series"] == len(history)


def test_openmetrics_for_a_backfill_has_no_stale_samples():
    history = History(3)
    history.put((("__name__", "x"), ("a", "b")), [1.0, STALE, 2.0])
    assert openmetrics(history, 1000.0) == 'x{a="b"} 1 1000.000\nx{a="b"} 2 1030.000\n# EOF\n'


def test_library_scenarios_round_trip_through_yaml():
    """Scenario files are plain YAML a user can copy and change."""
    for path in scenario.library():
        data = yaml.safe_load(path.read_text())
        assert set(data) <= {"name", "category", "description", "duration", "seed", "replicas",
                             "sources", "events", "expect"}, path.name


# --- an instrumented service (kind service) ---------------------------------------------------

SERVICE_SOURCE = """\
  - name: mixer
    kind: service
    service: ai-mixer
    regions:
      - {{name: us-west, per_second: 40, pods: 3}}
      - {{name: eu-west, per_second: 25, pods: 2}}
    error_ratio: 0.01
    latency: {{median: 30ms, p95: 70ms}}
    operations:
      - {{name: track_upload, per_minute: 6, fail_ratio: 0.05}}
"""
SERVICE = """
name: svc
category: noise
duration: 1h
seed: 5
sources:
""" + SERVICE_SOURCE + """\
events:
{events}
"""


def service(tmp_path, events: str = "  []", wanted: set[str] | None = None) -> History:
    path = write_scenario(tmp_path, SERVICE.format(events=events))
    return simulate.history(scenario.load(path), wanted)


def matching(history: History, name: str, **labels: str) -> list[list]:
    found = [values for key, values in history if dict(key)["__name__"] == name
             and all(dict(key).get(k) == v for k, v in labels.items())]
    assert found, f"no series {name} {labels}"
    return found


def pods(history: History, name: str, **labels: str) -> dict[str, list]:
    """The series of `name` matching `labels`, one per pod, by instance."""
    found = {}
    for key, values in history:
        d = dict(key)
        if d["__name__"] == name and all(d.get(k) == v for k, v in labels.items()):
            assert d["instance"] not in found, f"two series {name} {labels} on one pod"
            found[d["instance"]] = values
    assert found, f"no series {name} {labels}"
    return found


def increase(history: History, name: str, start: float, end: float, **labels: str) -> float:
    """What the series of `labels` counted between two instants (no restart in between)."""
    a, b = at(history, start), at(history, end)
    return sum(v[b] - v[a] for v in matching(history, name, **labels))


def quantile(history: History, q: float, start: float, end: float, **labels: str) -> float:
    """histogram_quantile over the increase of the pods' buckets, as PromQL interpolates."""
    by_le: dict[float, float] = {}
    for key, values in history:
        d = dict(key)
        if d["__name__"] == "http_request_duration_seconds_bucket" and \
                all(d.get(k) == v for k, v in labels.items()):
            a, b = at(history, start), at(history, end)
            by_le[float(d["le"])] = by_le.get(float(d["le"]), 0) + values[b] - values[a]
    bounds = sorted(by_le)
    rank = q * by_le[math.inf]
    for i, bound in enumerate(bounds):
        if by_le[bound] >= rank:
            lower = bounds[i - 1] if i else 0.0
            below = by_le[lower] if i else 0.0
            return lower + (bound - lower) * (rank - below) / (by_le[bound] - below)
    raise AssertionError(by_le)


def test_a_service_serves_its_rate_5xx_ratio_and_latency(tmp_path):
    history = service(tmp_path)
    hour = 3600.0
    for region, per_second, count in (("us-west", 40, 3), ("eu-west", 25, 2)):
        requests = pods(history, "http_requests_total", region=region, code="200")
        assert len(requests) == count, requests.keys()
        total = increase(history, "http_requests_total", 0, hour, region=region)
        assert abs(total / hour - per_second) < 0.03 * per_second, (region, total / hour)
        errors = increase(history, "http_requests_total", 0, hour, region=region, code="500")
        assert 0.008 < errors / total < 0.012, (region, errors / total)
        missing = increase(history, "http_requests_total", 0, hour, region=region, code="404")
        assert 0.017 < missing / total < 0.023, "404s are a constant 2%"
        p95 = quantile(history, 0.95, 0, hour, region=region)
        assert 0.064 < p95 < 0.077, (region, p95)
        median = quantile(history, 0.5, 0, hour, region=region)
        assert 0.026 < median < 0.036, (region, median)
        count_ = increase(history, "http_request_duration_seconds_count", 0, hour,
                          region=region)
        assert count_ == total, "one observation per request"
        seconds = increase(history, "http_request_duration_seconds_sum", 0, hour,
                           region=region)
        assert 0.030 < seconds / total < 0.040, "lognormal mean: median * exp(sigma^2 / 2)"
    done = increase(history, "app_operations_total", 0, hour, operation="track_upload",
                    outcome="success")
    failed = increase(history, "app_operations_total", 0, hour, operation="track_upload",
                      outcome="failure")
    assert 300 < done + failed < 420 and 5 < failed < 35, (done, failed)
    key = dict(next(k for k, _ in history if dict(k)["__name__"] == "http_requests_total"))
    assert set(key) == {"__name__", "job", "instance", "service", "region", "code"}
    assert key["job"] == key["service"] == "ai-mixer"
    les = {dict(k)["le"] for k, _ in history
           if dict(k)["__name__"] == "http_request_duration_seconds_bucket"}
    assert les == {"0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3",
                   "0.5", "0.75", "1.0", "1.5", "2.0", "3.0", "5.0", "10.0", "+Inf"}


def test_a_service_swings_between_day_and_night(tmp_path):
    text = SERVICE.format(events="  []").replace("pods: 2}", "pods: 2, low: 0.1, period: 1h}")
    history = simulate.history(scenario.load(write_scenario(tmp_path, text)))
    night = increase(history, "http_requests_total", 0, 300, region="eu-west") / 300
    day = increase(history, "http_requests_total", 1650, 1950, region="eu-west") / 300
    assert night < 5 and 22 < day < 28, (night, day)


def test_service_errors_fail_one_region_for_a_while(tmp_path):
    history = service(tmp_path, "  - {kind: service_errors, service: mixer/eu-west, at: 20m,"
                                " for: 10m, value: 0.2}")

    def ratio(region, start, end):
        errors = increase(history, "http_requests_total", start, end, region=region,
                          code="500")
        return errors / increase(history, "http_requests_total", start, end, region=region)

    assert 0.18 < ratio("eu-west", 1200, 1800) < 0.22
    assert ratio("eu-west", 1800, 3600) < 0.015 and ratio("eu-west", 0, 1200) < 0.015
    assert ratio("us-west", 1200, 1800) < 0.015, "the other region carries on"


def test_service_slow_multiplies_latency(tmp_path):
    history = service(tmp_path, "  - {kind: service_slow, service: mixer/us-west, at: 20m,"
                                " for: 10m, factor: 5}")
    slow = quantile(history, 0.95, 1200, 1800, region="us-west")
    assert 0.30 < slow < 0.40, slow  # 5 x 70 ms
    assert quantile(history, 0.95, 1800, 3600, region="us-west") < 0.08
    assert quantile(history, 0.95, 1200, 1800, region="eu-west") < 0.08


def test_service_traffic_scales_and_stops_requests(tmp_path):
    history = service(tmp_path, "  - {kind: service_traffic, service: mixer, at: 20m, for: 10m,"
                                " factor: 0}\n"
                                "  - {kind: service_traffic, service: mixer/us-west, at: 40m,"
                                " for: 10m, factor: 2}")
    assert increase(history, "http_requests_total", 1200, 1800) == 0
    assert increase(history, "http_request_duration_seconds_bucket", 1200, 1800) == 0
    double = increase(history, "http_requests_total", 2400, 3000, region="us-west") / 600
    assert 75 < double < 85, double
    assert 23 < increase(history, "http_requests_total", 2400, 3000, region="eu-west") / 600 \
        < 27


def test_a_pod_restart_goes_stale_and_counts_again_from_zero(tmp_path):
    history = service(tmp_path, "  - {kind: pod_restart, service: mixer/us-west, at: 20m}\n"
                                "  - {kind: pod_restart, service: mixer/us-west, at: 40m,"
                                " down: 45s}")
    ok = pods(history, "http_requests_total", region="us-west", code="200")
    restart = at(history, 20 * 60)
    first = [i for i, v in ok.items() if v[restart] == STALE]
    assert len(first) == 1, "one pod of the region restarts"
    values = ok[first[0]]
    assert values[restart + 1] is None, "no sample while the pod restarts"
    assert values[restart + 2] == 0, "back after 30 s, counting from zero"
    assert values[restart + 3] > 0
    assert 0 < values[restart + 10] < values[restart - 1] / 10
    others = [v for i, v in ok.items() if i != first[0]]
    assert all(v[restart] not in (None, STALE) and v[restart] >= v[restart - 1]
               for v in others), "the other pods carry on"
    # The region's traffic moves to the pods that run: the rate stays 40/s.
    moved = sum(increase(history, "http_requests_total", 1200, 1230, instance=i)
                for i in ok if i != first[0])
    assert 34 < moved / 30 < 46, moved / 30
    second = [i for i, v in ok.items() if v[at(history, 40 * 60)] == STALE]
    assert len(second) == 1 and second != first, "a rolling restart takes the next pod"
    gone = [v for v in ok[second[0]][at(history, 40 * 60):at(history, 41 * 60)]]
    assert gone[:4] == [STALE, None, None, 0], gone
    up = pods(history, "up", job="ai-mixer")
    assert up[first[0]][restart] == 0 and up[first[0]][restart + 2] == 1
    eu = pods(history, "http_requests_total", region="eu-west", code="200")
    assert all(STALE not in v for v in eu.values()), "only us-west restarts"
    # a counter only ever drops at a restart
    values = [v for v in values if v not in (None, STALE)]
    assert sum(1 for x, y in itertools.pairwise(values) if y < x) == 1


def test_operation_fail_ratio_and_independence_of_other_sources(tmp_path):
    history = service(tmp_path, "  - {kind: operation_fail_ratio, operation:"
                                " mixer/track_upload, at: 10m, for: 40m, value: 0.5}\n"
                                "  - {kind: exporter_down, at: 0s}")
    failed = increase(history, "app_operations_total", 600, 3000, outcome="failure")
    done = increase(history, "app_operations_total", 600, 3000, outcome="success")
    assert 0.4 < failed / (failed + done) < 0.6, (failed, done)
    ok = pods(history, "http_requests_total", code="200")
    assert all(None not in v and STALE not in v for v in ok.values()), \
        "pipemon's replicas being down does not touch the service's series"
    # Adding a service does not change the traffic of the other sources.
    alone = simulated(tmp_path)
    text = QUEUE.format(replicas=1, events="  []")
    path = tmp_path / "both.yaml"
    path.write_text(text.replace("events:", SERVICE_SOURCE.format() + "events:"))
    both = simulate.history(scenario.load(path))
    assert series(both, "pipemon_queue_jobs_finished_total", queue="busy",
                  outcome="succeeded") == series(alone, "pipemon_queue_jobs_finished_total",
                                                 queue="busy", outcome="succeeded")
    assert not [k for k, _ in both if dict(k)["__name__"] == "pipemon_source_up"
                and dict(k).get("source") == "mixer"]


def test_a_service_produces_only_the_series_the_rules_read(tmp_path):
    history = service(tmp_path, wanted={"http_requests_total"})
    names = {dict(k)["__name__"] for k, _ in history}
    assert names == {"http_requests_total", "up"}, names
    again = service(tmp_path, wanted={"http_requests_total",
                                      "http_request_duration_seconds_bucket"})
    requests = matching(history, "http_requests_total")
    assert matching(again, "http_requests_total") == requests, \
        "the latency draws do not change the request counts"


def test_a_bad_service_gets_one_line_per_problem(tmp_path):
    path = write_scenario(tmp_path, """
name: broken
category: noise
duration: 1h
sources:
  - name: mixer
    kind: service
    regions:
      - {name: us-west, per_second: 40, pods: 0}
      - {name: us-west, per_minute: 5, per_second: 1}
      - {name: eu-west, per_second: 5, low: 2, colour: red}
    error_ratio: 1.5
    latency: {median: 70ms, p95: 30ms}
    operations:
      - {name: track_upload, fail_ratio: 0.01}
    workers: 3
    labels: {env: prod}
  - name: api
    kind: service
    regions: []
events:
  - {kind: service_errors, service: mixer/mars, at: 10m, value: 0.5}
  - {kind: service_slow, service: mixer, at: 10m}
  - {kind: operation_fail_ratio, operation: mixer/nope, at: 10m, value: 2}
  - {kind: pod_restart, service: mixer/eu-west, at: 10m, pod: 1}
  - {kind: source_down, source: mixer, at: 10m}
""")
    with pytest.raises(scenario.ScenarioError) as err:
        scenario.load(path)
    problems = [p.removeprefix(f"{path}: ") for p in err.value.problems]
    expected = [
        "sources[0].regions[0].pods: expected a whole number >= 1, got 0",
        "sources[0].regions[1].per_minute: set exactly one of per_second, per_minute, per_hour",
        "sources[0].regions[2].low: expected a ratio between 0 and 1, got 2",
        "sources[0].regions[2].colour: unknown key",
        "sources[0].operations[0].per_minute: set exactly one of per_second, per_minute,"
        " per_hour",
        "sources[0].regions[1].name: 'us-west' twice",
        "sources[0].error_ratio: expected a ratio between 0 and 1, got 1.5",
        "sources[0].latency: p95 must not be below the median",
        "sources[0].workers: unknown key",
        "sources[0].labels: not used with kind service (its series are the service's, not"
        " pipemon's)",
        "sources[1].regions: expected a non-empty list",
        "sources[1].latency: required",
        "events[0].service: expected one of api, mixer, mixer/eu-west, mixer/us-west, got"
        " 'mixer/mars'",
        "events[1].factor: required",
        "events[2].operation: expected one of mixer/track_upload, got 'mixer/nope'",
        "events[2].value: expected a ratio between 0 and 1, got 2",
        "events[3].pod: pod 1 of eu-west, which has 1 pods (the first is 0)",
        "events[4].source: no source of kind queue, storage, analysis or checks to target,"
        " got 'mixer'",
    ]
    for line in expected:
        assert line in problems, f"{line!r} not in:\n" + "\n".join(problems)
    assert len(problems) == len(expected), "\n".join(problems)


# --- probed endpoints (kind endpoint) ---------------------------------------------------------

ENDPOINTS = """
name: probes
category: noise
duration: 2h
seed: 7
sources:
  - name: probes
    kind: endpoint
    regions:
      - {{name: us-west, urls: [https://us-west.example/health]}}
      - {{name: eu-west, urls: [https://eu-west.example/health, https://eu-west-2.example/health]}}
    fail_ratio: 0.01
    latency: {{median: 40ms, p95: 60ms}}
events:
{events}
"""


def endpoints(tmp_path, events: str = "  []", wanted: set[str] | None = None) -> History:
    path = write_scenario(tmp_path, ENDPOINTS.format(events=events))
    return simulate.history(scenario.load(path), wanted)


def share(values: list, start: float, end: float) -> float:
    """Mean of the samples in [start, end)."""
    window = values[int(start // 15):int(end // 15)]
    return sum(window) / len(window)


def test_endpoints_are_probed_every_step_with_rare_failures_and_jitter(tmp_path):
    history = endpoints(tmp_path)
    names = {dict(k)["__name__"] for k, _ in history if dict(k)["job"] != "pipemon"}
    assert names == {"probe_success", "probe_duration_seconds"}, names
    keys = [dict(k) for k, _ in history if dict(k)["__name__"] == "probe_success"]
    assert sorted((k["region"], k["instance"]) for k in keys) == [
        ("eu-west", "https://eu-west-2.example/health"), ("eu-west", "https://eu-west.example/health"),
        ("us-west", "https://us-west.example/health")]
    assert {k["job"] for k in keys} == {"blackbox"}
    for key in keys:
        labels = {k: v for k, v in key.items() if k != "__name__"}
        success = series(history, "probe_success", **labels)
        assert None not in success and STALE not in success
        assert 0.98 < share(success, 0, 7200) < 1.0, "1% of the probes fail at random"
        seconds = sorted(series(history, "probe_duration_seconds", **labels))
        median, p95 = seconds[len(seconds) // 2], seconds[int(len(seconds) * 0.95)]
        assert 0.036 < median < 0.044 and 0.052 < p95 < 0.068, (median, p95)


def test_endpoint_down_and_slow_hit_their_region_only(tmp_path):
    history = endpoints(tmp_path, "  - {kind: endpoint_down, endpoint: probes/eu-west, at: 30m,"
                                  " for: 10m}\n"
                                  "  - {kind: endpoint_down, endpoint: probes/us-west, at: 1h,"
                                  " for: 30m, value: 0.5}\n"
                                  "  - {kind: endpoint_slow, endpoint: probes, at: 1h40m,"
                                  " factor: 10}")
    eu = series(history, "probe_success", job="blackbox", region="eu-west",
                instance="https://eu-west.example/health")
    eu_seconds = series(history, "probe_duration_seconds", job="blackbox", region="eu-west",
                        instance="https://eu-west.example/health")
    us = series(history, "probe_success", job="blackbox", region="us-west",
                instance="https://us-west.example/health")
    assert share(eu, 1800, 2400) == 0.0, "unreachable: every probe fails"
    assert set(eu_seconds[1800 // 15:2400 // 15]) == {simulate.PROBE_TIMEOUT}
    assert share(eu, 2400, 3600) > 0.95 and share(us, 1800, 2400) > 0.95
    assert 0.35 < share(us, 3600, 5400) < 0.65, "flapping: half of the probes fail"
    slow = series(history, "probe_duration_seconds", job="blackbox", region="us-west",
                  instance="https://us-west.example/health")
    assert 0.3 < sorted(slow[6000 // 15:])[len(slow[6000 // 15:]) // 2] < 0.5, "10 x 40 ms"


def test_endpoints_leave_the_pipemon_replicas_alone(tmp_path):
    history = endpoints(tmp_path, wanted={"probe_success"})
    assert {(dict(k)["__name__"], dict(k)["job"]) for k, _ in history} == {
        ("probe_success", "blackbox"), ("up", "pipemon")}, "only the replica's own `up`"
    again = endpoints(tmp_path, wanted={"probe_success", "probe_duration_seconds"})
    assert [v for k, v in again if dict(k)["__name__"] == "probe_success"] == [
        v for k, v in history if dict(k)["__name__"] == "probe_success"], \
        "what is wanted does not change the draws"


def test_a_bad_endpoint_source_gets_one_line_per_problem(tmp_path):
    path = write_scenario(tmp_path, """
name: broken
category: noise
duration: 1h
sources:
  - name: probes
    kind: endpoint
    regions:
      - {name: us-west, urls: [us-west.example]}
      - {name: us-west, urls: [https://us-west.example/health]}
    fail_ratio: 2
    labels: {env: prod}
events:
  - {kind: endpoint_down, endpoint: probes/mars, at: 10m}
  - {kind: endpoint_slow, endpoint: probes, at: 10m}
""")
    with pytest.raises(scenario.ScenarioError) as err:
        scenario.load(path)
    problems = [p.removeprefix(f"{path}: ") for p in err.value.problems]
    assert problems == [
        "sources[0].labels: not used with kind endpoint (its series are blackbox_exporter's)",
        "sources[0].regions[0].urls: expected a list of http(s) URLs, got ['us-west.example']",
        "sources[0].regions: region 'us-west' twice",
        "sources[0].fail_ratio: expected a ratio between 0 and 1, got 2",
        "events[0].endpoint: expected one of probes, probes/us-west, got 'probes/mars'",
        "events[1].factor: required",
    ], problems
