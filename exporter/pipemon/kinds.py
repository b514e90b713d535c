"""The registry of source kinds: `kind:` in the config -> the class that polls it (and, through
its `config_type`, the keys it reads). A new kind is one module in `sources/` and one line
here. It sits above `sources/`, so that no source module imports through it."""

from __future__ import annotations

from pipemon.sources.analysis import AnalysisSource
from pipemon.sources.base import Source, SourceConfig
from pipemon.sources.checks import ChecksSource
from pipemon.sources.host import HostSource
from pipemon.sources.queue import QueueSource
from pipemon.sources.storage import StorageSource
from pipemon.sources.trigger_dev import TriggerDevSource

KINDS: dict[str, type[Source]] = {
    "queue": QueueSource,
    "analysis": AnalysisSource,
    "storage": StorageSource,
    "checks": ChecksSource,
    "host": HostSource,
    "trigger_dev": TriggerDevSource,
}


def build(config: SourceConfig) -> Source:
    return KINDS[config.kind](config)
