#!/usr/bin/env python3
"""Render pipemon's rule files with the runbook and dashboard links pointed at your sites.

Usage: python3 tools/render_rules.py [--values FILE]... [--set KEY=VALUE]... -o DIR

The rule files (rules/*.yaml) and their promtool tests (rules/tests/*.yaml) keep two literal
link prefixes, so that Prometheus and promtool load them as they are (tools/rules_lint.py
checks that they do):
  runbookUrl  replaces  https://github.com/pipemon/pipemon/blob/main/docs/runbooks/
  grafanaUrl  replaces  http://grafana.example/d/
Rendering writes them to DIR/*.yaml and DIR/tests/*.yaml (so the tests' rule_files still
resolve) with these prefixes replaced by the bases of rules/settings/links.yml, after merging
over it the --values files (in order; each holds only the keys it changes) and then the --set
pairs. A key that links.yml does not have is refused, so a typo cannot silently keep a
default. Each base must be an http(s) URL ending with "/"; "{version}" in it is replaced by the
content of VERSION.
The tests' expected annotations are rewritten too, so the rendered tests still pass.

tools/make_bundle.py renders the bundle's rules (and the dashboards' runbook links) the same
way, and the Helm chart reads the same rules/settings/links.yml (values `links.*` override it).

Standard library plus PyYAML.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = Path("rules") / "settings" / "links.yml"  # relative to the repository root
# What each key of the settings replaces: the literal prefixes of the repository's files.
PREFIXES = {
    "runbookUrl": "https://github.com/pipemon/pipemon/blob/main/docs/runbooks/",
    "grafanaUrl": "http://grafana.example/d/",
}
URL = re.compile(r"https?://\S*/")


class RenderError(Exception):
    pass


def read_mapping(path: Path) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise RenderError(f"{path}: must be a mapping")
    return data


def set_pair(pair: str) -> dict:
    """KEY=VALUE as a mapping (VALUE taken as it is)."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise RenderError(f"--set wants KEY=VALUE, got {pair!r}")
    return {key: value}


def load_links(files: list[Path] = (), sets: list[str] = (), root: Path = ROOT) -> dict[str, str]:
    """The bases of rules/settings/links.yml, the overrides merged over it, {version} filled in."""
    links = read_mapping(root / SETTINGS)
    if sorted(links) != sorted(PREFIXES):
        raise RenderError(f"{SETTINGS}: must have exactly the keys {sorted(PREFIXES)}")
    for override in [read_mapping(f) for f in files] + [set_pair(p) for p in sets]:
        for key, value in override.items():
            if key not in PREFIXES:
                raise RenderError(f"unknown key {key!r} (not in {SETTINGS}: {sorted(PREFIXES)})")
            links[key] = value
    version = (root / "VERSION").read_text().strip()
    for key, value in links.items():
        links[key] = str(value).replace("{version}", version)
        if not URL.fullmatch(links[key]):
            raise RenderError(f"{key} = {links[key]!r} must be an http(s) URL ending with '/' "
                              "(no spaces)")
    return links


def rewrite(text: str, links: dict[str, str]) -> str:
    """A file's text with the literal prefixes replaced (in this order, as the chart does)."""
    for key, prefix in PREFIXES.items():
        text = text.replace(prefix, links[key])
    return text


def sources(root: Path = ROOT) -> list[Path]:
    """The files rendering writes, relative to root: rules/*.yaml and rules/tests/*.yaml."""
    rules = root / "rules"
    found = [*rules.glob("*.yaml"), *(rules / "tests").glob("*.yaml")]
    return sorted(p.relative_to(root) for p in found)


def render(out_dir: Path, links: dict[str, str], root: Path = ROOT) -> list[Path]:
    """Write the rendered rule files and tests under out_dir; return their paths."""
    if Path(out_dir).resolve() == (root / "rules").resolve():
        raise RenderError("the output must not be rules/ itself: the repository keeps the "
                          "literal prefixes that rendering replaces")
    written = []
    for rel in sources(root):
        target = Path(out_dir) / rel.relative_to("rules")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rewrite((root / rel).read_text(), links))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", action="append", default=[], type=Path, metavar="FILE",
                        help=f"YAML file of keys of {SETTINGS} to change (repeatable, in order)")
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                        help="change one key, e.g. grafanaUrl=https://grafana.example.com/d/")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="directory to write the rule files (and tests/) into")
    args = parser.parse_args(argv)
    try:
        render(args.output, load_links(args.values, args.sets))
    except (RenderError, yaml.YAMLError, OSError) as exc:
        print(f"render_rules: {exc}", file=sys.stderr)
        return 2
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
