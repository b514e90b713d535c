"""Sample histories on a fixed step, and their promtool notation.

A history holds one value per step for each series: a number, `None` (no sample at that step)
or `STALE` (Prometheus's staleness marker: the series disappeared at that step, so instant
queries stop returning its last value at once instead of up to 5 minutes later).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

STALE = "stale"
Labels = tuple[tuple[str, str], ...]


def labels_key(name: str, labels: dict[str, str]) -> Labels:
    return (("__name__", name), *sorted((k, str(v)) for k, v in labels.items()))


def selector(key: Labels) -> str:
    """`name{a="b", ...}` with PromQL string escapes."""
    name = dict(key)["__name__"]
    inner = ", ".join(f"{k}={_quote(v)}" for k, v in key if k != "__name__")
    return f"{name}{{{inner}}}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class History:
    """Series sharing one time axis: `steps` samples `step` seconds apart from `start`."""

    def __init__(self, steps: int, step: float = 15.0, start: float = 0.0):
        self.steps, self.step, self.start = steps, step, start
        self._series: dict[Labels, list] = {}

    def values(self, name: str, **labels: str) -> list:
        """The value list of a series (created empty: every step `None`)."""
        key = labels_key(name, labels)
        if key not in self._series:
            self._series[key] = [None] * self.steps
        return self._series[key]

    def put(self, key: Labels, values: list) -> None:
        assert len(values) == self.steps, (len(values), self.steps)
        self._series[key] = values

    def __iter__(self) -> Iterator[tuple[Labels, list]]:
        return iter(sorted(self._series.items()))

    def __len__(self) -> int:
        return len(self._series)

    def mark_stale(self) -> None:
        """Put a staleness marker where a present series first goes missing, as Prometheus does
        when a scrape fails or a series leaves the exposition."""
        for values in self._series.values():
            present = False
            for i, value in enumerate(values):
                if value is None or value == STALE:
                    if present and value is None:
                        values[i] = STALE
                    present = False
                else:
                    present = True


def notation(values: list) -> str:
    """promtool's series notation: `v` one sample, `vxN` N+1 equal samples, `_xN` N missing
    samples, `stale` a staleness marker."""
    out: list[str] = []
    i, n = 0, len(values)
    while i < n:
        value = values[i]
        j = i + 1
        while j < n and values[j] == value and value != STALE:
            j += 1
        run = j - i
        if value is None:
            out.append("_" if run == 1 else f"_x{run}")
        elif value == STALE:
            out.append("stale")
        else:
            text = _number(value)
            out.append(text if run == 1 else f"{text}x{run - 1}")
        i = j
    return " ".join(out)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def yaml_string(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text)


def openmetrics(history: History, origin: float) -> str:
    """The history as OpenMetrics text with timestamps from `origin` (unix seconds), for
    `promtool tsdb create-blocks-from openmetrics`. Staleness markers cannot be written there:
    a Prometheus reading the blocks carries a series' last value over a gap for up to 5m."""
    lines: list[str] = []
    for key, values in history:
        labels = ",".join(f"{k}={_quote(v)}" for k, v in key if k != "__name__")
        name = dict(key)["__name__"] + (f"{{{labels}}}" if labels else "")
        for i, value in enumerate(values):
            if value is not None and value != STALE:
                at = origin + history.start + i * history.step
                lines.append(f"{name} {_number(value)} {at:.3f}")
    return "\n".join([*lines, "# EOF", ""])
