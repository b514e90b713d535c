"""Config settings declared once, on the dataclass that holds them.

A config class is a frozen dataclass whose fields are declared with `value()`, `secret()`,
`section()`, `section_list()` or `mapping()`: type, default, validation and the one-line doc of
a key live in that one declaration. `read()` derives the parsing from it, and
`pipemon.reference` the reference in docs/configuration.md. Cross-key rules (timeout within
interval, both S3 keys or neither) go in the class's `check()`.

Every problem is collected as one line `path: message`, so a user fixes a config in one round
trip; a value that does not parse reads as None (or its default) so that reading goes on.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from pipemon.secret import Secret

REQUIRED: Any = MISSING


class ConfigError(Exception):
    """The config is invalid; `problems` holds one `path: message` line per problem."""

    def __init__(self, file: str, problems: list[str]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.file}: {p}" for p in self.problems]


# --- value parsers: each returns the parsed value or raises ValueError(message). `described`
# gives each the words the reference shows in its type column. ---


def described(text: str) -> Callable[[Callable], Callable]:
    def mark(parse: Callable) -> Callable:
        parse.type_text = text
        return parse

    return mark


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = 366 * 86400  # longer is a typo, and would overflow the scheduler's waits


@described("duration")
def duration(value: Any) -> float:
    """`15s`, `5m`, `1h30m`, `250ms` -> seconds. A bare number is refused: its unit is a guess."""
    text = str(value).strip() if isinstance(value, str) else None
    if text and _DURATION_PART.sub("", text) == "" and _DURATION_PART.search(text):
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        if seconds > MAX_DURATION:
            raise ValueError(f"{value!r} is longer than a year")
        return seconds
    raise ValueError(f"expected a duration like 15s, 5m or 1h30m, got {value!r}")


@described("duration > 0")
def positive_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return seconds


@described("string")
def string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {show(value)}")
    return value


MAX_LABEL_TEXT = 128


@described("string")
def label_text(value: Any) -> str:
    """A label value written in the config: a non-empty string of one line, or a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    text = string(value)
    if "\n" in text or len(text) > MAX_LABEL_TEXT:
        raise ValueError(f"expected one line of at most {MAX_LABEL_TEXT} characters")
    return text


@described("integer >= 1")
def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number >= 1, got {show(value)}")
    return value


@described("number")
def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {show(value)}")
    return float(value)


@described("ratio 0-1")
def ratio(value: Any) -> float:
    result = number(value)
    if not 0 <= result <= 1:
        raise ValueError(f"expected a ratio from 0 to 1, got {value!r}")
    return result


@described("true or false")
def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show(value)}")
    return value


def one_of(*choices: str) -> Callable[[Any], str]:
    @described(" \\| ".join(f"`{c}`" for c in choices))
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {show(value)}")
        return value

    return parse


MAX_BUCKETS = 100  # bounds per histogram: each is a series per label set


@described("list of durations, or {min, max, count}")
def bucket_layout(value: Any) -> tuple[float, ...]:
    """Histogram bounds: listed (`[1s, 30s, 5m, 1h]`), or `count` bounds evenly spaced on a
    log scale from `min` to `max` (Go's ExponentialBucketsRange), rounded to 3 digits."""
    if isinstance(value, dict):
        if set(value) != {"min", "max", "count"}:
            got = ", ".join(map(str, value))
            raise ValueError(f"expected the keys min, max and count, got {got}")
        low, high = positive_duration(value["min"]), positive_duration(value["max"])
        count = positive_int(value["count"])
        if high <= low or count < 2:
            raise ValueError("expected min < max and count >= 2")
        factor = (high / low) ** (1 / (count - 1))
        bounds = [float(f"{low * factor ** i:.3g}") for i in range(count)]
    elif isinstance(value, list) and value:
        bounds = [positive_duration(v) for v in value]
    else:
        raise ValueError("expected a list of durations or a mapping with min, max and count,"
                         f" got {show(value)}")
    return _increasing(bounds, "s")


