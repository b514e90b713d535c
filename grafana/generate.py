"""Write (or check) pipemon's dashboards: grafana/dashboards/<uid>.json.

    python -m grafana.generate           # write the JSON files
    python -m grafana.generate --check   # exit 1 if a committed file differs from the code
    python -m grafana.generate --labels env,team --out DIR
                                         # for sources with constant labels (grafana/labels.py)

The dashboards are built with grafana-foundation-sdk (the Grafana 11.6 variant pinned in
pyproject.toml); thresholds are read from rules/pipemon-recording.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana import (
    audio,
    errors,
    incidents,
    integrity,
    migration,
    overview,
    queue,
    regions,
    self_monitoring,
    service,
    storage,
    system_health,
)
from grafana.labels import with_labels
from pipemon.metrics import constant_label_problem

OUT = Path(__file__).resolve().parent / "dashboards"
MODULES = (overview, queue, storage, integrity, self_monitoring, incidents, service, regions,
           errors, system_health, migration, audio)


def build_all(labels: list[str] = ()) -> dict[str, dict]:
    """File name -> dashboard model, with a variable per constant label."""
    return {f"{model['uid']}.json": with_labels(model, list(labels))
            for model in (m.build() for m in MODULES)}


def label_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        problem = constant_label_problem(name)
        if problem:
            raise argparse.ArgumentTypeError(f"{name}: {problem}")
    return names


def render(model: dict) -> str:
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files instead of writing them")
    parser.add_argument("--labels", type=label_names, default=[],
                        help="the sources' constant labels, comma-separated: a variable each")
    parser.add_argument("--out", type=Path, help="write here (required with --labels)")
    args = parser.parse_args(argv)
    if args.labels and (args.check or args.out is None):
        parser.error("--labels writes dashboards of your own: give --out, not --check")
    out = args.out or OUT
    stale = []
    wanted = build_all(args.labels)
    for name, model in wanted.items():
        path = out / name
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    extra = sorted(p.name for p in out.glob("*.json") if p.name not in wanted)
    if args.check and (stale or extra):
        print("grafana/dashboards is out of date (run: python -m grafana.generate): "
              + ", ".join(stale + [f"{n} (not generated)" for n in extra]), file=sys.stderr)
        return 1
    if not args.check:
        if out == OUT:  # a folder of the user's may hold other dashboards
            for name in extra:
                (OUT / name).unlink()
        print(f"wrote {len(wanted)} dashboards to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
