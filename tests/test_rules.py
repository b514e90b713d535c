"""The rule bundle: promtool check/test, the rules linter, link rendering and the bundle archive.

Needs promtool (Debian: `apt-get install prometheus`, which CI uses: Prometheus 2.42). Without
it these tests fail, they do not skip: an unchecked rule bundle must not look green.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.rules

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
RULE_TESTS = RULES / "tests"
TEST_FILES = sorted(p.name for p in RULE_TESTS.glob("*_test.yaml"))
TIMEOUT = 240  # seconds per subprocess; the slowest test file takes about 40 s
MAKE_BUNDLE = str(ROOT / "tools" / "make_bundle.py")
RENDER_RULES = str(ROOT / "tools" / "render_rules.py")
# The literal link prefixes of the repository's files, and bases to replace them with.
DEFAULT_RUNBOOKS = "https://github.com/pipemon/pipemon/blob/main/docs/runbooks/"
DEFAULT_GRAFANA = "http://grafana.example/d/"
RUNBOOKS = "https://git.corp.example/ops/pipemon/-/blob/v{version}/docs/runbooks/"
GRAFANA = "https://grafana.corp.example/d/"
VERSION = (ROOT / "VERSION").read_text().strip()


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install it with `apt-get install prometheus` "
            "(Debian 12 ships Prometheus 2.42, the version CI uses)",
            pytrace=False,
        )
    return path


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """args run in cwd, stderr in stdout; `env` is added to an environment without the link
    variables of make_bundle.py."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PIPEMON_RUNBOOK_URL", "PIPEMON_GRAFANA_URL")}
    try:
        return subprocess.run(
            args,
            cwd=cwd,
            env={**environ, **env},
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


@pytest.mark.parametrize("test_file", TEST_FILES, ids=str)
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
    result = run([sys.executable, MAKE_BUNDLE, "--out", str(tmp_path)], cwd=ROOT)
    assert result.returncode == 0, f"tools/make_bundle.py failed:\n{result.stdout}"
    version = VERSION
    archive = tmp_path / f"pipemon-bundle-{version}.tar.gz"
    assert archive.is_file(), f"no {archive.name} in {sorted(tmp_path.iterdir())}"
    assert result.stdout.strip() == str(archive)

    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    prefix = f"pipemon-bundle-{version}/"
    assert all(n == prefix.rstrip("/") or n.startswith(prefix) for n in names), names
    files = {n[len(prefix) :] for n, m in zip(names, members, strict=True) if m.isfile()}

    expected = {"VERSION", "CHANGELOG.md", "docs/alerts.md", "docs/backtest.md",
                "docs/alertmanager.md", "tools/render_alertmanager.py"}
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
    run([sys.executable, MAKE_BUNDLE, "--out", str(again)], cwd=ROOT)
    assert (again / archive.name).read_bytes() == archive.read_bytes(), "bundle not reproducible"

    # By default the alerts link to the runbooks of this very version.
    bundle = extract(archive, tmp_path / "x")
    alerts = alert_links(bundle / "rules")
    assert alerts, "no alert rules in the bundle"
    for name, runbook, dashboard in alerts:
        assert runbook == (
            f"https://github.com/pipemon/pipemon/blob/v{version}/docs/runbooks/{name}.md")
        assert dashboard.startswith(DEFAULT_GRAFANA), name
    assert not [p for p in linked_files(bundle) if DEFAULT_RUNBOOKS in p.read_text()]


# ------------------------------------------------------------------------------------------------
# Links: tools/render_rules.py, and make_bundle.py through it

def extract(archive: Path, dest: Path) -> Path:
    """The archive extracted into dest: its one top directory."""
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


def alert_links(rules_dir: Path) -> list[tuple[str, str, str]]:
    """(alert, runbook_url, dashboard_url) of every alert rule of rules_dir/*.yaml."""
    found = []
    for path in sorted(rules_dir.glob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    notes = rule["annotations"]
                    found.append((rule["alert"], notes["runbook_url"], notes["dashboard_url"]))
    return found


def linked_files(bundle: Path) -> list[Path]:
    """The files of an extracted bundle whose links are rendered."""
    return [p for d in ("rules", "grafana/dashboards") for p in (bundle / d).rglob("*")
            if p.is_file()]


@pytest.fixture(scope="module")
def custom_bundle(tmp_path_factory) -> Path:
    """The bundle built with other link bases (grafanaUrl through the older environment
    variable, runbookUrl with --set), extracted."""
    out = tmp_path_factory.mktemp("bundle")
    result = run([sys.executable, MAKE_BUNDLE, "--out", str(out), "--set",
                  f"runbookUrl={RUNBOOKS}"], cwd=ROOT, PIPEMON_GRAFANA_URL=GRAFANA)
    assert result.returncode == 0, f"tools/make_bundle.py failed:\n{result.stdout}"
    return extract(Path(result.stdout.strip()), out / "x")


def test_bundle_with_custom_links(custom_bundle: Path):
    runbooks = RUNBOOKS.replace("{version}", VERSION)
    alerts = alert_links(custom_bundle / "rules")
    assert alerts, "no alert rules in the bundle"
    for name, runbook, dashboard in alerts:
        assert runbook == f"{runbooks}{name}.md"
        assert dashboard.startswith(GRAFANA), name
    # The expected annotations of the tests (so that they pass) and the dashboards follow.
    expected = [
        alert["exp_annotations"]
        for path in sorted((custom_bundle / "rules" / "tests").glob("*.yaml"))
        for test in yaml.safe_load(path.read_text()).get("tests") or []
        for case in test.get("alert_rule_test") or []
        for alert in case.get("exp_alerts") or []
        if "runbook_url" in alert.get("exp_annotations", {})
    ]
    assert expected, "no expected runbook_url in the bundled tests"
    for exp in expected:
        assert exp["runbook_url"].startswith(runbooks), exp
        assert exp["dashboard_url"].startswith(GRAFANA), exp
    texts = {p: p.read_text() for p in linked_files(custom_bundle)}
    assert not [p for p, t in texts.items() if DEFAULT_RUNBOOKS in t or DEFAULT_GRAFANA in t]
    assert [p for p, t in texts.items() if "grafana" in p.parts and runbooks in t]
    assert not (custom_bundle / "rules" / "settings").exists(), "the settings are not bundled"


# Rendering replaces the same literal prefixes in the rules and in their tests' expectations
# (test_bundle_with_custom_links checks every file): two test files through promtool prove the
# rendered pair still agrees, without running the whole promtool suite a second time.
@pytest.mark.parametrize("test_file", ["pipemon-self_test.yaml", "pipemon-storage_test.yaml"],
                         ids=str)
def test_bundled_tests_pass_with_custom_links(custom_bundle: Path, test_file: str):
    result = run([promtool(), "test", "rules", test_file], cwd=custom_bundle / "rules" / "tests")
    assert result.returncode == 0, f"promtool test rules {test_file} failed:\n{result.stdout}"


def test_render_rules_writes_the_rule_files_with_the_links(tmp_path: Path):
    values = tmp_path / "links.yaml"
    values.write_text(f"grafanaUrl: {GRAFANA}\nrunbookUrl: https://wiki.example/\n")
    out = tmp_path / "rendered"
    result = run([sys.executable, RENDER_RULES, "--values", str(values),
                  "--set", f"runbookUrl={RUNBOOKS}", "-o", str(out)], cwd=ROOT)
    assert result.returncode == 0, f"tools/render_rules.py failed:\n{result.stdout}"
    sources = sorted(p.relative_to(RULES) for p in [*RULES.glob("*.yaml"),
                                                    *RULE_TESTS.glob("*.yaml")])
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == sources
    runbooks = RUNBOOKS.replace("{version}", VERSION)  # --set wins over --values
    for rel in sources:  # the links changed, nothing else
        original = (RULES / rel).read_text()
        assert (out / rel).read_text() == original.replace(DEFAULT_RUNBOOKS, runbooks).replace(
            DEFAULT_GRAFANA, GRAFANA), rel
    assert all(runbook == f"{runbooks}{name}.md" for name, runbook, _ in alert_links(out))


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "runbookURL=https://wiki.example/"],
     "unknown key 'runbookURL' (not in rules/settings/links.yml: ['grafanaUrl', 'runbookUrl'])"),
    (["--set", "grafanaUrl=https://grafana.example.com/d"],
     "grafanaUrl = 'https://grafana.example.com/d' must be an http(s) URL ending with '/'"),
    (["--set", "grafanaUrl"], "--set wants KEY=VALUE, got 'grafanaUrl'"),
], ids=["unknown-key", "no-slash", "no-value"])
def test_render_rules_refuses_wrong_values(tmp_path: Path, args: list[str], message: str):
    result = run([sys.executable, RENDER_RULES, *args, "-o", str(tmp_path / "out")], cwd=ROOT)
    assert result.returncode == 2 and message in result.stdout, result.stdout
    assert not (tmp_path / "out").exists()


def test_render_rules_never_overwrites_the_repository_rules(tmp_path: Path):
    for entry in ("rules", "tools", "VERSION"):
        copy = shutil.copytree if (ROOT / entry).is_dir() else shutil.copy
        copy(ROOT / entry, tmp_path / entry)
    before = {p: p.read_text() for p in (tmp_path / "rules").rglob("*.yaml")}
    result = run([sys.executable, str(tmp_path / "tools" / "render_rules.py"), "-o", "rules"],
                 cwd=tmp_path)
    assert result.returncode == 2 and "must not be rules/ itself" in result.stdout, result.stdout
    assert {p: p.read_text() for p in (tmp_path / "rules").rglob("*.yaml")} == before
