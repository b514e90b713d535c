"""The trigger_dev source against testkit/fake_trigger.py, which behaves as Trigger.dev's server
does (cited there): version-dependent status names, the 7-day default window, a runs list read
from a lagging copy, rate limits with x-ratelimit-reset, page limits, queues named alike."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from pipemon.config import ConfigError, load
from pipemon.server import landing_page
from testkit.app import sample
from testkit.fake_trigger import FakeTrigger
from testkit.net import wait_until

KEY = "tr_prod_s3cretKey4Tests"


@pytest.fixture
def api():
    fake = FakeTrigger(KEY).start()
    yield fake
    fake.stop()


def source(api, **extra):
    return {"name": "stems", "kind": "trigger_dev", "base_url": api.url, "secret_key": KEY,
            "timeout": "3s", **extra}


def value(app, name, **labels):
    return sample(app, name, source="stems", **labels)


def finished(app, queue, outcome):
    return value(app, "pipemon_queue_jobs_finished_total", queue=queue, outcome=outcome)


def ago(**delta) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def test_queues_named_alike_are_kept_apart_and_runs_are_labelled_by_queue(make_app, api):
    """A task's own queue and a custom queue may share a name (the list strips `task/`): each
    keeps its own gauges. Runs are labelled by the queue they ran on, not by their task."""
    api.add_queue("upload", type="task", running=4, queued=17, concurrency_limit=4)
    api.add_queue("upload", type="custom", running=1, queued=2, paused=True,
                  concurrency_limit=10)
    api.add_queue("gpu", type="custom", running=1, queued=0)
    api.add_run("upload", "EXECUTING", ago(hours=2), started=ago(minutes=90))
    mix = api.add_run("mix-stems", "EXECUTING", ago(minutes=3), queue="gpu",
                      started=ago(minutes=2))
    app = make_app([source(api, page_size=2, stuck_after="30m")])  # 2 per page: pagination
    assert app.poll_all_once(), app.health()

    assert value(app, "pipemon_queue_jobs", queue="task/upload", state="waiting") == 17
    assert value(app, "pipemon_queue_jobs", queue="upload", state="waiting") == 2
    assert value(app, "pipemon_queue_paused", queue="task/upload") == 0
    assert value(app, "pipemon_queue_paused", queue="upload") == 1
    assert value(app, "pipemon_queue_concurrency_limit", queue="task/upload") == 4
    assert value(app, "pipemon_queue_concurrency_limit", queue="upload") == 10
    assert value(app, "pipemon_queue_stuck_jobs", queue="task/upload") == 1

    api.update_run(mix, status="COMPLETED_SUCCESSFULLY", finished=datetime.now(UTC))
    assert app.poll_all_once(), app.health()
    assert finished(app, "gpu", "succeeded") == 1
    assert finished(app, "task/mix-stems", "succeeded") is None  # not a queue: no series


def test_every_finished_run_is_counted_once_whatever_its_age_name_or_lag(make_app, api):
    """Three runs a bound taken from one active list would lose: one older than the list's
    7-day default, one retrying (REATTEMPTING in the older names, which EXECUTING does not
    match), and one that finished while the list's copy still showed it running."""
    api.add_queue("separate", type="task", running=3)
    old = api.add_run("separate", "EXECUTING", ago(days=8), started=ago(days=8))
    retrying = api.add_run("separate", "RETRYING_AFTER_FAILURE", ago(hours=2),
                           started=ago(hours=2))
    lagging = api.add_run("separate", "EXECUTING", ago(hours=1), started=ago(hours=1))
    app = make_app([source(api, stuck_after="30m")])
    assert app.poll_all_once(), app.health()
    assert value(app, "pipemon_queue_stuck_jobs", queue="task/separate") == 3

    api.pause_replication()  # the copy the list reads stops following the run store
    api.update_run(old, status="COMPLETED_SUCCESSFULLY", finished=datetime.now(UTC))
    api.update_run(retrying, status="INTERRUPTED", finished=datetime.now(UTC))
    api.update_run(lagging, status="COMPLETED_WITH_ERRORS", finished=datetime.now(UTC))
    assert app.poll_all_once(), app.health()  # all three are in neither list
    assert finished(app, "task/separate", "succeeded") == 0
    api.replicate()
    for _ in range(3):  # and again: each is counted once
        assert app.poll_all_once(), app.health()
    assert finished(app, "task/separate", "succeeded") == 1
    assert finished(app, "task/separate", "failed") == 2
    assert value(app, "pipemon_queue_stuck_jobs", queue="task/separate") == 0


