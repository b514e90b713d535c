"""The scenario library against the shipped rules: every healthy and noisy pipeline stays quiet,
every fault pages by its deadline, and docs/alerts.md shows the tables this run generates.

It runs `pipemon backtest` as a user does (promtool on two CPUs, about three minutes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pipemon.backtest.command import MARK_BEGIN, MARK_END
from testkit import ROOT

pytestmark = pytest.mark.rules

ALERTS_DOC = ROOT / "docs" / "alerts.md"


def section(text: str) -> str:
    return text.split(MARK_BEGIN, 1)[1].split(MARK_END, 1)[0]


@pytest.mark.timeout(1200)
def test_the_scenario_library_meets_its_expectations(tmp_path):
    doc = tmp_path / "alerts.md"
    shutil.copy(ALERTS_DOC, doc)
    result = subprocess.run([sys.executable, "-m", "pipemon", "backtest", "--json",
                             "--markdown", str(doc)], cwd=ROOT, capture_output=True,
                            text=True, timeout=1100, check=False)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    failed = {s["name"]: [p for f in s["fire"] for p in f["problems"]]
              + [f"{a}: {m} min in {q['from']:.0f}-{q['to']:.0f}s"
                 for q in s["quiet"] for a, m in q["firing_minutes"].items()]
              + (s["ha_differences"] or [])
              for s in report["scenarios"] if not s["ok"]}
    assert not failed, "scenarios that failed their expectations:\n" + json.dumps(failed, indent=2)
    assert {s["name"] for s in report["scenarios"]} >= {
        "healthy-mixed-pipeline", "noise-exporter-restart", "fault-stall-workers-hung"}
    assert section(doc.read_text()) == section(ALERTS_DOC.read_text()), (
        "docs/alerts.md is out of date with the backtest: run `make backtest-docs`")
