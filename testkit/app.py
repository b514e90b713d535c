"""pipemon in process: a config file from source dicts, an App built from it, the samples it
exports, and the example queue source (examples/schema.sql)."""

from __future__ import annotations

from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from pipemon.app import App
from pipemon.config import load


def write_config(path, sources: list[dict], **top: Any) -> str:
    path.write_text(yaml.safe_dump({**top, "sources": sources}, sort_keys=False))
    return str(path)


def build_app(tmp_path, sources: list[dict], **top: Any) -> App:
    config = load(write_config(tmp_path / "pipemon.yaml", sources, **top))
    return App(config, registry=CollectorRegistry())


def sample(app: App, name: str, **labels: str) -> float | None:
    return app.registry.get_sample_value(name, labels)


def queue_source(dsn: str, **overrides: Any) -> dict:
    """The generic queue source on examples/schema.sql's `jobs` table."""
    source = {
        "name": "stems",
        "kind": "queue",
        "dsn": dsn,
        "timeout": "5s",
        "table": "jobs",
        "columns": {"id": "id", "queue": "queue", "state": "status",
                    "created_at": "created_at", "available_at": "run_at",
                    "started_at": "started_at", "finished_at": "finished_at"},
        "stuck_after": "30m",
    }
    source.update(overrides)
    return source


def url_dsn(dsn: str) -> str:
    """A libpq key=value DSN as a postgresql:// URL, which Node's pg understands."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    auth = quote(params.get("user", "postgres"), safe="")
    if params.get("password"):
        auth += ":" + quote(params["password"], safe="")
    host = params.get("host", "127.0.0.1")
    return f"postgresql://{auth}@{host}:{params.get('port', 5432)}/{params['dbname']}"


def example_queue_source(preset: str, dsn: str, **extra: Any) -> dict:
    """The `preset` source of examples/queues.yaml as source `jobs` on `dsn`: the preset tests
    run the example as shipped."""
    from testkit import ROOT

    example = yaml.safe_load((ROOT / "examples" / "queues.yaml").read_text())
    [found] = [s for s in example["sources"] if s.get("preset") == preset]
    return {**found, "name": "jobs", "dsn": dsn, **extra}


def assert_schema_missing(app: App, words: str) -> None:
    """The first poll of a preset on a database without its library fails with reason
    `schema` and a message naming what is missing."""
    assert not app.poll_all_once()
    error = app.runners[0].last_error
    assert error.reason == "schema"
    assert words in error.message, error.message


def assert_finished_match(app: App, finished: dict, run_sum: dict) -> None:
    """The finished counters and run-time sums of source `jobs` are the ground truth's, per
    (queue, outcome)."""
    for (queue, outcome), count in finished.items():
        assert sample(app, "pipemon_queue_jobs_finished_total", source="jobs", queue=queue,
                      outcome=outcome) == count, (queue, outcome)
    for (queue, outcome), seconds in run_sum.items():
        measured = sample(app, "pipemon_queue_job_run_seconds_sum", source="jobs", queue=queue,
                          outcome=outcome)
        assert measured is not None and abs(measured - seconds) < 1e-3, \
            (queue, outcome, measured, seconds)
