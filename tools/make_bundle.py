#!/usr/bin/env python3
"""Build the pipemon rule bundle: dist/pipemon-bundle-<VERSION>.tar.gz.

Usage: python3 tools/make_bundle.py [--out DIR] [--root DIR]

The archive holds, under the directory pipemon-bundle-<VERSION>/:
  rules/ (rule files and their promtool tests), alertmanager/, grafana/dashboards/,
  docs/runbooks/, docs/alerts.md, CHANGELOG.md, VERSION
Entries that do not exist (yet) are skipped. The archive is reproducible: members sorted by
name, one fixed mtime (SOURCE_DATE_EPOCH, default 1980-01-01), uid/gid 0, no gzip timestamp.

Links in the rules can be pointed at your own sites while bundling (the repository keeps the
defaults, so its tests keep passing):
  PIPEMON_RUNBOOK_URL  replaces https://github.com/pipemon/pipemon/blob/main/docs/runbooks/
  PIPEMON_GRAFANA_URL  replaces http://grafana.example/d/
Both are rewritten in every file under rules/ and grafana/dashboards/ (the rules' tests'
expected annotations included, so the bundled tests still pass). Values must end with "/".

Prints the path of the archive. Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import tarfile
from pathlib import Path

CONTENTS = (
    "rules",
    "alertmanager",
    "grafana/dashboards",
    "grafana/provisioning",
    "docs/runbooks",
    "docs/alerts.md",
    "docs/alertmanager.md",
    "tools/render_alertmanager.py",
    "CHANGELOG.md",
    "VERSION",
)
RUNBOOK_BASE = "https://github.com/pipemon/pipemon/blob/main/docs/runbooks/"
GRAFANA_BASE = "http://grafana.example/d/"
DEFAULT_EPOCH = 315532800  # 1980-01-01T00:00:00Z
SKIP_NAMES = {"__pycache__", ".DS_Store"}


def rewrites() -> list[tuple[str, str]]:
    pairs = []
    for env, default in (
        ("PIPEMON_RUNBOOK_URL", RUNBOOK_BASE),
        ("PIPEMON_GRAFANA_URL", GRAFANA_BASE),
    ):
        value = os.environ.get(env, "").strip()
        if value:
            if not value.endswith("/"):
                raise SystemExit(f"make_bundle: {env} must end with '/': {value!r}")
            pairs.append((default, value))
    return pairs


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
                if sub.is_file() and not SKIP_NAMES.intersection(rel.parts):
                    found.add(rel)
    return sorted(found, key=lambda p: p.as_posix())


def build(root: Path, out_dir: Path) -> Path:
    version = (root / "VERSION").read_text().strip()
    if not version:
        raise SystemExit("make_bundle: VERSION is empty")
    prefix = f"pipemon-bundle-{version}"
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    pairs = rewrites()

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
            if pairs and name.startswith(("rules/", "grafana/dashboards/")):
                text = data.decode("utf-8")
                for old, new in pairs:
                    text = text.replace(old, new)
                data = text.encode("utf-8")
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
    args = parser.parse_args(argv)
    root = args.root.resolve()
    print(build(root, (args.out or root / "dist").resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
