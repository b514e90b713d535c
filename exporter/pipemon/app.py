"""The application object: owns the registry, the sources, their runners and the scheduler."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from pipemon import metrics as m
from pipemon import verdict
from pipemon.config import Config
from pipemon.exposition import Exposition
from pipemon.kinds import build
from pipemon.scheduler import Scheduler, SourceRunner

log = logging.getLogger(__name__)

try:
    VERSION = version("pipemon")
except PackageNotFoundError:  # running from a source tree that was not installed
    VERSION = "0.0.0+unknown"


class PipemonCollector:
    """Builds every family fresh from the runners' latest results; never does I/O."""

    def __init__(self, app: App):
        self._app = app

    def describe(self) -> Iterator[Metric]:
        specs = {spec.name: spec for spec in m.SELF_SPECS}
        for runner in self._app.runners:
            specs.update((spec.name, spec) for spec in runner.source.specs)
        return (spec.family() for spec in specs.values())

    def collect(self) -> Iterator[Metric]:
        families = m.Families({runner.name: runner.source.config.labels
                               for runner in self._app.runners if runner.source.config.labels})
        families(m.BUILD_INFO).add_metric([VERSION], 1)
        families(m.CONFIG_RELOAD_OK).add_metric([], 1 if self._app.last_reload_ok else 0)
        families(m.CONFIG_RELOAD_TIME).add_metric([], self._app.last_reload_success)
        for runner in self._app.runners:
            runner.collect(families)
        return iter(families)


class App:
    def __init__(self, config: Config, registry: CollectorRegistry | None = None):
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.exposition = Exposition(self.registry)
        secrets = config.secrets()
        self.runners = [self._runner(source, secrets) for source in config.sources]
        self.scheduler = Scheduler()
        self._started = False
        # The files whose last reload was refused ("config", "web config"): the metric says 0
        # until every one of them loaded again, whichever reload (SIGHUP, file change) did it.
        self._refused: set[str] = set()
        self.last_reload_success = time.time()
        self.registry.register(PipemonCollector(self))

    def _runner(self, source, secrets: list[str]) -> SourceRunner:
        return SourceRunner(build(source), secrets, on_poll=self.exposition.invalidate)

    def start(self) -> None:
        self._started = True
        self.scheduler.start(self.runners)

    def reload(self, config: Config, timeout: float = 4.0) -> tuple[int, int, int]:
        """Switch to a new config. Sources whose config is unchanged keep running, with their
        counters; changed, added and removed ones are restarted, started and stopped.
        Returns (kept, started, stopped)."""
        secrets = config.secrets()
        current = {runner.name: runner for runner in self.runners}
        runners = []
        for source in config.sources:
            kept = current.get(source.name)
            same = kept is not None and kept.source.config == source
            runners.append(kept if same else self._runner(source, secrets))
        gone = [runner for runner in self.runners if runner not in runners]
        fresh = [runner for runner in runners if runner not in self.runners]
        self.scheduler.remove(gone, timeout)
        self.runners, self.config = runners, config
        if self._started:
            self.scheduler.start(fresh)
        self.reload_succeeded()
        return len(runners) - len(fresh), len(fresh), len(gone)

    @property
    def last_reload_ok(self) -> bool:
        """pipemon_config_last_reload_successful: every file's last reload succeeded."""
        return not self._refused

    def reload_succeeded(self, what: str = "config") -> None:
        """`what` (the config, the web config) was loaded again and is running."""
        self._refused.discard(what)
        if not self._refused:
            self.last_reload_success = time.time()
        self.exposition.invalidate()

    def reload_failed(self, what: str = "config") -> None:
        """A new `what` was refused; the running one stays."""
        self._refused.add(what)
        self.exposition.invalidate()

    def stop(self, timeout: float = 4.0) -> None:
        self.scheduler.stop(timeout)

    def poll_all_once(self) -> bool:
        """Poll every source once, concurrently; True when all succeeded."""
        with ThreadPoolExecutor(max_workers=min(8, len(self.runners))) as pool:
            # list() first: all() would stop at the first failure, and closing map's iterator
            # early cancels the polls that have not started yet.
            results = list(pool.map(lambda runner: runner.poll_once(), self.runners))
        return all(results)

    def close(self) -> None:
        for runner in self.runners:
            runner.source.close()

    @property
    def ready(self) -> bool:
        """Every source has finished its first poll attempt (successful or not)."""
        return all(runner.up is not None for runner in self.runners)

    def verdict(self) -> dict:
        """The pipeline verdict: per source a status from what it measured, and a summary."""
        return verdict.overall([runner.verdict() for runner in self.runners])

    def health_status(self, health: dict) -> int:
        """The HTTP status of /health for this body (its verdict)."""
        return verdict.http_status_of(health["verdict"]["status"], self.config.health)

    def health(self) -> dict:
        sources = [runner.health() for runner in self.runners]
        if not self.ready:
            status = "starting"
        elif all(s["status"] == "up" for s in sources):
            status = "ok"
        else:
            status = "degraded"
        return {"status": status, "version": VERSION, "verdict": self.verdict(),
                "sources": sources}
