"""Debian's Prometheus (2.42, package `prometheus`) and Alertmanager (0.25, package
`prometheus-alertmanager`) as processes on loopback (testkit.processes.Process), and the healthy
history a Prometheus in service would hold (`healthy_slo_history`, for `Prometheus.backfill`).
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from testkit.net import free_port, http_get
from testkit.processes import Process, require


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
                 interval: str = "1s", alertmanagers: list[str] = (), job: str = "pipemon",
                 other_jobs: dict[str, dict] = (), scrape_configs: list[dict] = ()):
        """`other_jobs`: more scrape jobs, name -> a static_configs entry (targets, labels);
        `scrape_configs`: more jobs as Prometheus's own scrape_config entries (a blackbox
        job's params and relabelling)."""
        super().__init__(workdir)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]},
                               *({"job_name": name, "static_configs": [static]}
                                 for name, static in dict(other_jobs).items()),
                               *scrape_configs],
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
        self.wait_ready("/-/ready")
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
        self.wait_ready("/-/ready")
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
