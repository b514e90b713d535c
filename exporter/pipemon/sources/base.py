"""What every source kind provides: its config's common keys, and the poll/collect contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pipemon.metrics import Families, Spec, constant_label_problem
from pipemon.schema import (
    Checked,
    Node,
    join_path,
    label_text,
    mapping,
    name,
    positive_duration,
    value,
)
from pipemon.verdict import Finding

DEFAULT_INTERVAL = 15.0
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, kw_only=True)
class SourceConfig(Checked):
    """Keys every source has. Each kind subclasses this with its own keys."""

    name: str = value("Unique name of the source: the `source` label of its series.", name)
    kind: str = ""  # not read as a setting: the loader picks the class by it
    interval: float = value(
        "How often the source is polled (default: `defaults.interval`).", positive_duration,
        DEFAULT_INTERVAL, shown_default="15s")
    timeout: float = value(
        "Deadline of one poll, at most `interval`; a poll past it fails as `timeout`"
        " (default: `defaults.timeout`).", positive_duration, DEFAULT_TIMEOUT,
        shown_default="5s")
    labels: dict[str, str] = mapping(
        "Labels added to every series of this source, e.g. `{env: prod, team: media}`; the"
        " rules keep them and the dashboards can select by them (docs/exporter.md). Merged"
        " over `defaults.labels`.", label_text, {}, shown_default="none")

    def check(self, node: Node, parent: dict[str, Any]) -> None:
        if self.interval and self.timeout and self.timeout > self.interval:
            node.problem("timeout", f"must not exceed interval ({self.interval:g}s): polls would"
                                    " overlap")
        check_constant_labels(node, self.labels)

    def secrets(self) -> list[str]:
        """Strings that must never be shown (for redaction of error messages)."""
        return []


def check_constant_labels(node: Node, labels: dict[str, str]) -> None:
    for label in labels:
        problem = constant_label_problem(label)
        if problem:
            node.problem(join_path("labels", label), problem)


class Source(ABC):
    """One configured source. `poll()` runs on the scheduler's thread, `collect()` on scrapes.

    `poll(deadline)` returns an immutable snapshot of gauge data (or raises PollError) and
    updates the source's own counters under its lock; it must return by `deadline` (a
    `time.monotonic()` value the runner sets `timeout` after the poll's start), cutting short
    whatever would run past it. `collect()` emits the counters always and the gauges only from
    a snapshot that is current (the runner passes None after a failed poll).
    """

    #: the config class of this kind (its keys, defaults and checks)
    config_type: ClassVar[type[SourceConfig]] = SourceConfig
    #: metric families this kind may emit (for describe(), before any poll ran)
    specs: tuple[Spec, ...] = ()
    #: error reasons this kind can report, pre-initialised to 0 so rate() sees the first error
    error_reasons: tuple[str, ...] = ("timeout", "internal")

    def __init__(self, config: SourceConfig):
        self.config = config
        self.name = config.name
        self.kind = config.kind

    @abstractmethod
    def poll(self, deadline: float) -> Any:
        """Read the source once, returning by `deadline`. Returns the gauge snapshot."""

    @abstractmethod
    def collect(self, families: Families, snapshot: Any | None) -> None:
        """Add this source's samples to the scrape's families."""

    def failed_measurements(self, snapshot: Any) -> list[str]:
        """What a successful poll measured as broken (a probe, a check, a tool), one line each:
        `pipemon once` fails on these too."""
        return []

    def findings(self, snapshot: Any) -> list[Finding]:
        """What the last successful poll measured as wrong, for the verdict on /health (a
        failed poll is critical by itself): a probe failing, a queue stalled, a check above
        its threshold, each a warning or critical."""
        return []

    def describe(self) -> dict[str, Any]:
        """Extra facts for the landing page and /health (no secrets)."""
        return {}

    def interrupt(self) -> None:
        """Abort a poll in progress, from another thread (used at shutdown)."""

    def close(self) -> None:
        """Release connections."""
