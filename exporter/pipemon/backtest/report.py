"""Backtest results for people (a table), machines (JSON) and docs/alerts.md (Markdown)."""

from __future__ import annotations

import json
from collections import defaultdict

from pipemon.backtest.judge import ScenarioResult, describe, episodes, span
from pipemon.backtest.scenario import first_sentence

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def _verdict(result: ScenarioResult) -> str:
    return "ok" if result.ok else "FAIL"


def _details(result: ScenarioResult) -> list[str]:
    lines = []
    for quiet in result.quiet:
        for alert, minutes in sorted(quiet.minutes.items()):
            lines.append(f"{describe(alert)}: {minutes:g} min in a quiet window "
                         f"({span(quiet.window.start)}-{span(quiet.window.end)})")
    for fire in result.fire:
        if fire.delay is not None:
            text = (f"{fire.expected.match.describe()}: {describe(fire.alert)} after "
                    f"{span(fire.delay)}")
            text += f" (deadline {span(fire.expected.within)})"
            if fire.level2 is not None:
                text += f"; level2 +{span(fire.level2)}"
            if fire.level3 is not None:
                text += f", level3 +{span(fire.level3)}"
            lines.append(text)
        lines += [f"  {p}" for p in fire.problems] if fire.delay is not None else fire.problems
    for difference in result.ha_differences or []:
        lines.append(f"HA: {difference}")
    if not lines:
        lines.append("no alert (expected none)")
    return lines


def table(results: list[ScenarioResult], header: str = "") -> str:
    """One block per scenario, then the false-alarm and detection summaries."""
    out = [header] if header else []
    width = max((len(r.scenario.name) for r in results), default=10)
    for result in results:
        details = _details(result)
        out.append(f"{_verdict(result):4}  {result.scenario.name:{width}}  {details[0]}")
        out += [f"{'':4}  {'':{width}}  {line}" for line in details[1:]]
    out += ["", "False alarms (minutes firing in windows that must be quiet):"]
    false = false_alarms(results)
    if not false:
        out.append("  none")
    for (alert, severity), (minutes, names) in sorted(false.items()):
        out.append(f"  {alert} {severity}: {minutes:g} min ({', '.join(sorted(names))})")
    failed = [r.scenario.name for r in results if not r.ok]
    out += ["", f"{len(results) - len(failed)} of {len(results)} scenarios met their "
                f"expectations" + (f"; failed: {', '.join(failed)}" if failed else "")]
    return "\n".join(out)


def false_alarms(results: list[ScenarioResult]) -> dict[tuple[str, str], tuple[float, set]]:
    """(alertname, severity) -> (minutes in quiet windows, scenarios)."""
    totals: dict[tuple[str, str], list] = defaultdict(lambda: [0.0, set()])
    for result in results:
        for quiet in result.quiet:
            for alert, minutes in quiet.minutes.items():
                key = (dict(alert)["alertname"], dict(alert).get("severity", ""))
                totals[key][0] += minutes
                totals[key][1].add(result.scenario.name)
    return {k: (v[0], v[1]) for k, v in totals.items()}


def as_json(results: list[ScenarioResult], meta: dict) -> str:
    return json.dumps({**meta, "ok": all(r.ok for r in results),
                       "scenarios": [_scenario_json(r) for r in results]}, indent=2)


def _scenario_json(result: ScenarioResult) -> dict:
    s = result.scenario
    return {
        "name": s.name, "category": s.category, "ok": result.ok,
        "duration_seconds": s.duration, "replicas": s.replicas,
        "series": result.series, "wall_seconds": round(result.seconds, 1),
        "quiet": [{"from": q.window.start, "to": q.window.end,
                   "alerts": q.window.match.describe(), "ok": q.ok,
                   "firing_minutes": {describe(a): m for a, m in q.minutes.items()}}
                  for q in result.quiet],
        "fire": [{"expected": f.expected.match.describe(), "after": f.expected.after,
                  "deadline_seconds": f.expected.within, "ok": f.ok,
                  "delay_seconds": f.delay, "alert": describe(f.alert) if f.alert else "",
                  "level2_seconds": f.level2, "level3_seconds": f.level3,
                  "problems": f.problems} for f in result.fire],
        "ha_differences": result.ha_differences,
        "alerts": [{"labels": dict(alert), "episodes": [
            {"from": a * result.step, "to": (b + 1) * result.step}
            for a, b in episodes(steps)]} for alert, steps in sorted(result.firing.items())],
    }


