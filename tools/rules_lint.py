#!/usr/bin/env python3
"""Lint the pipemon rule bundle: every alert is labelled, annotated, documented and tested.

Usage: python3 tools/rules_lint.py [--root DIR]

Prints one line per problem and exits 1 if there is any (0 and a one-line summary otherwise).
Needs only the standard library and PyYAML. What it checks, for rules/*.yaml:

Alert rules
  * the name is CamelCase and starts with "Pipemon" (the one exception: Watchdog);
  * label `severity` is one of critical, warning, info, none;
  * annotations summary, description, runbook_url and dashboard_url are present and not empty;
  * runbook_url is RUNBOOK_BASE + <AlertName>.md and docs/runbooks/<AlertName>.md exists;
  * dashboard_url starts with GRAFANA_BASE.
  (The two bases are the literal prefixes that tools/render_rules.py replaces with the bases of
  rules/settings/links.yml: the repository's files must keep them.)
Recording rules
  * the name has the form level:metric:operation.
Aggregations (rules/pipemon-*.yaml)
  * every aggregation says what it drops (`without (...)`), never what it keeps (`by (...)`,
    or nothing at all): the labels a user adds to a source (`labels:`) reach every alert.
The job selector
  * `job="pipemon"` appears in exactly one rule expression in rules/ (the recording rule that
    selects pipemon's targets), so changing the scrape job name is a one-line edit.
Tests (rules/tests/*_test.yaml, promtool unit test files)
  * every alert group <group> has a test file rules/tests/<group>_test.yaml;
  * a file that loads more than one rule group lists all of them in group_eval_order, so
    that promtool evaluates recording rules before the alerts that read them (otherwise the
    order is random and boundary tests flap);
  * every alert rule -- identified by its name plus its static labels, so the warning and the
    critical rule of one alert are checked separately -- has
      - a FIRING case: in a test group whose name does not start with "quiet:", an
        alert_rule_test entry whose exp_alerts contain an alert with all the rule's static
        labels, and in the same test group an entry for the same alert exactly one evaluation
        interval earlier whose exp_alerts contain no such alert ("fires at its for boundary,
        not one evaluation before"). A firing case at eval_time 0 needs no earlier entry.
      - a QUIET case: in a test group whose name starts with "quiet:", an alert_rule_test
        entry for the alert whose exp_alerts contain no alert with the rule's static labels
        (an empty exp_alerts proves every rule of that alert quiet).
    Watchdog is exempt from the quiet case: it always fires by design.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml
from render_rules import PREFIXES  # tools/render_rules.py, next to this script

RUNBOOK_BASE = PREFIXES["runbookUrl"]
GRAFANA_BASE = PREFIXES["grafanaUrl"]
SEVERITIES = {"critical", "warning", "info", "none"}
ANNOTATIONS = ("summary", "description", "runbook_url", "dashboard_url")
ALWAYS_FIRING = {"Watchdog"}
JOB_SELECTOR = 'job="pipemon"'
QUIET_PREFIX = "quiet:"

ALERT_NAME = re.compile(r"^Pipemon(?:[A-Z][a-z0-9]*)+$")
RECORD_NAME = re.compile(r"^[a-z_][a-z0-9_]*:[a-z_][a-z0-9_]*:[a-z0-9_]+$")
DURATION_PART = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


# An aggregation that names the labels it keeps (`sum by (...)`, `sum(...)`), where pipemon's
# rules say what they drop (`max without (instance, pod)`). `x_over_time(` is not one.
GROUPING = re.compile(
    r"\b(?:sum|max|min|avg|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)"
    r"\s*(?:\(|by\b)")


def seconds(value: object) -> float:
    """Seconds of a Prometheus duration ("1h30m", "105s", "0") or a bare number."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if text in ("", "0"):
        return 0.0
    parts = DURATION_PART.findall(text)
    if "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    return sum(int(n) * UNIT_SECONDS[u] for n, u in parts)


def matches(exp_alert: dict, static: dict) -> bool:
    """An expected alert (exp_labels) carries all the static labels of a rule."""
    labels = {str(k): str(v) for k, v in (exp_alert.get("exp_labels") or {}).items()}
    return all(labels.get(k) == v for k, v in static.items())


def load_yaml(path: Path, problems: list[str], root: Path) -> dict | None:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"{path.relative_to(root)}: cannot read: {exc}")
        return None


