"""Load and validate pipemon's YAML config into frozen dataclasses.

Every problem is collected as one line `path: message`; the caller prints them all at once, so a
user fixes a config in one round trip. Kind-specific keys are read by the source modules
(`sources/<kind>.py`), which get a `Node` to read from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_INTERVAL = 15.0
DEFAULT_TIMEOUT = 5.0

_MISSING = object()


class ConfigError(Exception):
    """The config is invalid; `problems` holds one `path: message` line per problem."""

    def __init__(self, file: str, problems: list[str]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.file}: {p}" for p in self.problems]


class Secret:
    """A credential: usable through `reveal()`, printed as `***` everywhere else."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SourceConfig:
    """Keys every source has. Kind modules subclass this with their own keys."""

    name: str
    kind: str
    interval: float
    timeout: float

    def secrets(self) -> list[str]:
        """Strings that must never be shown (for redaction of error messages)."""
        return []


@dataclass(frozen=True)
class Config:
    file: str
    sources: tuple[SourceConfig, ...]

    def secrets(self) -> list[str]:
        return [s for src in self.sources for s in src.secrets()]


# --- value parsers: each returns the parsed value or raises ValueError(message) ---

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


MAX_DURATION = 366 * 86400  # longer is a typo, and would overflow the scheduler's waits


def duration(value: Any) -> float:
    """`15s`, `5m`, `1h30m`, `250ms` -> seconds. A bare number is refused: its unit is a guess."""
    text = str(value).strip() if isinstance(value, str) else None
    if text and _DURATION_PART.sub("", text) == "" and _DURATION_PART.search(text):
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        if seconds > MAX_DURATION:
            raise ValueError(f"{value!r} is longer than a year")
        return seconds
    raise ValueError(f"expected a duration like 15s, 5m or 1h30m, got {value!r}")


def positive_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return seconds


def string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {_show(value)}")
    return value


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number >= 1, got {_show(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value

    return parse


def string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of strings, got {_show(value)}")
    return tuple(string(v) for v in value)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_PLAIN_KEY = re.compile(r"[\w.-]+")


def name(value: Any) -> str:
    text = string(value)
    if not _NAME.fullmatch(text):
        raise ValueError(f"expected letters, digits, '_', '-' or '.', got {text!r}")
    return text


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


# --- reading mappings with paths ---


def join_path(path: str, key) -> str:
    """`path.key`; a key that is not a plain word is quoted, so that a newline or `: ` in a
    key cannot break the one-line-per-problem output."""
    text = key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else repr(key)
    return f"{path}.{text}" if path else text


class Node:
    """A mapping being read. Remembers its path and which keys were read, to reject the rest."""

    def __init__(self, data: dict, path: str, problems: list[str], base_dir: Path):
        self.data = data
        self.path = path
        self.problems = problems
        self.base_dir = base_dir
        self._read: set[str] = set()

    def where(self, key) -> str:
        return join_path(self.path, key)

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.where(key)}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, parse: Callable[[Any], Any] = string, default: Any = _MISSING) -> Any:
        """The parsed value of `key`; `default` when absent (required when no default)."""
        self._read.add(key)
        if self.data.get(key) is UNRESOLVED:
            return None if default is _MISSING else default
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                self.problem(key, "required")
                return None
            return default
        try:
            return parse(self.data[key])
        except ValueError as err:
            self.problem(key, str(err))
            return None if default is _MISSING else default

    def child(self, key: str, required: bool = True) -> Node | None:
        self._read.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                self.problem(key, "required")
            return None
        if not isinstance(value, dict):
            self.problem(key, f"expected a mapping, got {_show(value)}")
            return None
        return Node(value, self.where(key), self.problems, self.base_dir)

    def items(self, key: str, required: bool = False, allow_empty: bool = False) -> list[Node]:
        """The mappings of the list `key`, each a Node with its path (`[]` when absent)."""
        self._read.add(key)
        raw = self.data.get(key)
        if raw is None or raw is UNRESOLVED:
            if required and raw is None:
                self.problem(key, "required")
            return []
        if not isinstance(raw, list) or not (raw or allow_empty):
            self.problem(key, "expected a non-empty list")
            return []
        items = []
        for i, item in enumerate(raw):
            path = f"{self.where(key)}[{i}]"
            if isinstance(item, dict):
                items.append(Node(item, path, self.problems, self.base_dir))
            else:
                self.problems.append(f"{path}: expected a mapping")
        return items

    def mapping(self, key: str, parse_value: Callable[[Any], Any], default: Any = _MISSING):
        """A mapping of free-form string keys to parsed values (e.g. raw state -> state)."""
        node = self.child(key, required=default is _MISSING)
        if node is None:
            return default if default is not _MISSING else {}
        result = {}
        for raw_key in node.data:
            node._read.add(raw_key)
            try:
                result[str(raw_key)] = parse_value(node.data[raw_key])
            except ValueError as err:
                node.problem(str(raw_key), str(err))
        if not node.data:
            self.problem(key, "must not be empty")
        return result

    def secret(self, key: str, required: bool = True) -> Secret | None:
        """`key` inline, or `key_file` naming a file that holds it (trailing newline dropped)."""
        file_key = f"{key}_file"
        self._read.update((key, file_key))
        inline, from_file = self.data.get(key), self.data.get(file_key)
        if UNRESOLVED in (inline, from_file):
            return None
        if inline is not None and from_file is not None:
            self.problem(key, f"set either {key} or {file_key}, not both")
            return None
        if from_file is not None:
            try:
                path = self.base_dir / string(from_file)
                return Secret(path.read_text(encoding="utf-8").rstrip("\r\n"))
            except ValueError as err:
                self.problem(file_key, str(err))
            except OSError as err:
                self.problem(file_key, f"cannot read {from_file!r}: {err.strerror}")
            return None
        if inline is None:
            if required:
                self.problem(key, f"required (or {file_key})")
            return None
        try:
            return Secret(string(inline))
        except ValueError as err:
            self.problem(key, str(err))
            return None

    def finish(self) -> None:
        for key in self.data:
            if key not in self._read:
                self.problem(str(key), "unknown key")


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


