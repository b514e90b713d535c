"""The config reference (docs/configuration.md), written from the settings' declarations.

`python -m pipemon.reference docs/configuration.md` rewrites the generated part of the file;
`--check` exits 1 when it is out of date (tests/test_config_reference.py runs that).
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipemon.config import Defaults
from pipemon.kinds import KINDS, source_class
from pipemon.relay.config import RelayConfig
from pipemon.schema import REQUIRED, Setting, default_of, key_of, settings
from pipemon.sources.base import SourceConfig
from pipemon.verdict import HealthConfig

BEGIN = "<!-- BEGIN GENERATED: python -m pipemon.reference docs/configuration.md -->"
END = "<!-- END GENERATED -->"
COMMON = {f.name for f in fields(SourceConfig)}


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _type(setting: Setting) -> str:
    if setting.form == "secret":
        return "secret"
    if setting.form == "section":
        return "mapping"
    if setting.form == "list":
        return "list of mappings"
    text = setting.parse.type_text  # every parser says what it takes (schema.described)
    return f"mapping to {text}" if setting.form == "mapping" else text


def _default(setting: Setting, default: Any) -> str:
    if setting.shown_default is not None:
        return setting.shown_default
    if default is REQUIRED:
        return "**required**"
    if default is None or default == ():
        return "none"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and "duration" in _type(setting):
        return _seconds(default)
    return f"`{default}`"


def _doc(setting: Setting, key: str) -> str:
    text = setting.doc
    if setting.form == "secret":
        text += f" Or `{key}_file`: a file holding it."
    if setting.only_when is not None:
        other, wanted, _ = setting.only_when
        text += f" Only with `{other}: {wanted}`."
    return text


def table(cls: type, prefix: str = "", skip: set[str] = frozenset()) -> list[str]:
    """One row per key of `cls`; then the keys of its nested mappings, prefixed."""
    rows, nested = [], []
    for f, setting in settings(cls):
        if f.name in skip:
            continue
        key = key_of(f, setting)
        rows.append(f"| `{prefix}{key}` | {_type(setting)} | {_default(setting, default_of(f))}"
                    f" | {_doc(setting, key)} |")
        if setting.form == "section":
            nested.append((setting.cls, f"{prefix}{key}."))
        elif setting.form == "list":
            nested.append((setting.cls, f"{prefix}{key}[]."))
    for child, child_prefix in nested:
        rows += table(child, child_prefix)
    return rows


HEADER = ["| key | type | default | |", "|---|---|---|---|"]


def markdown() -> str:
    parts = [BEGIN, "", "### Every source", "",
             "`kind` (one of " + ", ".join(f"`{k}`" for k in KINDS) + ") picks the kind; these"
             " keys are the same for all.", "", *HEADER, *table(SourceConfig), "",
             "### `defaults:`", "", "At the top of the file; a source's own key wins.", "",
             *HEADER, *table(Defaults), "",
             "### `health:`", "", "At the top of the file: what `/health` answers for the"
             " pipeline verdict (docs/exporter.md).", "", *HEADER, *table(HealthConfig), ""]
    for kind in KINDS:
        source = source_class(kind)
        summary = sys.modules[source.__module__].__doc__.strip().split("\n\n")[0]
        summary = " ".join(summary.split()).removeprefix(f"`kind: {kind}`: ")
        parts += [f"### `kind: {kind}`", "", summary[:1].upper() + summary[1:], "",
                  *HEADER, *table(source.config_type, skip=COMMON), ""]
    parts += ["### `pipemon relay` (a file of its own)", "",
              "The config of `pipemon relay serve` and `migrate` (docs/relay.md).", "",
              *HEADER, *table(RelayConfig), ""]
    parts.append(END)
    return "\n".join(parts)


def render(text: str) -> str:
    """`text` with its generated part replaced by the current reference."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + markdown() + tail


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    if len(paths) != 1:
        print("usage: python -m pipemon.reference [--check] docs/configuration.md",
              file=sys.stderr)
        return 2
    path = Path(paths[0])
    text = path.read_text(encoding="utf-8")
    updated = render(text)
    if check:
        if updated != text:
            print(f"{path}: out of date: run `python -m pipemon.reference {path}`",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
