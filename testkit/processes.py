"""Real processes on loopback: the base runner (`Process`), the pipemon exporter
(`Exporter`, `pipemon serve`), Debian's node_exporter (`NodeExporter`) and blackbox_exporter
(`BlackboxExporter`); Prometheus and Alertmanager are in testkit.prometheus.

Each listens on 127.0.0.1 on a free port, keeps its config, data and log in its work dir, is
waited for with a deadline, and is stopped by `stop()` (the test fixtures call it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import yaml
from psycopg.conninfo import make_conninfo

from testkit import ROOT
from testkit.net import GaveUp, free_port, http_get, wait_until


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    assert path, f"{binary} is missing: apt-get install {package}"
    return path


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

    @property
    def target(self) -> str:
        """host:port, as a Prometheus scrape target."""
        return f"127.0.0.1:{self.port}"

    def _spawn(self, argv: list[str], env: dict | None = None) -> None:
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, env=env)

    def wait_ready(self, path: str, timeout: float = 30) -> None:
        """Wait until `path` answers 200; else stop the process and fail with its log."""

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

    def __init__(self, workdir: Path, sources: list[dict], extra_args: list[str] = (),
                 env: dict[str, str] | None = None, **top):
        super().__init__(workdir)
        self.env = env or {}  # added to this process's environment
        self.config = workdir / "pipemon.yaml"
        self.config.write_text(yaml.safe_dump({**top, "sources": sources}, sort_keys=False))
        self.extra_args = list(extra_args)

    def start(self, timeout: float = 30) -> Exporter:
        """Start it and wait until every source has polled once (/readyz)."""
        self._spawn([sys.executable, "-m", "pipemon", "serve", "--config", str(self.config),
                     "--web.listen-address", f"127.0.0.1:{self.port}", *self.extra_args],
                    env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        self.wait_ready("/readyz", timeout)
        return self


class Relay(Process):
    """`pipemon relay serve` with a config file (a dict written as YAML)."""

    name = "pipemon-relay"

    def __init__(self, workdir: Path, config: dict, extra_args: list[str] = ()):
        super().__init__(workdir)
        self.config = workdir / "relay.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.extra_args = list(extra_args)

    def start(self, timeout: float = 30) -> Relay:
        self._spawn([sys.executable, "-m", "pipemon", "relay", "serve", "--config",
                     str(self.config), "--web.listen-address", f"127.0.0.1:{self.port}",
                     *self.extra_args], env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_ready("/healthz", timeout)
        return self

    def migrate(self) -> None:
        """`pipemon relay migrate` with the same config (its schema, before `start()`)."""
        migrate_relay(self.config)


def migrate_relay(config_path: Path) -> None:
    """`pipemon relay migrate --config config_path`; fails with its stderr."""
    result = subprocess.run([sys.executable, "-m", "pipemon", "relay", "migrate",
                             "--config", str(config_path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"pipemon relay migrate failed:\n{result.stderr}"


class NodeExporter(Process):
    """Debian's prometheus-node-exporter with the collectors the dashboards read (CPU, load,
    memory, filesystems, network)."""

    name = "node_exporter"

    def start(self, timeout: float = 30) -> NodeExporter:
        binary = require("prometheus-node-exporter", "prometheus-node-exporter")
        self._spawn([binary, f"--web.listen-address=127.0.0.1:{self.port}",
                     "--collector.disable-defaults", "--collector.cpu", "--collector.loadavg",
                     "--collector.meminfo", "--collector.filesystem", "--collector.netdev",
                     "--log.level=warn"])
        self.wait_ready("/metrics", timeout)
        return self


class PostgresExporter(Process):
    """Debian's prometheus-postgres-exporter (0.11) on `dsn`, with its default collectors
    (pg_up, pg_stat_activity, pg_stat_database, pg_settings, database sizes)."""

    name = "postgres_exporter"

    def __init__(self, workdir: Path, dsn: str):
        super().__init__(workdir)
        # lib/pq (Go) asks for TLS unless told otherwise; the local server has none
        self.dsn = make_conninfo(dsn, sslmode="disable")

    def start(self, timeout: float = 30) -> PostgresExporter:
        binary = require("prometheus-postgres-exporter", "prometheus-postgres-exporter")
        # the DSN goes through the environment, as the exporter documents (not argv, not logs)
        self._spawn([binary, f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                    env={**os.environ, "DATA_SOURCE_NAME": self.dsn})
        self.wait_ready("/metrics", timeout)
        return self


class ServiceApp(Process):
    """testkit/service_app.py: an instrumented HTTP service (the RED rules' metrics)."""

    name = "service_app"

    def __init__(self, workdir: Path, service: str, *args: str):
        super().__init__(workdir)
        self.argv = ["--service", service, *args]

    def start(self, timeout: float = 30) -> ServiceApp:
        root = str(Path(__file__).resolve().parent.parent)
        self._spawn([sys.executable, "-m", "testkit.service_app", "--port", str(self.port),
                     *self.argv], env={**os.environ, "PYTHONPATH": root})
        self.wait_ready("/metrics", timeout)
        return self


class BlackboxExporter(Process):
    """Debian's prometheus-blackbox-exporter with a module file (default: the shipped
    examples/blackbox.yml). Prometheus probes through it: GET /probe?module=...&target=<url>;
    `target` (host:port) is what the scrape job's relabeling puts in `__address__`."""

    name = "blackbox_exporter"

    def __init__(self, workdir: Path, config_file: Path | None = None):
        super().__init__(workdir)
        self.config_file = Path(config_file or ROOT / "examples" / "blackbox.yml")

    def start(self, timeout: float = 30) -> BlackboxExporter:
        binary = require("prometheus-blackbox-exporter", "prometheus-blackbox-exporter")
        self._spawn([binary, f"--config.file={self.config_file}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"])
        self.wait_ready("/-/healthy", timeout)
        return self

    def probe(self, target: str, module: str = "http_2xx") -> str:
        """The exposition of one probe, as Prometheus would scrape it."""
        query = urllib.parse.urlencode({"module": module, "target": target})
        return http_get(f"{self.url}/probe?{query}", timeout=15)[1]
