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

from tests.helpers import free_port, wait_until

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
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n"
                                     f"{self.log()}")
            return http_get(self.url + path, timeout=2)[0] == 200

        try:
            wait_until(ready, timeout, f"{self.name} to answer 200 on {path}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"{self.name} did not become ready:\n{self.log()}") from None

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

    def __init__(self, workdir: Path, sources: list[dict], **top):
        super().__init__(workdir)
        self.config = workdir / "pipemon.yaml"
        self.config.write_text(yaml.safe_dump({**top, "sources": sources}, sort_keys=False))

    def start(self) -> Exporter:
        self._spawn([sys.executable, "-m", "pipemon", "serve", "--config", str(self.config),
                     "--web.listen-address", f"127.0.0.1:{self.port}"],
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait_ready("/readyz")
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


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
    """Alertmanager 0.25 with `config_file`, no gossip (no cluster)."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config_file: Path):
        super().__init__(workdir)
        self.config_file = config_file

    def start(self) -> Alertmanager:
        binary = require("prometheus-alertmanager", "prometheus-alertmanager")
        self._spawn([binary, f"--config.file={self.config_file}",
                     f"--storage.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}",
                     "--cluster.listen-address=", "--log.level=warn"])
        self._wait_ready("/-/ready")
        return self

    def alerts(self) -> list[dict]:
        _, body = http_get(f"{self.url}/api/v2/alerts")
        return json.loads(body)
