#!/usr/bin/env python3
"""Build the pipemon rule bundle: dist/pipemon-bundle-<VERSION>.tar.gz.

Usage: python3 tools/make_bundle.py [--out DIR] [--root DIR] [--values FILE]... [--set KEY=VALUE]...

The archive holds, under the directory pipemon-bundle-<VERSION>/:
  rules/ (rule files and their promtool tests), alertmanager/, grafana/dashboards/,
  docs/runbooks/, docs/alerts.md, docs/backtest.md, CHANGELOG.md, VERSION
Entries that do not exist (yet) are skipped. The archive is reproducible: members sorted by
name, one fixed mtime (SOURCE_DATE_EPOCH, default 1980-01-01), uid/gid 0, no gzip timestamp.

The links of the rules are rendered by tools/render_rules.py: every file under rules/ and
grafana/dashboards/ gets the bases of rules/settings/links.yml in place of the repository's
literal prefixes (the rules' tests' expected annotations included, so the bundled tests pass). By
default the runbook links point at the runbooks of this version (.../blob/v<VERSION>/...).
--values FILE and --set KEY=VALUE change them as they do for tools/render_rules.py (keys
runbookUrl, grafanaUrl; values are http(s) URLs ending with "/"). For compatibility, two
environment variables still work, applied before the --set pairs:
  PIPEMON_RUNBOOK_URL  sets runbookUrl
  PIPEMON_GRAFANA_URL  sets grafanaUrl
rules/settings/links.yml itself is not bundled: the bundled files carry the links.

Prints the path of the archive. Standard library plus PyYAML (for render_rules).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import tarfile
from pathlib import Path

import render_rules  # tools/render_rules.py, next to this script
import yaml

CONTENTS = (
    "rules",
    "alertmanager",
    "grafana/dashboards",
    "grafana/provisioning",
    "docs/runbooks",
    "docs/alerts.md",
    "docs/backtest.md",
    "docs/alertmanager.md",
    "tools/render_alertmanager.py",
    "CHANGELOG.md",
    "VERSION",
)
ENV_SETTINGS = (("PIPEMON_RUNBOOK_URL", "runbookUrl"), ("PIPEMON_GRAFANA_URL", "grafanaUrl"))
DEFAULT_EPOCH = 315532800  # 1980-01-01T00:00:00Z
SKIP_NAMES = {"__pycache__", ".DS_Store"}
LINKED = ("rules/", "grafana/dashboards/")  # where the links are rendered


def env_sets() -> list[str]:
    """The --set pairs of the (older) environment variables that are set."""
    return [f"{key}={os.environ[env].strip()}" for env, key in ENV_SETTINGS
            if os.environ.get(env, "").strip()]


def files_of(root: Path) -> list[Path]:
    """The files to bundle, relative to root, sorted; missing entries skipped."""
    found: set[Path] = set()
    for entry in CONTENTS:
        path = root / entry
        if path.is_file():
            found.add(Path(entry))
        elif path.is_dir():
            for sub in path.rglob("*"):
                rel = sub.relative_to(root)
                if rel == render_rules.SETTINGS:
                    continue
                if sub.is_file() and not SKIP_NAMES.intersection(rel.parts):
                    found.add(rel)
    return sorted(found, key=lambda p: p.as_posix())


def build(root: Path, out_dir: Path, links: dict[str, str]) -> Path:
    """The archive, with `links` (render_rules.load_links) in the rules and dashboards."""
    version = (root / "VERSION").read_text().strip()
    if not version:
        raise SystemExit("make_bundle: VERSION is empty")
    prefix = f"pipemon-bundle-{version}"
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))

    def info(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.type, ti.mtime = size, mode, kind, mtime
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    files = files_of(root)
    dirs = sorted({p.as_posix() for f in files for p in f.parents if p != Path(".")})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info(prefix, 0, 0o755, tarfile.DIRTYPE))
        for name in sorted(dirs + [f.as_posix() for f in files]):
            if name in dirs:
                tar.addfile(info(f"{prefix}/{name}", 0, 0o755, tarfile.DIRTYPE))
                continue
            data = (root / name).read_bytes()
            if name.startswith(LINKED):
                data = render_rules.rewrite(data.decode("utf-8"), links).encode("utf-8")
            executable = os.access(root / name, os.X_OK)
            tar.addfile(
                info(f"{prefix}/{name}", len(data), 0o755 if executable else 0o644),
                io.BytesIO(data),
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{prefix}.tar.gz"
    with (
        open(target, "wb") as fh,
        gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz,
    ):
        gz.write(raw.getvalue())
    return target


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=here, help="repository root")
    parser.add_argument("--out", type=Path, default=None, help="output directory (ROOT/dist)")
    parser.add_argument("--values", action="append", default=[], type=Path, metavar="FILE",
                        help="YAML file of keys of rules/settings/links.yml to change "
                             "(repeatable)")
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                        help="change one link base, e.g. grafanaUrl=https://grafana.example.com/d/")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        links = render_rules.load_links(args.values, env_sets() + args.sets, root=root)
    except (render_rules.RenderError, yaml.YAMLError, OSError) as exc:
        raise SystemExit(f"make_bundle: {exc}") from exc
    print(build(root, (args.out or root / "dist").resolve(), links))
    return 0


if __name__ == "__main__":
    sys.exit(main())