@described("list of numbers")
def level_layout(value: Any) -> tuple[float, ...]:
    """Histogram bounds of a level (dBFS, LUFS): increasing numbers, negative ones included."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of numbers, got {show(value)}")
    bounds = [number(v) for v in value]
    if not all(math.isfinite(b) for b in bounds):
        raise ValueError("expected finite numbers (+Inf is always the last bucket)")
    return _increasing(bounds)


def _increasing(bounds: list[float], unit: str = "") -> tuple[float, ...]:
    """Histogram bounds as given, when there are not too many and they increase."""
    if len(bounds) > MAX_BUCKETS:
        raise ValueError(f"{len(bounds)} bounds, at most {MAX_BUCKETS}: each is a series")
    for lower, upper in itertools.pairwise(bounds):
        if upper <= lower:
            raise ValueError(f"bounds must increase, got {lower:g}{unit} then {upper:g}{unit}")
    return tuple(bounds)


@described("list of strings")
def string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of strings, got {show(value)}")
    return tuple(string(v) for v in value)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_PLAIN_KEY = re.compile(r"[\w.-]+")


@described("name")
def name(value: Any) -> str:
    text = string(value)
    if not _NAME.fullmatch(text):
        raise ValueError(f"expected letters, digits, '_', '-' or '.', got {text!r}")
    return text


def show(value: Any) -> str:
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


class _Unresolved:
    """Stands for a value whose interpolation failed: already reported, so not checked again."""


UNRESOLVED = _Unresolved()


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

    def skip(self, key: str) -> None:
        """Count `key` as read (it was judged some other way)."""
        self._read.add(key)

    def get(self, key: str, parse: Callable[[Any], Any] = string, default: Any = REQUIRED) -> Any:
        """The parsed value of `key`; `default` when absent (required when no default)."""
        self._read.add(key)
        if self.data.get(key) is UNRESOLVED:
            return None if default is REQUIRED else default
        if key not in self.data or self.data[key] is None:
            if default is REQUIRED:
                self.problem(key, "required")
                return None
            return default
        try:
            return parse(self.data[key])
        except ValueError as err:
            self.problem(key, str(err))
            return None if default is REQUIRED else default

    def child(self, key: str, required: bool = True) -> Node | None:
        self._read.add(key)
        value = self.data.get(key)
        if value is None or value is UNRESOLVED:
            if required and value is None:
                self.problem(key, "required")
            return None
        if not isinstance(value, dict):
            self.problem(key, f"expected a mapping, got {show(value)}")
            return None
        return Node(value, self.where(key), self.problems, self.base_dir)

    def items(self, key: str, required: bool = False, allow_empty: bool = False,
              hint: str = "") -> list[Node]:
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
                self.problems.append(f"{path}: expected a mapping{hint}")
        return items

    def mapping(self, key: str, parse_value: Callable[[Any], Any], default: Any = REQUIRED):
        """A mapping of free-form string keys to parsed values (e.g. raw state -> state)."""
        node = self.child(key, required=default is REQUIRED)
        if node is None:
            return default if default is not REQUIRED else {}
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


# --- declaring settings ---


@dataclass(frozen=True)
class Setting:
    """How one key is read, and what the reference says of it."""

    doc: str
    form: str  # value | secret | section | list | mapping
    parse: Callable[[Any], Any] | None = None  # value: the value; mapping: each value
    cls: type | None = None  # section and list: the dataclass of the mapping(s)
    key: str | None = None  # the YAML key, when it differs from the field name
    shown_default: str | None = None  # the default as the reference shows it
    # read only when another setting has one value, else "not used with ...": (field, value,
    # why)
    only_when: tuple[str, Any, str] | None = None
    inherit: tuple[str, ...] = ()  # list items: their defaults of these keys are the parent's
    unique: str | None = None  # list items: this field must differ between items
    noun: str = "item"  # list items: what one is called in messages
    hint: str = ""  # list items: said after "expected a mapping" for an item that is not
    allow_empty: bool = False  # list: [] is valid
    validate: Callable[[Any], None] | None = None  # secret: raises ValueError when unusable


def _field(setting: Setting, default: Any) -> Any:
    metadata = {"setting": setting}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def value(doc: str, parse: Callable[[Any], Any] = string, default: Any = REQUIRED, *,
          key: str | None = None, shown_default: str | None = None,
          only_when: tuple[str, Any, str] | None = None) -> Any:
    """A plain key: `parse` turns the YAML value into the field's value."""
    return _field(Setting(doc, "value", parse=parse, key=key, shown_default=shown_default,
                          only_when=only_when), default)


