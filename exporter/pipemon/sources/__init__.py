"""The source kinds: for each, how its config is read and which class polls it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipemon.sources import analysis, checks, host, queue, storage, trigger_dev
from pipemon.sources.base import Source


@dataclass(frozen=True)
class Kind:
    parse_config: Callable
    source: type[Source]


KINDS: dict[str, Kind] = {
    "queue": Kind(queue.parse_config, queue.QueueSource),
    "analysis": Kind(analysis.parse_config, analysis.AnalysisSource),
    "storage": Kind(storage.parse_config, storage.StorageSource),
    "checks": Kind(checks.parse_config, checks.ChecksSource),
    "host": Kind(host.parse_config, host.HostSource),
    "trigger_dev": Kind(trigger_dev.parse_config, trigger_dev.TriggerDevSource),
}


def build(config) -> Source:
    return KINDS[config.kind].source(config)
