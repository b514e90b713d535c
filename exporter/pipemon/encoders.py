"""The two text formats Prometheus scrapes, rendered from prometheus_client's families.

prometheus_client's own encoders handle every escaping scheme a scraper may ask for, and pay
for it on every sample: its OpenMetrics encoder checks the characters of each sample's name one
by one. That was 7 of the 8 ms of CPU a scrape of 1,100 series cost (bench/README.md, issue 19).
pipemon's metric and label names are legacy Prometheus names (checked here once per name), for
which the `underscores` and `allow-utf-8` schemes change nothing, so these encoders only escape
label values and HELP texts. `tests/test_encoders.py` holds them byte for byte to
prometheus_client's output; any other request goes to prometheus_client's encoders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.openmetrics.exposition import (
    ALLOWUTF8,
    CONTENT_TYPE_LATEST,
    UNDERSCORES,
)
from prometheus_client.utils import floatToGoString

Encoder = Callable[[Iterable[Metric]], bytes]

LEGACY_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LEGACY_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Names already found legacy: a set lookup per sample instead of a regular expression.
_legacy_names: set[str] = set()
_legacy_labels: set[str] = set()
TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram",
              "summary": "summary", "unknown": "untyped"}


def choose(accept: str) -> tuple[str, Encoder | None]:
    """(content type, pipemon's encoder), or None where prometheus_client must render (an
    escaping scheme that rewrites names, or a format version pipemon does not render)."""
    client_encoder, content_type = choose_encoder(accept)
    if content_type == CONTENT_TYPE_PLAIN_0_0_4:
        return content_type, encode_text
    keywords = getattr(client_encoder, "keywords", {})
    if (content_type.startswith(CONTENT_TYPE_LATEST)
            and keywords.get("version") == "1.0.0"
            and keywords.get("escaping", UNDERSCORES) in (UNDERSCORES, ALLOWUTF8)):
        return content_type, encode_openmetrics
    return content_type, None


def encode_text(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format 0.0.4."""
    out: list[str] = []
    for family in families:
        name = family.name
        kind = TEXT_TYPES.get(family.type)
        if kind is None:
            raise ValueError(f"{name}: type {family.type} is not rendered by pipemon")
        exposed = name + "_total" if kind == "counter" else name
        _check(exposed)
        help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {exposed} {help_text}\n# TYPE {exposed} {kind}\n")
        if _prerendered(family):
            out.extend(family.lines)
            continue
        created: list[str] = []
        for sample in family.samples:
            line = _sample_line(sample)
            if sample.name == name + "_created":
                created.append(line)  # text format: in a gauge family of its own, after
            else:
                out.append(line)
        if created:
            out.append(f"# HELP {name}_created {help_text}\n# TYPE {name}_created gauge\n")
            out.extend(created)
    return "".join(out).encode("utf-8")


def encode_openmetrics(families: Iterable[Metric]) -> bytes:
    """OpenMetrics 1.0.0."""
    out: list[str] = []
    for family in families:
        name = family.name
        _check(name)
        help_text = _escape(family.documentation)
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {family.type}\n")
        if family.unit:
            out.append(f"# UNIT {name} {family.unit}\n")
        if _prerendered(family):
            out.extend(family.lines)
        else:
            out.extend(_sample_line(sample) for sample in family.samples)
    out.append("# EOF\n")
    return "".join(out).encode("utf-8")


def _prerendered(family) -> bool:
    """True if the family carries the text of all its samples (metrics.HistogramFamily)."""
    return getattr(family, "lined", -1) == len(family.samples)


def line_start(name: str, labels: dict[str, str]) -> str:
    """A sample's line up to its value: the name and the labels, sorted and escaped."""
    _check(name)
    if labels:
        pairs = ",".join(f'{_label_name(k)}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{pairs}}} "
    return f"{name} "


def _sample_line(sample) -> str:
    if sample.timestamp is not None or sample.exemplar is not None:
        raise ValueError(f"{sample.name}: timestamps and exemplars are not rendered by pipemon")
    return f"{line_start(sample.name, sample.labels)}{floatToGoString(sample.value)}\n"


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _check(name: str) -> None:
    if name not in _legacy_names:
        if not LEGACY_NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} is not a legacy Prometheus name")
        _legacy_names.add(name)


def _label_name(name: str) -> str:
    if name not in _legacy_labels:
        if not LEGACY_LABEL.fullmatch(name):
            raise ValueError(f"label name {name!r} is not a legacy Prometheus name")
        _legacy_labels.add(name)
    return name