def secret(doc: str, *, required: bool = True,
           validate: Callable[[Secret], None] | None = None) -> Any:
    """A credential, inline or from `<key>_file`; never shown."""
    return _field(Setting(doc, "secret", validate=validate),
                  REQUIRED if required else None)


def section(cls: type, doc: str, *, required: bool = False,
            only_when: tuple[str, Any, str] | None = None) -> Any:
    """A nested mapping read into another config class."""
    return _field(Setting(doc, "section", cls=cls, only_when=only_when),
                  REQUIRED if required else None)


def section_list(cls: type, doc: str, *, required: bool = False, allow_empty: bool = False,
                 inherit: tuple[str, ...] = (), unique: str | None = None, noun: str = "item",
                 hint: str = "") -> Any:
    """A list of mappings, each read into `cls`."""
    return _field(Setting(doc, "list", cls=cls, inherit=inherit, unique=unique, noun=noun,
                          hint=hint, allow_empty=allow_empty), REQUIRED if required else ())


def mapping(doc: str, parse_value: Callable[[Any], Any], default: Any = REQUIRED, *,
            shown_default: str | None = None,
            only_when: tuple[str, Any, str] | None = None) -> Any:
    """A mapping of free-form keys to values parsed by `parse_value`."""
    return _field(Setting(doc, "mapping", parse=parse_value, shown_default=shown_default,
                          only_when=only_when), default)


def settings(cls: type) -> list[tuple[dataclasses.Field, Setting]]:
    """The declared settings of a config class, in declaration order (base class first)."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(cls)
            if "setting" in f.metadata]


def key_of(f: dataclasses.Field, setting: Setting) -> str:
    return setting.key or f.name


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return REQUIRED


# --- reading ---


class Checked:
    """Base of config classes: `check()` holds the rules that span several keys."""

    def check(self, node: Node, parent: dict[str, Any]) -> None:
        """Report problems with `node.problem(key, message)`; `parent` holds the values of
        the enclosing mapping read so far (empty at the top)."""


def read(cls: type, node: Node, defaults: dict[str, Any] | None = None,
         fixed: dict[str, Any] | None = None, parent: dict[str, Any] | None = None) -> Any:
    """An instance of `cls` read from `node`, every problem appended to node.problems.

    `defaults` replaces declared defaults (a `defaults:` block, a parent's interval); `fixed`
    gives fields that are not read from this mapping (a source's `kind`).
    """
    values: dict[str, Any] = dict(fixed or {})
    for f, setting in settings(cls):
        key = key_of(f, setting)
        default = (defaults or {}).get(f.name, default_of(f))
        if setting.only_when is not None:
            other, wanted, why = setting.only_when
            if values.get(other) != wanted:
                if node.has(key):
                    node.skip(key)
                    node.problem(key, f"not used with {other} {values.get(other)}{why}")
                values[f.name] = None if default is REQUIRED else default
                continue
        values[f.name] = _read_one(node, key, setting, default, values)
    config = cls(**values)
    config.check(node, parent or {})
    node.finish()
    return config


def _read_one(node: Node, key: str, setting: Setting, default: Any, values: dict) -> Any:
    if setting.form == "value":
        return node.get(key, setting.parse, default)
    if setting.form == "secret":
        found = node.secret(key, required=default is REQUIRED)
        if found is not None and setting.validate is not None:
            try:
                setting.validate(found)
            except ValueError as err:
                node.problem(key, str(err))
        return found
    if setting.form == "mapping":
        return node.mapping(key, setting.parse, default)
    if setting.form == "section":
        child = node.child(key, required=default is REQUIRED)
        return None if child is None else read(setting.cls, child, parent=values)
    items = node.items(key, required=default is REQUIRED, allow_empty=setting.allow_empty,
                       hint=setting.hint)
    inherited = {k: values.get(k) for k in setting.inherit}
    read_items, seen = [], set()
    for item in items:
        config = read(setting.cls, item, defaults=inherited, parent=values)
        if setting.unique:
            unique = getattr(config, setting.unique)
            if unique is not None and unique in seen:
                item.problem(setting.unique, f"duplicate {setting.noun} {setting.unique}"
                                             f" {unique!r}")
            seen.add(unique)
        read_items.append(config)
    return tuple(read_items)