def add_four_finished_runs(api) -> None:
    """Runs of task/analyse created 30 s ago and started now, finished 20, 40, 60 and 80 s
    later: two succeeded, one cancelled, one timed out."""
    now = datetime.now(UTC)
    for i, status in enumerate(("COMPLETED_SUCCESSFULLY", "COMPLETED_SUCCESSFULLY", "CANCELED",
                                "TIMED_OUT")):
        api.add_run("analyse", status, now - timedelta(seconds=30), started=now,
                    finished=now + timedelta(seconds=20 * (i + 1)))


def test_runs_created_and_finished_between_polls_are_counted_with_their_run_time(make_app, api):
    api.add_queue("analyse", type="task")
    api.add_run("analyse", "COMPLETED_SUCCESSFULLY", ago(hours=3), started=ago(hours=3),
                finished=ago(hours=2))  # before pipemon started: not counted
    app = make_app([source(api)])
    assert app.poll_all_once(), app.health()
    add_four_finished_runs(api)
    assert app.poll_all_once(), app.health()
    assert finished(app, "task/analyse", "succeeded") == 2
    assert finished(app, "task/analyse", "cancelled") == 1
    assert finished(app, "task/analyse", "failed") == 1
    assert value(app, "pipemon_queue_job_run_seconds_sum", queue="task/analyse",
                 outcome="succeeded") == pytest.approx(20 + 40, abs=0.01)


def test_exact_quantiles_of_the_runs_finished_in_the_window(make_app, api):
    api.add_queue("analyse", type="task")
    app = make_app([source(api, exact_quantiles={"window": "1h", "quantiles": [0.5, 0.99]})])
    assert app.poll_all_once(), app.health()
    add_four_finished_runs(api)
    assert app.poll_all_once(), app.health()
    queue = {"queue": "task/analyse"}
    # percentile_cont over 20, 40, 60, 80 s: every outcome
    assert value(app, "pipemon_queue_job_run_window_jobs", **queue) == 4
    assert value(app, "pipemon_queue_job_run_window_seconds", quantile="0.5",
                 **queue) == pytest.approx(50, abs=0.01)
    assert value(app, "pipemon_queue_job_run_window_seconds", quantile="0.99",
                 **queue) == pytest.approx(79.4, abs=0.01)
    assert value(app, "pipemon_queue_job_wait_window_seconds", quantile="0.99",
                 **queue) == pytest.approx(30, abs=0.01)


def test_requests_ask_for_the_current_status_names_and_never_the_7_day_default(make_app, api):
    api.add_queue("separate", type="task")
    app = make_app([source(api)])
    assert app.poll_all_once()
    assert app.poll_all_once()
    runs = [(params, headers) for _, path, params, headers in api.requests
            if path == "/api/v1/runs"]
    assert runs
    for params, headers in runs:
        assert headers.get("x-trigger-api-version") == "2025-07-16"
        assert params["filter[queue]"] == "task/separate"
        assert "filter[createdAt][from]" in params  # else the server reads the last 7 days only
    statuses = {s for params, _ in runs for s in params["filter[status]"].split(",")}
    assert {"REATTEMPTING", "FROZEN", "WAITING", "DEQUEUED", "INTERRUPTED"} <= statuses


def test_a_throttle_is_waited_out_until_the_reset_the_server_gives(make_app, api):
    api.add_queue("separate", type="task")
    app = make_app([source(api)])
    assert app.poll_all_once()
    api.throttle_for(2.0)
    assert not app.poll_all_once()
    throttled_at = time.monotonic()
    assert app.runners[0].last_error.reason == "throttled"
    calls = len(api.requests)
    assert not app.poll_all_once()  # before the reset: no request at all
    assert len(api.requests) == calls
    wait_until(app.poll_all_once, 10, "the source to poll again after the reset")
    recovered = time.monotonic() - throttled_at
    assert 1.0 <= recovered < 6, f"polled again {recovered:.1f}s after a 2 s reset"
    remaining = value(app, "pipemon_trigger_dev_ratelimit_remaining")
    assert remaining is not None and remaining < value(app, "pipemon_trigger_dev_ratelimit_limit")


