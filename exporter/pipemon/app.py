"""The application object: owns the registry, the sources, their runners and the scheduler."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from pipemon import metrics as m
from pipemon.config import Config
from pipemon.scheduler import Scheduler, SourceRunner
from pipemon.sources import build

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
        families = m.Families()
        families(m.BUILD_INFO).add_metric([VERSION], 1)
        for runner in self._app.runners:
            runner.collect(families)
        return iter(families)


class App:
    def __init__(self, config: Config, registry: CollectorRegistry | None = None):
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        secrets = config.secrets()
        self.runners = [SourceRunner(build(source), secrets) for source in config.sources]
        self.scheduler = Scheduler(self.runners)
        self.registry.register(PipemonCollector(self))

    def start(self) -> None:
        self.scheduler.start()

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

    def health(self) -> dict:
        sources = [runner.health() for runner in self.runners]
        if not self.ready:
            status = "starting"
        elif all(s["status"] == "up" for s in sources):
            status = "ok"
        else:
            status = "degraded"
        return {"status": status, "version": VERSION, "sources": sources}
