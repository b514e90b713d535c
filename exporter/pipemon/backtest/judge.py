"""Expectations against the alerts that fired: quiet minutes, detection, escalation, reset, HA."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipemon.backtest.promtool import Alert
from pipemon.backtest.scenario import Fire, Quiet, Scenario

ESCALATION = "PipemonAlertEscalated"


def describe(alert: Alert) -> str:
    labels = dict(alert)
    rest = ", ".join(f"{k}={v}" for k, v in alert if k not in ("alertname", "severity", "job"))
    name = f"{labels.get('alertname')} {labels.get('severity', '')}"
    return name + (f" ({rest})" if rest else "")


@dataclass
class QuietResult:
    window: Quiet
    minutes: dict[Alert, float]  # alert -> minutes it fired inside the window

    @property
    def ok(self) -> bool:
        return not self.minutes


@dataclass
class FireResult:
    expected: Fire
    delay: float | None = None  # seconds from `after` to the first matching firing alert
    alert: Alert | None = None  # that alert
    level2: float | None = None  # seconds from the critical's start to each escalation
    level3: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ScenarioResult:
    scenario: Scenario
    step: float
    firing: dict[Alert, list[int]]
    quiet: list[QuietResult] = field(default_factory=list)
    fire: list[FireResult] = field(default_factory=list)
    ha_differences: list[str] | None = None  # None: not checked
    seconds: float = 0.0  # wall time of simulation and evaluation
    series: int = 0

    @property
    def ok(self) -> bool:
        return (all(q.ok for q in self.quiet) and all(f.ok for f in self.fire)
                and not self.ha_differences)


def judge(scenario: Scenario, firing: dict[Alert, list[int]], step: float,
          single_replica: dict[Alert, list[int]] | None = None) -> ScenarioResult:
    result = ScenarioResult(scenario, step, firing)
    result.quiet = [_quiet(w, firing, step) for w in scenario.quiet]
    result.fire = [_fire(f, firing, step) for f in scenario.fire]
    if single_replica is not None:
        result.ha_differences = compare(single_replica, firing, step)
    return result


def _quiet(window: Quiet, firing: dict[Alert, list[int]], step: float) -> QuietResult:
    minutes = {}
    for alert, steps in firing.items():
        if not window.match(dict(alert)):
            continue
        inside = [s for s in steps if window.start <= s * step < window.end]
        if inside:
            minutes[alert] = len(inside) * step / 60
    return QuietResult(window, minutes)


def _fire(expected: Fire, firing: dict[Alert, list[int]], step: float) -> FireResult:
    result = FireResult(expected)
    first: tuple[int, Alert] | None = None
    for alert, steps in firing.items():
        if dict(alert).get("alertname") == ESCALATION or not expected.match(dict(alert)):
            continue
        after = [s for s in steps if s * step >= expected.after]
        if after and (first is None or after[0] < first[0]):
            first = (after[0], alert)
    if first is None:
        result.problems.append(f"{expected.match.describe()} never fired after "
                               f"{clock(expected.after)}")
        return result
    start, alert = first
    result.delay = start * step - expected.after
    result.alert = alert
    if result.delay > expected.within:
        result.problems.append(f"{describe(alert)} fired {span(result.delay)} after "
                               f"{clock(expected.after)}, deadline {span(expected.within)}")
    if expected.escalate:
        _escalation(result, alert, start, firing, step)
    if expected.resolved_within is not None:
        # The page's reset time: the alert that fired first (budget alerts reset with their
        # short window, by design) and its escalations.
        by = expected.healed + expected.resolved_within
        late = [describe(a) for a, steps in firing.items()
                if _same_page(a, alert) and any(s * step >= by for s in steps)]
        if late:
            result.problems.append(f"still firing {span(expected.resolved_within)} after the "
                                   f"fault ended at {clock(expected.healed)}: {', '.join(late)}")
    return result


def _same_page(candidate: Alert, alert: Alert) -> bool:
    """`candidate` is `alert` or one of its escalations."""
    labels, mine = dict(candidate), dict(alert)
    if labels.get("alertname") == ESCALATION:
        labels = {k: v for k, v in labels.items() if k != "escalation"}
        labels["alertname"] = labels.pop("original_alertname", "")
    return labels == mine


def _escalation(result: FireResult, alert: Alert, start: int,
                firing: dict[Alert, list[int]], step: float) -> None:
    """Level 2 and 3 of `alert` by their deadlines after it started, and none after it ends."""
    steps = set(firing[alert])
    end = start
    while end in steps:
        end += 1  # the first evaluation at which the critical no longer fires
    level2_deadline, level3_deadline = result.expected.escalate
    for level, deadline in (("level2", level2_deadline), ("level3", level3_deadline)):
        seen = sorted(s for a, steps_ in firing.items()
                      if dict(a).get("escalation") == level and _same_page(a, alert)
                      for s in steps_ if s >= start)
        during = [s for s in seen if s < end]
        delay = (during[0] - start) * step if during else None
        setattr(result, level, delay)
        if delay is None:
            result.problems.append(f"{level} never escalated {describe(alert)} "
                                   f"(firing {span((end - start) * step)})")
        elif delay > deadline:
            result.problems.append(f"{level} escalated {span(delay)} after the critical "
                                   f"started, deadline {span(deadline)}")
        if any(end <= s < end + 2 for s in seen):
            result.problems.append(f"{level} kept firing after {describe(alert)} resolved")


def compare(one: dict[Alert, list[int]], two: dict[Alert, list[int]], step: float) -> list[str]:
    """What two replicas changed: an alert added or lost, or an episode moved by more than one
    evaluation (the replicas poll at other instants, so a threshold may be crossed one
    evaluation apart)."""
    problems = []
    for alert in sorted(set(one) | set(two)):
        a, b = episodes(one.get(alert, [])), episodes(two.get(alert, []))
        if len(a) != len(b) or any(abs(x0 - y0) > 1 or abs(x1 - y1) > 1
                                   for (x0, x1), (y0, y1) in zip(a, b, strict=True)):
            problems.append(f"{describe(alert)}: one replica {_episodes_text(a, step)}, "
                            f"two replicas {_episodes_text(b, step)}")
    return problems


def episodes(steps: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive steps: (first, last)."""
    runs: list[tuple[int, int]] = []
    for s in steps:
        if runs and s == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    return runs


def _episodes_text(runs: list[tuple[int, int]], step: float) -> str:
    if not runs:
        return "never"
    return ", ".join(f"{clock(a * step)}-{clock((b + 1) * step)}" for a, b in runs)


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def span(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"

