"""The rule bundle: promtool check/test, the rules linter and the bundle archive.

Needs promtool (Debian: `apt-get install prometheus`, which CI uses: Prometheus 2.42). Without
it these tests fail, they do not skip: an unchecked rule bundle must not look green.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.rules

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
RULE_TESTS = RULES / "tests"
TIMEOUT = 240  # seconds per subprocess; the slowest test file takes about 40 s


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install it with `apt-get install prometheus` "
            "(Debian 12 ships Prometheus 2.42, the version CI uses)",
            pytrace=False,
        )
    return path


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} timed out after {TIMEOUT}s:\n{exc.output or ''}")


def test_promtool_check_rules_is_clean():
    files = sorted(str(p.relative_to(ROOT)) for p in RULES.glob("*.yaml"))
    assert files, "no rule files in rules/"
    result = run([promtool(), "check", "rules", *files], cwd=ROOT)
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}"
    # Clean means no warnings either, only one SUCCESS line per file.
    noise = [
        line
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith("Checking ") and "SUCCESS" not in line
    ]
    assert not noise, "promtool check rules printed more than SUCCESS:\n" + result.stdout


@pytest.mark.parametrize(
    "test_file", sorted(p.name for p in RULE_TESTS.glob("*_test.yaml")), ids=str
)
def test_promtool_unit_tests_pass(test_file: str):
    # rule_files in the test files are relative to rules/tests/.
    result = run([promtool(), "test", "rules", test_file], cwd=RULE_TESTS)
    assert result.returncode == 0, f"promtool test rules {test_file} failed:\n{result.stdout}"


def test_every_rule_test_file_is_collected():
    assert sorted(p.name for p in RULE_TESTS.glob("*.yaml")) == sorted(
        p.name for p in RULE_TESTS.glob("*_test.yaml")
    ), "files in rules/tests/ must be named <group>_test.yaml"


def test_rules_lint_passes():
    result = run([sys.executable, str(ROOT / "tools" / "rules_lint.py")], cwd=ROOT)
    assert result.returncode == 0, f"tools/rules_lint.py found problems:\n{result.stdout}"


def test_rules_lint_reports_an_untested_alert(tmp_path: Path):
    """The linter is not a rubber stamp: an alert without tests or runbook is reported."""
    for entry in ("rules", "docs", "tools"):
        shutil.copytree(ROOT / entry, tmp_path / entry)
    alerts = tmp_path / "rules" / "pipemon-alerts.yaml"
    alerts.write_text(
        alerts.read_text()
        + """
  - name: pipemon-untested
    rules:
      - alert: PipemonUntested
        expr: vector(1)
        labels:
          severity: warning
        annotations:
          summary: s
          description: d
          runbook_url: https://github.com/pipemon/pipemon/blob/main/docs/runbooks/PipemonUntested.md
          dashboard_url: http://grafana.example/d/pipemon-overview
"""
    )
    result = run(
        [sys.executable, str(tmp_path / "tools" / "rules_lint.py"), "--root", str(tmp_path)],
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout
    for problem in ("no firing test", "no quiet test", "runbook", "pipemon-untested_test.yaml"):
        assert problem in result.stdout, f"expected {problem!r} in:\n{result.stdout}"


def test_bundle_contents(tmp_path: Path):
    result = run(
        [sys.executable, str(ROOT / "tools" / "make_bundle.py"), "--out", str(tmp_path)],
        cwd=ROOT,
    )
    assert result.returncode == 0, f"tools/make_bundle.py failed:\n{result.stdout}"
    version = (ROOT / "VERSION").read_text().strip()
    archive = tmp_path / f"pipemon-bundle-{version}.tar.gz"
    assert archive.is_file(), f"no {archive.name} in {sorted(tmp_path.iterdir())}"
    assert result.stdout.strip() == str(archive)

    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    prefix = f"pipemon-bundle-{version}/"
    assert all(n == prefix.rstrip("/") or n.startswith(prefix) for n in names), names
    files = {n[len(prefix) :] for n, m in zip(names, members, strict=True) if m.isfile()}

    expected = {"VERSION", "CHANGELOG.md", "docs/alerts.md", "docs/alertmanager.md",
                "tools/render_alertmanager.py"}
    expected |= {str(p.relative_to(ROOT)) for p in RULES.rglob("*.yaml")}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "runbooks").glob("*.md")}
    for optional in ("alertmanager", "grafana/dashboards", "grafana/provisioning"):
        if (ROOT / optional).is_dir():
            expected |= {
                str(p.relative_to(ROOT))
                for p in (ROOT / optional).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            }
    assert files == expected, (
        f"missing: {sorted(expected - files)}\nunexpected: {sorted(files - expected)}"
    )
    assert names == sorted(names), "members are not sorted"
    assert {m.mtime for m in members} == {members[0].mtime}, "mtimes differ"

    # Reproducible: a second build is byte for byte the same.
    again = tmp_path / "again"
    run([sys.executable, str(ROOT / "tools" / "make_bundle.py"), "--out", str(again)], cwd=ROOT)
    assert (again / archive.name).read_bytes() == archive.read_bytes(), "bundle not reproducible"