def firing_table(firing: dict, step: float, start: float) -> str:
    """Which alerts would have fired when (for a history pulled from a Prometheus)."""
    import datetime as dt

    def when(seconds: float) -> str:
        return dt.datetime.fromtimestamp(start + seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    rows = []
    for alert, steps in firing.items():
        if dict(alert).get("severity") in (None, "none"):
            continue
        for a, b in episodes(steps):
            rows.append((a, f"{when(a * step)}  {when((b + 1) * step)}  "
                            f"{span((b + 1 - a) * step):>7}  {describe(alert)}"))
    if not rows:
        return "No alert would have fired (Watchdog aside)."
    header = f"{'from (UTC)':19}  {'to (UTC)':19}  {'lasted':>7}  alert"
    return "\n".join([header] + [text for _, text in sorted(rows)])


def markdown(results: list[ScenarioResult], meta: dict,
             alerts: set[tuple[str, str]] = frozenset()) -> str:
    """The backtest section of docs/alerts.md. `alerts`: every (alert, severity) of the rules,
    to name those no scenario makes fire."""
    out = [f"Generated by `pipemon backtest --markdown` ({meta['scenarios']} scenarios, "
           f"promtool {meta['promtool']}, 15 s scrape and evaluation). Times are in rule "
           "evaluation time: add the exporter's poll interval and Alertmanager's `group_wait` "
           "for the time to a phone.", ""]
    out += ["**False alarms**: minutes each alert fired in windows where it had to be quiet "
            "(every healthy and noise scenario, and fault scenarios before their fault).", "",
            "| alert | severity | minutes | scenarios |", "|---|---|---|---|"]
    false = false_alarms(results)
    for (alert, severity) in sorted(_all_alerts(results) | set(false),
                                    key=lambda k: (k[0], SEVERITY_ORDER.get(k[1], 9))):
        minutes, names = false.get((alert, severity), (0.0, set()))
        out.append(f"| {alert} | {severity} | {minutes:g} | {', '.join(sorted(names))} |")
    unexercised = sorted(f"{a} {s}" for a, s in set(alerts) - _all_alerts(results)
                         if s in ("critical", "warning"))
    if unexercised:
        out += ["", "No scenario makes these fire (their unit tests prove them): "
                + ", ".join(unexercised) + "."]
    out += ["", "**Detection**: from the fault's onset to the first firing alert of the "
            "expected severity.", "",
            "| scenario | fault | expected | deadline | fired after | first alert | escalation |",
            "|---|---|---|---|---|---|---|"]
    for result in results:
        for fire in result.fire:
            escalation = ""
            if fire.level2 is not None or fire.level3 is not None:
                escalation = (f"level2 +{span(fire.level2) if fire.level2 is not None else '-'}"
                              f", level3 +{span(fire.level3) if fire.level3 is not None else '-'}")
            fired = span(fire.delay) if fire.delay is not None else "**never**"
            if not fire.ok:
                fired += " **(missed)**"
            out.append(f"| {result.scenario.name} | {first_sentence(result.scenario.description)} "
                       f"| {fire.expected.match.describe()} | {span(fire.expected.within)} "
                       f"| {fired} | {dict(fire.alert or ()).get('alertname', '')} "
                       f"| {escalation} |")
    return "\n".join(out) + "\n"


def _all_alerts(results: list[ScenarioResult]) -> set[tuple[str, str]]:
    seen = set()
    for result in results:
        for alert in result.firing:
            labels = dict(alert)
            if labels.get("severity") in ("critical", "warning"):
                seen.add((labels["alertname"], labels["severity"]))
    return seen