def lint(root: Path) -> tuple[list[str], int, int]:
    problems: list[str] = []
    rules_dir, tests_dir = root / "rules", root / "rules" / "tests"
    rule_files = sorted(rules_dir.glob("*.yaml"))
    if not rule_files:
        return [f"{rules_dir.relative_to(root)}: no rule files"], 0, 0

    # --- rules -------------------------------------------------------------------------------
    alerts: list[dict] = []  # {file, group, name, static, rule}
    groups_of_file: dict[Path, list[str]] = {}
    selector_hits = 0
    for path in rule_files:
        rel = path.relative_to(root)
        doc = load_yaml(path, problems, root)
        if doc is None:
            continue
        selector_hits += sum(
            str(rule.get("expr", "")).count(JOB_SELECTOR)
            for group in doc.get("groups") or []
            for rule in group.get("rules") or []
        )
        groups_of_file[path.resolve()] = [g.get("name", "") for g in doc.get("groups") or []]
        for group in doc.get("groups") or []:
            gname = group.get("name", "?")
            for rule in group.get("rules") or []:
                if path.name.startswith("pipemon-"):
                    for found in GROUPING.finditer(str(rule.get("expr", ""))):
                        problems.append(
                            f"{rel}: {rule.get('record') or rule.get('alert')}: `{found[0]}`"
                            " drops labels: aggregate with `without (...)`, so that a"
                            " source's constant labels reach the alerts"
                        )
                if "record" in rule:
                    if not RECORD_NAME.match(rule["record"]):
                        problems.append(
                            f"{rel}: recording rule {rule['record']}: name is not "
                            "level:metric:operation"
                        )
                    continue
                name = rule.get("alert", "")
                labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
                static = {k: v for k, v in labels.items() if "{{" not in v}
                where = f"{rel}: {name}{{severity={labels.get('severity', '?')}}}"
                alerts.append(
                    {"file": rel, "group": gname, "name": name, "static": static, "where": where}
                )
                if name not in ALWAYS_FIRING and not ALERT_NAME.match(name):
                    problems.append(f"{where}: name is not CamelCase with the prefix Pipemon")
                if labels.get("severity") not in SEVERITIES:
                    problems.append(
                        f"{where}: label severity missing or not one of {sorted(SEVERITIES)}"
                    )
                annotations = rule.get("annotations") or {}
                for key in ANNOTATIONS:
                    if not str(annotations.get(key, "")).strip():
                        problems.append(f"{where}: annotation {key} missing or empty")
                runbook = str(annotations.get("runbook_url", ""))
                if runbook and runbook != f"{RUNBOOK_BASE}{name}.md":
                    problems.append(f"{where}: runbook_url is not {RUNBOOK_BASE}{name}.md")
                if not (root / "docs" / "runbooks" / f"{name}.md").is_file():
                    problems.append(f"{where}: runbook docs/runbooks/{name}.md is missing")
                dashboard = str(annotations.get("dashboard_url", ""))
                if dashboard and not dashboard.startswith(GRAFANA_BASE):
                    problems.append(f"{where}: dashboard_url does not start with {GRAFANA_BASE}")
    if selector_hits != 1:
        problems.append(
            f"rules/: {JOB_SELECTOR} appears in {selector_hits} expressions; it must appear in "
            "exactly one (the recording rule instance:pipemon_up:selected)"
        )

    # --- tests -------------------------------------------------------------------------------
    test_files = sorted(tests_dir.glob("*_test.yaml"))
    for group in sorted({a["group"] for a in alerts}):
        if not (tests_dir / f"{group}_test.yaml").is_file():
            problems.append(
                f"rules/tests/{group}_test.yaml: missing (tests of alert group {group})"
            )

    # cases[name] = list of (is_quiet, test_group_key, eval_seconds, exp_alerts, interval)
    cases: dict[str, list[tuple[bool, str, float, list, float]]] = {}
    for path in test_files:
        rel = path.relative_to(root)
        doc = load_yaml(path, problems, root)
        if doc is None:
            continue
        try:
            interval = seconds(doc.get("evaluation_interval", "1m"))
        except ValueError as exc:
            problems.append(f"{rel}: evaluation_interval: {exc}")
            continue
        loaded: list[str] = []
        for rf in doc.get("rule_files") or []:
            target = (path.parent / rf).resolve()
            if target not in groups_of_file:
                problems.append(f"{rel}: rule file {rf} is not one of rules/*.yaml")
                continue
            loaded += groups_of_file[target]
        order = doc.get("group_eval_order") or []
        if len(loaded) > 1 and sorted(order) != sorted(loaded):
            missing = sorted(set(loaded) - set(order))
            extra = sorted(set(order) - set(loaded))
            problems.append(
                f"{rel}: group_eval_order must list every loaded group "
                f"(missing {missing}, unknown {extra})"
            )
        for index, test in enumerate(doc.get("tests") or []):
            tname = str(test.get("name") or "")
            quiet = tname.startswith(QUIET_PREFIX)
            key = f"{rel}#{index}"
            for case in test.get("alert_rule_test") or []:
                try:
                    at = seconds(case.get("eval_time", 0))
                except ValueError as exc:
                    problems.append(f"{rel}: test {tname!r}: eval_time: {exc}")
                    continue
                cases.setdefault(str(case.get("alertname")), []).append(
                    (quiet, key, at, case.get("exp_alerts") or [], interval)
                )

    for alert in alerts:
        name, static, where = alert["name"], alert["static"], alert["where"]
        entries = cases.get(name, [])
        firing_ok = False
        for quiet, key, at, exp, interval in entries:
            if quiet or not any(matches(e, static) for e in exp):
                continue
            if at - interval < 0:
                firing_ok = True
                break
            before = [
                e2
                for _q2, k2, at2, e2, _ in entries
                if k2 == key and abs(at2 - (at - interval)) < 1e-9
            ]
            if before and not any(matches(e, static) for e2 in before for e in e2):
                firing_ok = True
                break
        if not firing_ok:
            problems.append(
                f"{where}: no firing test (an exp_alerts entry with its labels, and none one "
                "evaluation earlier in the same test group)"
            )
        if name in ALWAYS_FIRING:
            continue
        quiet_ok = any(
            quiet and not any(matches(e, static) for e in exp)
            for quiet, _key, _at, exp, _i in entries
        )
        if not quiet_ok:
            problems.append(
                f"{where}: no quiet test (an alert_rule_test in a test group named "
                f"'{QUIET_PREFIX} ...' expecting it not to fire)"
            )
    return problems, len(alerts), len(test_files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="repository root (default: the parent of tools/)",
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    problems, n_alerts, n_tests = lint(root)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"rules_lint: OK ({n_alerts} alert rules, {n_tests} test files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
