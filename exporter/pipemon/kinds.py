"""The registry of source kinds: `kind:` in the config -> the class that polls it (and, through
its `config_type`, the keys it reads). A new kind is one module in `sources/` and one line
here. It sits above `sources/`, so that no source module imports through it.

A kind's module is imported only when a config uses it: storage's boto3 alone is 15 MiB of
resident memory that a config without a bucket never needs (bench/README.md, issue 19).
"""

from __future__ import annotations

from importlib import import_module

from pipemon.sources.base import Source, SourceConfig

KINDS: dict[str, str] = {
    "queue": "pipemon.sources.queue:QueueSource",
    "analysis": "pipemon.sources.analysis:AnalysisSource",
    "storage": "pipemon.sources.storage:StorageSource",
    "checks": "pipemon.sources.checks:ChecksSource",
    "host": "pipemon.sources.host:HostSource",
    "trigger_dev": "pipemon.sources.trigger_dev:TriggerDevSource",
}


def source_class(kind: str) -> type[Source]:
    module, _, name = KINDS[kind].partition(":")
    return getattr(import_module(module), name)


def build(config: SourceConfig) -> Source:
    return source_class(config.kind)(config)
