"""Regressions: log fields passed with `extra=`, `?name[]=` after a reload adding a source kind,
and `pipemon_config_last_reload_successful` after a web config is fixed."""

from __future__ import annotations

import json
import logging
import signal
import sys

import pytest
import yaml

from pipemon import logs, webconfig
from pipemon.app import App
from pipemon.config import load
from pipemon.server import HttpServer
from testkit.app import write_config
from testkit.net import free_port, http_get, wait_until
from testkit.processes import Exporter

PY = sys.executable
FAKE_FFMPEG = [PY, "-c", "print('ffmpeg version 6.1.1')"]


def host_source() -> dict:
    return {"name": "worker", "kind": "host", "interval": "30s", "timeout": "2s",
            "tools": [{"name": "ffmpeg", "command": FAKE_FFMPEG}]}


def dead_storage_source() -> dict:
    """A bucket on a port nobody listens on: every probe fails at `put` with `connect`."""
    return {"name": "r2", "kind": "storage", "endpoint_url": f"http://127.0.0.1:{free_port()}",
            "bucket": "media", "access_key_id": "test-key", "secret_access_key": "test-secret",
            "interval": "30s", "timeout": "1s", "max_attempts": 1}


# --- 1. every field passed with extra= reaches the log line ---


@pytest.fixture
def log_lines(capsys):
    """`logs.setup(...)` as `pipemon serve` runs it; returns a reader of what it wrote."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def setup(fmt: str):
        logs.setup("debug", fmt)
        capsys.readouterr()

        def read() -> list[str]:
            return capsys.readouterr().err.splitlines()

        return read

    yield setup
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def json_entries(read) -> list[dict]:
    return [json.loads(line) for line in read() if line.startswith("{")]


def test_json_log_of_a_storage_probe_failure_has_its_operation(tmp_path, log_lines):
    read = log_lines("json")
    app = App(load(write_config(tmp_path / "pipemon.yaml", [dead_storage_source()])))
    try:
        app.poll_all_once()
    finally:
        app.close()
    [entry] = [e for e in json_entries(read) if "storage probe failed" in e["msg"]]
    assert (entry["source"], entry["reason"], entry["operation"]) == ("r2", "connect", "put")


@pytest.mark.postgres
def test_json_log_of_a_check_failure_has_its_check(tmp_path, pg_dsn, log_lines):
    read = log_lines("json")
    source = {"name": "integrity", "kind": "checks", "dsn": pg_dsn, "interval": "30s",
              "timeout": "5s", "checks": [{"name": "divides", "sql": "SELECT 1/0 AS value"}]}
    app = App(load(write_config(tmp_path / "pipemon.yaml", [source])))
    try:
        app.poll_all_once()
    finally:
        app.close()
    [entry] = [e for e in json_entries(read) if "check divides failed" in e["msg"]]
    assert (entry["source"], entry["check"]) == ("integrity", "divides")
    assert entry["reason"]


def test_json_log_of_a_web_config_reload_has_its_file(tmp_path, log_lines):
    read = log_lines("json")
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump({"http_server_config": {"headers": {"X-A": "1"}}}))
    reloader = webconfig.Reloader(str(path), webconfig.load(str(path)), lambda web: None,
                                  lambda: None)
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": "plain-password"}}))
    assert not reloader.reload()
    path.write_text(yaml.safe_dump({"http_server_config": {"headers": {"X-A": "2"}}}))
    assert reloader.reload()
    entries = [e for e in json_entries(read) if "web config reload" in e["msg"]]
    assert [e["level"] for e in entries] == ["error", "info"]
    assert [e.get("web_config") for e in entries] == [str(path), str(path)]


def test_every_extra_field_is_kept_in_json_and_text(log_lines):
    read = log_lines("json")
    logging.getLogger("pipemon.test").warning("hello", extra={"brand_new_field": "x y",
                                                              "count": 3})
    [entry] = json_entries(read)
    assert (entry["msg"], entry["brand_new_field"], entry["count"]) == ("hello", "x y", 3)
    assert not {"args", "exc_info", "msecs", "thread", "taskName"} & set(entry)

    read = log_lines("text")
    logging.getLogger("pipemon.test").warning("hello", extra={"brand_new_field": "x y",
                                                              "count": 3})
    [line] = read()
    assert 'brand_new_field="x y"' in line and "count=3" in line and line.endswith("msg=hello")


# --- 2. ?name[]= serves the families of a source kind added by a reload ---


def test_name_filter_serves_a_kind_added_by_reload(tmp_path):
    app = App(load(write_config(tmp_path / "one.yaml", [host_source()])))
    server = HttpServer.of(app, "127.0.0.1", 0)
    server.start()
    base = f"http://127.0.0.1:{server.port}/metrics"
    try:
        app.poll_all_once()
        status, body = http_get(f"{base}?name[]=pipemon_host_tool_up")
        assert status == 200 and 'pipemon_host_tool_up{source="worker"' in body

        app.reload(load(write_config(tmp_path / "two.yaml",
                                     [host_source(), dead_storage_source()])))
        app.poll_all_once()
        _, full = http_get(base)
        assert 'pipemon_storage_probe_success{' in full  # the family exists...
        # (asked alone: a name known at registration would have the collector collected)
        status, body = http_get(f"{base}?name[]=pipemon_storage_probe_success")
        assert status == 200
        assert 'pipemon_storage_probe_success{' in body, body  # ...and is served by name[]
        assert "pipemon_host_tool_up" not in body and "pipemon_source_up" not in body
    finally:
        server.stop()
        app.stop()
        app.close()


# --- 3. a fixed web config sets pipemon_config_last_reload_successful back to 1 ---


def test_reload_successful_returns_to_1_once_the_web_config_is_fixed(tmp_path, services):
    web = tmp_path / "web.yaml"
    good = {"http_server_config": {"headers": {"X-Pipemon": "1"}}}
    web.write_text(yaml.safe_dump(good))
    exporter = services(Exporter(tmp_path / "x", [host_source()],
                                 extra_args=["--web.config.file", str(web)]))

    def reload_ok() -> str | None:
        for line in http_get(exporter.url + "/metrics")[1].splitlines():
            if line.startswith("pipemon_config_last_reload_successful "):
                return line.split()[1]
        return None

    try:
        assert reload_ok() == "1.0"
        web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": "plain-password"}}))
        exporter.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: reload_ok() == "0.0", 10, "the failed web config reload reported")

        # fixed on disk, no signal: only the web config is read again (within 5 s)
        web.write_text(yaml.safe_dump(good))
        wait_until(lambda: "web config reloaded (changed on disk)" in exporter.log(), 15,
                   "the fixed web config reloaded")
        wait_until(lambda: reload_ok() == "1.0", 5, "the successful reload reported")

        # a broken pipemon config stays reported while the web config reloads fine
        exporter.config.write_text("sources: [")
        exporter.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reload failed" in exporter.log(), 10, "the refused config")
        assert reload_ok() == "0.0"
        web.write_text(yaml.safe_dump({"http_server_config": {"headers": {"X-Pipemon": "22"}}}))
        wait_until(lambda: exporter.log().count("web config reloaded (changed on disk)") == 2,
                   15, "the second web config change reloaded")
        assert reload_ok() == "0.0"
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- pipemon log ---\n{exporter.log()}") from None
