"""Write (or check) pipemon's dashboards: grafana/dashboards/<uid>.json.

    python -m grafana.generate           # write the JSON files
    python -m grafana.generate --check   # exit 1 if a committed file differs from the code

The dashboards are built with grafana-foundation-sdk (the Grafana 11.6 variant pinned in
pyproject.toml); thresholds are read from rules/pipemon-recording.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana import integrity, overview, queue, self_monitoring, storage

OUT = Path(__file__).resolve().parent / "dashboards"
MODULES = (overview, queue, storage, integrity, self_monitoring)


def build_all() -> dict[str, dict]:
    """File name -> dashboard model."""
    return {f"{model['uid']}.json": model for model in (m.build() for m in MODULES)}


def render(model: dict) -> str:
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    wanted = build_all()
    for name, model in wanted.items():
        path = OUT / name
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    extra = sorted(p.name for p in OUT.glob("*.json") if p.name not in wanted)
    if args.check and (stale or extra):
        print("grafana/dashboards is out of date (run: python -m grafana.generate): "
              + ", ".join(stale + [f"{n} (not generated)" for n in extra]), file=sys.stderr)
        return 1
    if not args.check:
        for name in extra:
            (OUT / name).unlink()
        print(f"wrote {len(wanted)} dashboards to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
