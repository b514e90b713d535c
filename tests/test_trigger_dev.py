"""The trigger_dev source against a local server serving Trigger.dev's documented shapes."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest

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
            "timeout": "2s", **extra}


def value(app, name, **labels):
    return sample(app, name, source="stems", **labels)


def test_queues_runs_and_finished_counters(make_app, api):
    now = datetime.now(UTC)
    api.queues = [
        {"id": "queue_1", "name": "separate-stems", "type": "task", "running": 4, "queued": 17,
         "paused": False, "concurrencyLimit": 4},
        {"id": "queue_2", "name": "analyse-audio", "type": "task", "running": 0, "queued": 0,
         "paused": True, "concurrencyLimit": None},
        {"id": "queue_3", "name": "upload", "type": "custom", "running": 1, "queued": 2,
         "paused": False, "concurrencyLimit": 10},
    ]
    api.add_run("run_old_done", "separate-stems", "COMPLETED", now - timedelta(hours=3),
                now - timedelta(hours=3), now - timedelta(hours=2))
    api.add_run("run_long", "separate-stems", "EXECUTING", now - timedelta(hours=2),
                now - timedelta(minutes=90))
    api.add_run("run_queued", "separate-stems", "QUEUED", now - timedelta(seconds=30))
    app = make_app([source(api, page_size=2, stuck_after="30m")])  # 2 per page: pagination
    assert app.poll_all_once(), app.health()

    assert value(app, "pipemon_queue_jobs", queue="separate-stems", state="waiting") == 17
    assert value(app, "pipemon_queue_jobs", queue="upload", state="running") == 1
    assert value(app, "pipemon_queue_paused", queue="analyse-audio") == 1
    assert value(app, "pipemon_queue_concurrency_limit", queue="upload") == 10
    assert value(app, "pipemon_queue_concurrency_limit", queue="analyse-audio") is None
    assert value(app, "pipemon_queue_stuck_jobs", queue="separate-stems") == 1
    assert value(app, "pipemon_queue_jobs_finished_total", queue="separate-stems",
                 outcome="succeeded") == 0  # finished before pipemon started

    later = datetime.now(UTC) + timedelta(seconds=1)
    api.set_run("run_long", status="COMPLETED", finishedAt=later)  # active at the last poll
    api.set_run("run_queued", status="CRASHED", startedAt=later, finishedAt=later)
    for i, status in enumerate(("COMPLETED", "COMPLETED", "CANCELED", "TIMED_OUT")):
        api.add_run(f"run_new_{i}", "analyse-audio", status, later, later,
                    later + timedelta(seconds=20 * (i + 1)))
    assert app.poll_all_once(), app.health()
    assert app.poll_all_once()  # the same runs again: counted once

    def finished(queue, outcome):
        return value(app, "pipemon_queue_jobs_finished_total", queue=queue, outcome=outcome)

    assert finished("separate-stems", "succeeded") == 1
    assert finished("separate-stems", "failed") == 1
    assert finished("analyse-audio", "succeeded") == 2
    assert finished("analyse-audio", "cancelled") == 1
    assert finished("analyse-audio", "failed") == 1
    run_sum = value(app, "pipemon_queue_job_run_seconds_sum", queue="analyse-audio",
                    outcome="succeeded")
    assert run_sum == pytest.approx(20 + 40, abs=0.01)
    long_run = value(app, "pipemon_queue_job_run_seconds_bucket", queue="separate-stems",
                     outcome="succeeded", le="3600.0")
    assert long_run == 0  # it ran ~90 minutes: above the last bucket
    # The finished list asked for runs created since the oldest run active at the last poll.
    finished_requests = [p for _, path, p in api.requests
                         if path == "/api/v1/runs" and "COMPLETED" in p["filter[status]"]]
    assert finished_requests[0]["filter[createdAt][from]"] <= \
        (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert all(len(p["filter[status]"].split(",")) == 7 for p in finished_requests)


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


def test_rate_limit_waits_for_retry_after(make_app, api):
    app = make_app([source(api)])
    api.fail_with = (429, {"Retry-After": "1"})
    assert not app.poll_all_once()
    throttled_at = time.monotonic()
    api.fail_with = None
    calls = len(api.requests)
    assert not app.poll_all_once()  # still inside Retry-After: no request at all
    assert len(api.requests) == calls
    assert app.runners[0].last_error.reason == "throttled"
    wait_until(app.poll_all_once, 10, "the source to recover after Retry-After")
    first_retry = api.requests[calls][0]
    assert first_retry - throttled_at >= 0.9, "a request went out before Retry-After"
    assert value(app, "pipemon_source_poll_errors_total", kind="trigger_dev",
                 reason="throttled") >= 2


def test_timeout_wrong_key_bad_body_and_server_gone(make_app, api, caplog):
    caplog.set_level(logging.INFO)
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

    api.stop()
    assert not app.poll_all_once()
    assert app.runners[0].last_error.reason == "connect"
    shown = " ".join([str(app.health()), str(wrong.health()), landing_page(app),
                      landing_page(wrong), caplog.text])
    assert KEY not in shown and "tr_prod_wrongKey99" not in shown


def test_config_needs_a_key_and_an_http_url(tmp_path):
    import yaml

    from pipemon.config import ConfigError, load

    path = tmp_path / "trigger.yaml"
    path.write_text(yaml.safe_dump({"sources": [
        {"name": "a", "kind": "trigger_dev", "base_url": "api.trigger.dev"},
        {"name": "b", "kind": "trigger_dev", "secret_key_file": "key.txt"},
    ]}))
    (tmp_path / "key.txt").write_text(KEY + "\n")
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert err.value.problems == [
        "sources[0].base_url: expected an http:// or https:// URL, got 'api.trigger.dev'",
        "sources[0].secret_key: required (or secret_key_file)",
    ]
    path.write_text(yaml.safe_dump({"sources": [
        {"name": "b", "kind": "trigger_dev", "secret_key_file": "key.txt"}]}))
    (source,) = load(path, env={}).sources
    assert (source.base_url, source.secret_key.reveal()) == ("https://api.trigger.dev", KEY)
