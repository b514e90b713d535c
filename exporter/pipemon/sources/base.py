"""What every source kind provides."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pipemon.config import SourceConfig
from pipemon.metrics import Families, Spec


class Source(ABC):
    """One configured source. `poll()` runs on the scheduler's thread, `collect()` on scrapes.

    `poll()` returns an immutable snapshot of gauge data (or raises PollError) and updates the
    source's own counters under its lock; `collect()` emits the counters always and the gauges
    only from a snapshot that is current (the runner passes None after a failed poll).
    """

    #: metric families this kind may emit (for describe(), before any poll ran)
    specs: tuple[Spec, ...] = ()
    #: error reasons this kind can report, pre-initialised to 0 so rate() sees the first error
    error_reasons: tuple[str, ...] = ("internal",)

    def __init__(self, config: SourceConfig):
        self.config = config
        self.name = config.name
        self.kind = config.kind

    @abstractmethod
    def poll(self) -> Any:
        """Read the source once, within config.timeout. Returns the gauge snapshot."""

    @abstractmethod
    def collect(self, families: Families, snapshot: Any | None) -> None:
        """Add this source's samples to the scrape's families."""

    def describe(self) -> dict[str, Any]:
        """Extra facts for the landing page and /health (no secrets)."""
        return {}

    def interrupt(self) -> None:
        """Abort a poll in progress, from another thread (used at shutdown)."""

    def close(self) -> None:
        """Release connections."""
