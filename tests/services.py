"""Real processes for end-to-end tests: the pipemon exporter, Prometheus and Alertmanager.

Each listens on 127.0.0.1 on a free port, keeps its data in a temp dir, is waited for with a
deadline, and is stopped by `stop()` (the fixtures call it). Debian's binaries are used:
`prometheus` (2.42) and `prometheus-alertmanager` (0.25).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from tests.helpers import GaveUp, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    assert path, f"{binary} is missing: apt-get install {package}"
    return path


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


class Process:
    """A child process with its log file; `stop()` sends SIGTERM, then SIGKILL."""

    name = "process"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, argv: list[str], env: dict | None = None) -> None:
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, env=env)

    def _wait_ready(self, path: str, timeout: float = 30) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise GaveUp(f"{self.name} exited with {self.proc.returncode}")
            return http_get(self.url + path, timeout=2)[0] == 200

        try:
            wait_until(ready, timeout, f"{self.name} to answer 200 on {path}")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{self.name} did not become ready ({exc}):\n"
                                 f"{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Exporter(Process):
    """`pipemon serve` with the given sources (a list of source dicts)."""

    name = "pipemon"

    def __init__(self, workdir: Path, sources: list[dict], extra_args: list[str] = (), **top):
        super().__init__(workdir)
        self.config = workdir / "pipemon.yaml"
        self.config.write_text(yaml.safe_dump({**top, "sources": sources}, sort_keys=False))
        self.extra_args = list(extra_args)

    def start(self) -> Exporter:
        self._spawn([sys.executable, "-m", "pipemon", "serve", "--config", str(self.config),
                     "--web.listen-address", f"127.0.0.1:{self.port}", *self.extra_args],
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait_ready("/readyz")
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def healthy_slo_history(now: float, seconds: int, step: int, bucket: str,
                        queues: tuple[str, ...], completed_per_second: float) -> str:
    """OpenMetrics for `Prometheus.backfill`: the SLI series the budget alerts average, all
    good, for `seconds` up to a minute ago, every `step` seconds (labels as the recording rules
    write them, for source "stems" and bucket source "r2"). A Prometheus in service has this
    history; without it the first minutes of any fault are a large share of every budget window
    and the SLO alerts page along with the symptoms."""
    stems = 'job="pipemon",source="stems"'
    families = {
        "source:pipemon_pipeline_available:bool": [(stems, 1)],
        "source_bucket:pipemon_storage_probe_success:max": [
            (f'bucket="{bucket}",job="pipemon",source="r2"', 1)],
        "source_queue:pipemon_queue_jobs_completed:rate5m": [
            (f'{stems},queue="{q}"', completed_per_second) for q in queues],
        "source_queue:pipemon_queue_jobs_failed:rate5m": [
            (f'{stems},queue="{q}"', 0) for q in queues],
    }
    end = int(now) - 60
    lines = []
    for name, series in families.items():
        lines.append(f"# TYPE {name} gauge")
        for labels, value in series:
            lines += [f"{name}{{{labels}}} {value} {t}" for t in range(end - seconds, end, step)]
    return "\n".join([*lines, "# EOF", ""])


class Prometheus(Process):
    """Prometheus scraping `targets` as job "pipemon", evaluating `rule_files`."""

    name = "prometheus"

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path] = (),
                 interval: str = "1s", alertmanagers: list[str] = (), job: str = "pipemon"):
        super().__init__(workdir)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }
        if alertmanagers:
            config["alerting"] = {"alertmanagers": [
                {"static_configs": [{"targets": list(alertmanagers)}]}]}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    def backfill(self, openmetrics: str) -> None:
        """Write series into the TSDB before `start()`: `openmetrics` is OpenMetrics text with
        timestamps (seconds) in the past, ending with "# EOF" (promtool tsdb
        create-blocks-from openmetrics)."""
        assert self.proc is None, "backfill before start()"
        source = self.workdir / "backfill.om"
        source.write_text(openmetrics)
        result = subprocess.run([require("promtool", "prometheus"), "tsdb",
                                 "create-blocks-from", "openmetrics", str(source),
                                 str(self.workdir / "data")],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, f"promtool backfill failed:\n{result.stdout}{result.stderr}"

    def start(self) -> Prometheus:
        binary = require("prometheus", "prometheus")
        self._spawn([binary, f"--config.file={self.config}",
                     f"--storage.tsdb.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}",
                     "--web.enable-lifecycle", "--log.level=warn"])
        self._wait_ready("/-/ready")
        return self

    def query(self, expr: str) -> list[dict]:
        """The result vector of an instant query (fails on a query error)."""
        status, body = http_get(f"{self.url}/api/v1/query?"
                                + urllib.parse.urlencode({"query": expr}))
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", f"{expr}: {body}"
        return payload["data"]["result"]

    def targets_up(self) -> bool:
        _, body = http_get(f"{self.url}/api/v1/targets")
        active = json.loads(body)["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def firing(self) -> dict[str, list[dict]]:
        """Firing alerts by alert name."""
        _, body = http_get(f"{self.url}/api/v1/alerts")
        alerts: dict[str, list[dict]] = {}
        for alert in json.loads(body)["data"]["alerts"]:
            if alert["state"] == "firing":
                alerts.setdefault(alert["labels"]["alertname"], []).append(alert)
        return alerts


class Alertmanager(Process):
    """Alertmanager 0.25 with `config_file`. Alone (no gossip) unless `cluster` is true: then it
    gossips on its own loopback port (`cluster_address`) with the `peers` (their addresses)."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config_file: Path, cluster: bool = False,
                 peers: list[str] = (), external_url: str | None = None,
                 log_level: str = "warn"):
        super().__init__(workdir)
        self.config_file = config_file
        self.log_level = log_level
        self.cluster_port = free_port() if cluster else None
        self.peers = list(peers)
        self.external_url = external_url

    @property
    def cluster_address(self) -> str:
        return f"127.0.0.1:{self.cluster_port}"

    def start(self) -> Alertmanager:
        binary = require("prometheus-alertmanager", "prometheus-alertmanager")
        argv = [binary, f"--config.file={self.config_file}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", f"--log.level={self.log_level}"]
        if self.external_url:
            argv.append(f"--web.external-url={self.external_url}")
        if self.cluster_port is None:
            argv.append("--cluster.listen-address=")
        else:
            argv.append(f"--cluster.listen-address={self.cluster_address}")
            argv += [f"--cluster.peer={peer}" for peer in self.peers]
        self._spawn(argv)
        self._wait_ready("/-/ready")
        return self

    def alerts(self) -> list[dict]:
        _, body = http_get(f"{self.url}/api/v2/alerts")
        return json.loads(body)

    def post(self, alerts: list[dict]) -> None:
        """Send alerts the way Prometheus does (POST /api/v2/alerts)."""
        request = urllib.request.Request(f"{self.url}/api/v2/alerts",
                                         data=json.dumps(alerts).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200, response.read()

    def cluster_ready(self, members: int) -> bool:
        """Whether gossip has settled with `members` peers (itself included): until then a
        clustered Alertmanager holds its notifications (at most --cluster.settle-timeout)."""
        _, body = http_get(f"{self.url}/api/v2/status")
        cluster = json.loads(body)["cluster"]
        return cluster["status"] == "ready" and len(cluster.get("peers") or []) == members
