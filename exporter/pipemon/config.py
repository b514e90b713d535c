"""Load pipemon's YAML config file: interpolate `${VAR}`, pick each source's kind, read it.

Above the source kinds (`pipemon.sources`), which declare their own keys with `pipemon.schema`:
this module only knows the file's top level. Every problem in the file is reported at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipemon.kinds import KINDS, source_class
from pipemon.schema import (
    UNRESOLVED,
    Checked,
    ConfigError,
    Node,
    join_path,
    label_text,
    mapping,
    one_of,
    positive_duration,
    read,
    show,
    value,
)
from pipemon.sources.base import (
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    SourceConfig,
    check_constant_labels,
)
from pipemon.verdict import HealthConfig

__all__ = ["Config", "ConfigError", "Defaults", "HealthConfig", "interpolate", "load"]


@dataclass(frozen=True, kw_only=True)
class Defaults(Checked):
    """The `defaults:` block: what every source has unless it sets its own."""

    interval: float = value("How often each source is polled.", positive_duration,
                            DEFAULT_INTERVAL, shown_default="15s")
    timeout: float = value("Deadline of each poll.", positive_duration, DEFAULT_TIMEOUT,
                           shown_default="5s")
    labels: dict[str, str] = mapping(
        "Labels added to every series of every source (e.g. `{env: prod}`); a source's own"
        " `labels` are merged over them.", label_text, {}, shown_default="none")

    def check(self, node: Node, parent: dict[str, Any]) -> None:
        check_constant_labels(node, self.labels)


@dataclass(frozen=True)
class Config:
    file: str
    sources: tuple[SourceConfig, ...]
    health: HealthConfig = field(default_factory=HealthConfig)

    def secrets(self) -> list[str]:
        return [s for src in self.sources for s in src.secrets()]


# --- environment interpolation ---

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Replace `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Raises ValueError."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        var, default = match.group(1), match.group(2)
        value = env.get(var)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ValueError(f"environment variable {var} is not set")
            return default
        return value

    return _VAR.sub(replace, text)


def interpolate_tree(value: Any, path: str, env: dict, problems: list[str]) -> Any:
    if isinstance(value, str):
        try:
            return interpolate(value, env)
        except ValueError as err:
            problems.append(f"{path}: {err}")
            return UNRESOLVED
    if isinstance(value, dict):
        return {k: interpolate_tree(v, join_path(path, k), env, problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_tree(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


def load(path: str | os.PathLike, env: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file. Raises ConfigError listing every problem."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(file, [f"cannot read file: {err.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(file, [f"{where}invalid YAML: {reason}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(file, ["expected a mapping with a 'sources' list at the top"])

    problems: list[str] = []
    data = interpolate_tree(data, "", dict(os.environ if env is None else env), problems)
    root = Node(data, "", problems, Path(path).resolve().parent)
    defaults_node = root.child("defaults", required=False)
    defaults = read(Defaults, defaults_node) if defaults_node else Defaults()
    health_node = root.child("health", required=False)
    health = read(HealthConfig, health_node) if health_node else HealthConfig()

    sources: list[tuple[int, SourceConfig]] = []
    raw_sources = root.data.get("sources")
    root.skip("sources")
    if raw_sources is None:
        root.problem("sources", "required")
    elif not isinstance(raw_sources, list) or not raw_sources:
        root.problem("sources", "expected a non-empty list of sources")
        raw_sources = []
    for i, raw in enumerate(raw_sources or []):
        node_path = f"sources[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{node_path}: expected a mapping, got {show(raw)}")
            continue
        node = Node(raw, node_path, problems, root.base_dir)
        kind = node.get("kind", one_of(*sorted(KINDS)))
        if kind is None:
            continue
        source = read(source_class(kind).config_type, node, fixed={"kind": kind},
                      defaults={"interval": defaults.interval, "timeout": defaults.timeout})
        if defaults.labels:
            source = dataclasses.replace(source, labels={**defaults.labels, **source.labels})
        sources.append((i, source))

    seen: set[str] = set()
    for i, source in sources:
        if source.name and source.name in seen:
            problems.append(f"sources[{i}].name: duplicate source name {source.name!r}")
        seen.add(source.name)
    root.finish()
    if problems:
        raise ConfigError(file, problems)
    return Config(file=file, sources=tuple(source for _, source in sources), health=health)
