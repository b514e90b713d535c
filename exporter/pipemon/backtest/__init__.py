"""`pipemon backtest`: replay metric histories through the rule bundle and judge its alerts.

promtool (`promtool test rules`) does the evaluation, exactly as Prometheus would: the histories
become the input series of one unit test, and the test asks for the firing alerts at every
evaluation. The histories come from the scenario library (`scenarios/`, simulated pipelines with
stated expectations) or from a real Prometheus (`--prometheus`, the series the rules read).

  rules.py       the rule files: evaluation order, the raw series they read
  series.py      sample histories and their promtool notation
  simulate.py    a pipeline simulated job by job, observed as pipemon exports it
  scenario.py    scenario files: pipeline, events, expectations
  promtool.py    write the unit test, run promtool, read the firing alerts back
  prometheus.py  pull the series the rules read from a real Prometheus
  judge.py       expectations against the alerts: quiet minutes, detection times
  report.py      the table for people, JSON for machines, Markdown for docs/alerts.md
"""
