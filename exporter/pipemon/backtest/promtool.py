"""Evaluate the rules over a history with promtool, and read back which alerts fired when.

The history becomes the input series of one `promtool test rules` test group. That group asks,
at every evaluation, for `ALERTS{alertstate="firing"}` and expects a sample no rule can produce,
so promtool prints what it got at each evaluation: the alerts firing at that instant. promtool
evaluates the rule groups in `group_eval_order` at every step, with `for:` clauses,
`keep_firing_for`, staleness and the ALERTS series the escalation rules read, as a Prometheus of
the same version does.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

from pipemon.backtest.rules import RuleSet, write_pruned
from pipemon.backtest.series import History, notation, selector, yaml_string
from pipemon.schema import duration

# An alert: its labels (alertname, severity, source, ...), without __name__ and alertstate.
Alert = tuple[tuple[str, str], ...]
FIRING = 'ALERTS{alertstate="firing"}'
IMPOSSIBLE = "{__pipemon_backtest__=\"expected-nothing\"}"
_TIME = re.compile(r'^    expr: ".*", time: (?P<time>\S+),\s*$')
_GOT = re.compile(r"^        got: (?P<got>.*)$")
_ERR = re.compile(r'^    expr: ".*", time: (?P<time>\S+), err: (?P<err>.*)$')


class PromtoolError(Exception):
    pass


def promtool_binary() -> str:
    path = shutil.which("promtool")
    if path is None:
        raise PromtoolError("promtool not found on PATH: install it with `apt-get install "
                            "prometheus` (Debian/Ubuntu) or from prometheus.io/download")
    return path


def version() -> str:
    result = subprocess.run([promtool_binary(), "--version"], capture_output=True, text=True,
                            check=False)
    first = (result.stdout or result.stderr).splitlines()
    return first[0].split("version", 1)[-1].split()[0] if first else "unknown"


def write_test(path: Path, rules: RuleSet, history: History, query: str = FIRING) -> None:
    """The promtool unit test file for `history`, next to the rules it evaluates (written line
    by line: histories run to megabytes, and every string is emitted as a JSON-quoted YAML
    scalar)."""
    step = _go_duration(history.step)
    lines = ["rule_files:"]
    lines += [f"  - {yaml_string(f.name)}" for f in write_pruned(rules, path.parent)]
    evaluated = {g["name"] for g in rules.pruned}
    lines += [f"evaluation_interval: {step}", "group_eval_order:"]
    lines += [f"  - {yaml_string(g)}" for g in rules.order if g in evaluated]
    lines += ["tests:", "  - name: backtest", f"    interval: {step}", "    input_series:"]
    for key, values in history:
        lines.append(f"      - series: {yaml_string(selector(key))}")
        lines.append(f"        values: {yaml_string(notation(values))}")
    lines.append("    promql_expr_test:")
    for i in range(history.steps):
        lines.append(f"      - expr: {yaml_string(query)}")
        lines.append(f"        eval_time: {_go_duration(i * history.step)}")
        lines.append(f"        exp_samples: [{{labels: {yaml_string(IMPOSSIBLE)}, value: -1}}]")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def evaluate(rules: RuleSet, history: History, workdir: Path, timeout: float = 900,
             query: str = FIRING) -> dict[Alert, list[int]]:
    """Run promtool on `history`: {alert: the step indexes at which it was firing} (or, with
    another `query`, each series it returns and the steps at which it returned it)."""
    test = workdir / "backtest_test.yaml"
    write_test(test, rules, history, query)
    try:
        result = subprocess.run([promtool_binary(), "test", "rules", test.name], cwd=workdir,
                                capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise PromtoolError(f"promtool test rules timed out after {timeout:.0f}s") from err
    return parse_output(result.stdout + result.stderr, history.step)


def parse_output(output: str, step: float) -> dict[Alert, list[int]]:
    """The firing alerts per step from promtool's report of the failed expectations."""
    firing: dict[Alert, list[int]] = {}
    at: int | None = None
    seen = 0
    for line in output.splitlines():
        if match := _ERR.match(line):
            raise PromtoolError(f"promtool could not evaluate at {match['time']}: {match['err']}")
        if match := _TIME.match(line):
            at = round(_seconds(match["time"]) / step)
        elif (match := _GOT.match(line)) and at is not None:
            seen += 1
            for labels, _value in parse_samples(match["got"]):
                alert = tuple((k, v) for k, v in labels if k not in ("__name__", "alertstate"))
                firing.setdefault(alert, []).append(at)
            at = None
    if not seen:
        raise PromtoolError("promtool evaluated no step; its output was:\n" + output[-4000:])
    return {alert: sorted(steps) for alert, steps in firing.items()}


def parse_samples(text: str) -> list[tuple[tuple[tuple[str, str], ...], float]]:
    """`{a="b", c="d"} 1E+00, {...} 2E+00` (or `nil`) -> [(labels, value)]: label values are
    Go-quoted strings, which Python's string literal syntax reads the same way."""
    text = text.strip()
    if text == "nil":
        return []
    samples = []
    i, n = 0, len(text)
    while i < n:
        if text[i] != "{":
            raise PromtoolError(f"unexpected promtool output at {i}: {text[i:i + 40]!r}")
        i += 1
        labels = []
        while text[i] != "}":
            eq = text.index("=", i)
            name = text[i:eq].strip().lstrip(",").strip()
            end = _string_end(text, eq + 1)
            labels.append((name, ast.literal_eval(text[eq + 1:end + 1])))
            i = end + 1
            while text[i] in ", ":
                i += 1
        i += 1  # past "}"
        comma = text.find(", {", i)
        stop = n if comma < 0 else comma
        samples.append((tuple(labels), float(text[i:stop].strip())))
        i = stop + 2 if comma >= 0 else n
    return samples


def _string_end(text: str, start: int) -> int:
    """Index of the closing quote of the quoted string that opens at `start`."""
    if text[start] != '"':
        raise PromtoolError(f"expected a quoted label value at {text[start:start + 40]!r}")
    i = start + 1
    while text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i


def _seconds(go_duration: str) -> float:
    try:
        return duration(go_duration)
    except ValueError as err:
        raise PromtoolError(f"unexpected duration in promtool output: {err}") from err


def _go_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