def test_queue_metrics_add_the_peak_and_throttling_where_the_server_has_them(make_app, api):
    key = api.add_queue("separate", type="task", running=2, concurrency_limit=2)
    api.set_queue_metrics(key, peak_queued=40, throttled=7)
    app = make_app([source(api)])
    assert app.poll_all_once(), app.health()
    assert value(app, "pipemon_trigger_dev_queue_peak_queued", queue="task/separate") == 40
    assert value(app, "pipemon_trigger_dev_queue_throttled_samples", queue="task/separate") == 7
    asked = [params for _, path, params, _ in api.requests if path.endswith("/metrics")]
    assert asked == [{"type": "task", "period": "5m"}]
    assert app.poll_all_once()  # not due again before the period has passed
    assert len([p for _, p, _, _ in api.requests if p.endswith("/metrics")]) == 1


def test_a_server_without_queue_metrics_is_asked_once_and_still_polled(make_app):
    older = FakeTrigger(KEY, queue_metrics=False).start()  # before 2026-08: a 404 page
    try:
        older.add_queue("separate", type="task")
        app = make_app([source(older, queue_metrics_period="1m")])
        for _ in range(3):
            assert app.poll_all_once(), app.health()
        assert value(app, "pipemon_trigger_dev_queue_peak_queued", queue="task/separate") is None
        assert len([p for _, p, _, _ in older.requests if p.endswith("/metrics")]) == 1
    finally:
        older.stop()


@pytest.mark.parametrize(("status", "reason"), [(500, "server_error"), (503, "server_error"),
                                                (404, "http_error")])
def test_http_errors_are_poll_errors(make_app, api, status, reason):
    app = make_app([source(api)])
    api.fail_with = (status, {})
    assert not app.poll_all_once()
    assert value(app, "pipemon_source_poll_errors_total", kind="trigger_dev",
                 reason=reason) == 1
    api.fail_with = None
    assert app.poll_all_once()  # recovers on the next poll


def test_a_v3_project_is_told_the_queues_api_needs_v4(make_app):
    fake = FakeTrigger(KEY, engine="V1").start()
    try:
        app = make_app([source(fake)])
        assert not app.poll_all_once()
        error = app.runners[0].last_error
        assert (error.reason, "engine-version" in error.message) == ("http_error", True), error
    finally:
        fake.stop()


def test_timeout_wrong_key_bad_body_and_server_gone(make_app, api, caplog):
    caplog.set_level(logging.INFO)
    api.add_queue("separate", type="task")
    app = make_app([source(api, timeout="1s")])
    api.delay = 1.5
    assert not app.poll_all_once()
    assert app.runners[0].last_error.reason == "timeout"
    api.delay = 0

    api.body_override = b"<html>maintenance</html>"
    assert not app.poll_all_once()
    assert app.runners[0].last_error.reason == "protocol"
    api.body_override = None

    wrong = make_app([{**source(api), "name": "wrong", "secret_key": "tr_prod_wrongKey99"}])
    assert not wrong.poll_all_once()
    assert wrong.runners[0].last_error.reason == "auth"
    assert "Invalid API key" in wrong.runners[0].last_error.message

    api.stop()
    assert not app.poll_all_once()
    assert app.runners[0].last_error.reason == "connect"
    shown = " ".join([str(app.health()), str(wrong.health()), landing_page(app),
                      landing_page(wrong), caplog.text])
    assert KEY not in shown and "tr_prod_wrongKey99" not in shown


def test_config_needs_a_key_an_http_url_and_a_page_the_server_accepts(tmp_path):
    path = tmp_path / "trigger.yaml"
    path.write_text(yaml.safe_dump({"sources": [
        {"name": "a", "kind": "trigger_dev", "base_url": "api.trigger.dev", "page_size": 500},
        {"name": "b", "kind": "trigger_dev", "secret_key_file": "key.txt"},
    ]}))
    (tmp_path / "key.txt").write_text(KEY + "\n")
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert sorted(err.value.problems) == [
        "sources[0].base_url: expected an http:// or https:// URL, got 'api.trigger.dev'",
        "sources[0].page_size: Trigger.dev's runs list takes at most 100 per page (it answers"
        " more with HTTP 400), got 500",
        "sources[0].secret_key: required (or secret_key_file)",
    ]
    path.write_text(yaml.safe_dump({"sources": [
        {"name": "b", "kind": "trigger_dev", "secret_key_file": "key.txt"}]}))
    (source_config,) = load(path, env={}).sources
    assert (source_config.base_url, source_config.secret_key.reveal()) == \
        ("https://api.trigger.dev", KEY)