class _Unresolved:
    """Stands for a value whose interpolation failed: already reported, so not checked again."""


UNRESOLVED = _Unresolved()


def _interpolate_tree(value: Any, path: str, env: dict, problems: list[str]) -> Any:
    if isinstance(value, str):
        try:
            return interpolate(value, env)
        except ValueError as err:
            problems.append(f"{path}: {err}")
            return UNRESOLVED
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, join_path(path, k), env, problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_tree(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


# --- the whole file ---


def read_common(node: Node, kind: str, defaults: dict[str, float]) -> dict[str, Any]:
    """The keys every source has, as keyword arguments for its config dataclass."""
    interval = node.get("interval", positive_duration, defaults["interval"])
    timeout = node.get("timeout", positive_duration, defaults["timeout"])
    if interval and timeout and timeout > interval:
        node.problem("timeout", f"must not exceed interval ({interval:g}s): polls would overlap")
    return {"name": node.get("name", name), "kind": kind, "interval": interval, "timeout": timeout}


def load(path: str | os.PathLike, env: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file. Raises ConfigError listing every problem."""
    from pipemon.sources import KINDS  # the kinds import config's helpers

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
    data = _interpolate_tree(data, "", dict(os.environ if env is None else env), problems)
    root = Node(data, "", problems, Path(path).resolve().parent)

    defaults = {"interval": DEFAULT_INTERVAL, "timeout": DEFAULT_TIMEOUT}
    defaults_node = root.child("defaults", required=False)
    if defaults_node:
        defaults["interval"] = defaults_node.get("interval", positive_duration, DEFAULT_INTERVAL)
        defaults["timeout"] = defaults_node.get("timeout", positive_duration, DEFAULT_TIMEOUT)
        defaults_node.finish()

    sources: list[tuple[int, SourceConfig]] = []
    raw_sources = root.data.get("sources")
    root.get("sources", lambda v: v)
    if raw_sources is not None and (not isinstance(raw_sources, list) or not raw_sources):
        root.problem("sources", "expected a non-empty list of sources")
        raw_sources = []
    for i, raw in enumerate(raw_sources or []):
        node_path = f"sources[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{node_path}: expected a mapping, got {_show(raw)}")
            continue
        node = Node(raw, node_path, problems, root.base_dir)
        kind = node.get("kind", one_of(*sorted(KINDS)))
        if kind is None:
            continue
        common = read_common(node, kind, defaults)
        source = KINDS[kind].parse_config(node, common)
        node.finish()
        if source is not None and common["name"]:
            sources.append((i, source))

    seen: set[str] = set()
    for i, source in sources:
        if source.name in seen:
            problems.append(f"sources[{i}].name: duplicate source name {source.name!r}")
        seen.add(source.name)
    root.finish()
    if problems:
        raise ConfigError(file, problems)
    return Config(file=file, sources=tuple(source for _, source in sources))
