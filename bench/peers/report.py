"""The report: markdown tables of a run (main comparison, accuracy, statements, growth), its
JSON and CSV, and the problems that make a run fail (broken exporters and wrong numbers)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

from bench.peers.data import human
from bench.peers.exporters import EXPORTERS
from bench.peers.measure import Result


def ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:,.1f}x"


def pct(error: float | None) -> str:
    if error is None or math.isnan(error):
        return "n/a"
    return f"{error * 100:+.1f} %"


def main_table(results: list[Result]) -> str:
    by = {r.exporter: r.values for r in results}
    keys = [k for k in EXPORTERS if k in by]
    base = by.get("pipemon", {})
    head = "| | " + " | ".join(EXPORTERS[k].title for k in keys) + " |"
    lines = [head, "|---" * (len(keys) + 1) + "|"]

    def row(label: str, cell: Callable[[str, dict], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(k, by[k]) for k in keys) + " |")

    interval = results[0].settings["interval_s"]
    row("queries run", lambda k, v: f"every {interval:g} s" if v["mode"] == "schedule"
        else "on every scrape")
    row("DB time per cycle, median (p90) ms",
        lambda k, v: f"{ms(v['db_ms_median'])} ({ms(v['db_ms_p90'])})")
    row("+ pipemon's unmapped-state check, amortized (every 5 m)",
        lambda k, v: (f"{ms(v['db_ms_with_unmapped'])} (scan {ms(v['unmapped_scan']['mean_ms'])}"
                      " ms)") if v.get("unmapped_scan") else "-")
    row("DB time ratio to pipemon (steady; with the scan)",
        lambda k, v: "1x" if k == "pipemon" else
        f"{ratio(v['db_ms_median'], base.get('db_ms_median'))};"
        f" {ratio(v['db_ms_median'], base.get('db_ms_with_unmapped'))}")
    row("statements per cycle", lambda k, v: f"{v['statements_per_cycle']:.1f}")
    row("poll wall time, median ms (pipemon: its poll-duration histogram, both sources)",
        lambda k, v: ms(v["poll_wall_ms_median"]) if "poll_wall_ms_median" in v else "-")
    row("series on /metrics (bytes, as scraped)",
        lambda k, v: f"{v['series']:,} ({v['bytes_scraped']:,})")
    for key, label in (("1", "1 scraper"), ("10", "10 scrapers back to back"),
                       ("10 paced", "10 scrapers, 1/s each"),
                       ("10 aligned", "10 scrapers, 1/s each, all at the same instants")):
        if all(key in by[k]["load"] for k in keys):
            row(f"/metrics p50 / p99 ms, {label}",
                lambda k, v, key=key: f"{ms(v['load'][key]['p50_ms'])} /"
                f" {ms(v['load'][key]['p99_ms'])}")
    row("scrapes/s with 10 back to back", lambda k, v: f"{v['load']['10']['per_s']:,.0f}")
    row("/metrics p99 ratio to pipemon (10 back to back)",
        lambda k, v: "1x" if k == "pipemon" else
        ratio(v["load"]["10"]["p99_ms"], base.get("load", {}).get("10", {}).get("p99_ms")))
    row("CPU s per hour of polling", lambda k, v: f"{v['cpu_s_per_hour']:,.1f}")
    row("CPU ratio to pipemon", lambda k, v: "1x" if k == "pipemon" else
        ratio(v["cpu_s_per_hour"], base.get("cpu_s_per_hour")))
    row("peak RSS (VmHWM) MiB", lambda k, v: f"{v['rss_hwm_mib']:.1f}")
    if any("rss_hwm_after_burst_mib" in r.values for r in results):
        row("peak RSS after the accuracy burst (all queues' jobs read in one poll) MiB",
            lambda k, v: f"{v['rss_hwm_after_burst_mib']:.1f}"
            if "rss_hwm_after_burst_mib" in v else "-")
    return "\n".join(lines)


def accuracy_table(results: list[Result]) -> str:
    lines = ["| exporter | what | exported | exact | error |", "|---|---|---|---|---|"]
    for r in results:
        acc = r.values.get("accuracy")
        if not acc:
            continue
        title = EXPORTERS[r.exporter].title
        if r.exporter == "pipemon":
            lines.append(f"| {title} | jobs counted / finished in the window |"
                         f" {acc['jobs_counted']:,.0f} | {acc['jobs_exact']:,} |"
                         f" {'match' if acc['counts_match'] else 'MISMATCH'} |")
            for key in ("p50", "p95", "p99", "avg"):
                if key in acc:
                    a = acc[key]
                    lines.append(f"| {title} | run time {key}, all queues, from the buckets, s |"
                                 f" {a['histogram']:.1f} | {a['exact']:.1f} |"
                                 f" {pct(a['error'])} |")
            queues = (f"{acc['queues_compared']} queues, at least"
                      f" {acc['jobs_per_queue_min']:,} jobs each" if "queues_compared" in acc
                      else "queues with 100+ jobs")
            for key in ("p50", "p95", "p99"):
                cells = []
                for name, field in (("buckets", "worst_queue_error"),
                                    ("exact_quantiles", "worst_queue_error_exact")):
                    worst = acc.get(field, {}).get(key)
                    if worst is not None:
                        cells.append(f"{name} {abs(worst) * 100:.2f} %")
                if cells:
                    lines.append(f"| {title} | run time {key}, worst queue ({queues}) | | |"
                                 f" {'; '.join(cells)} |")
        else:
            worst = acc["worst_error"]
            for column in ("jobs_finished_last_hour", "job_run_seconds_avg_last_hour",
                           "job_run_seconds_p99_last_hour", "analyses_last_hour"):
                if column in worst:
                    lines.append(f"| {title} | {column}, worst series | | |"
                                 f" {worst[column] * 100:.2f} % |")
            if acc["missing"]:
                lines.append(f"| {title} | missing | {', '.join(acc['missing'])} | | |")
    return "\n".join(lines)


def statements_table(results: list[Result], top: int = 8) -> str:
    lines = ["| exporter | statement (normalized by pg_stat_statements) | calls/cycle |"
             " ms/cycle | mean ms |", "|---|---|---|---|---|"]
    for r in results:
        cycles = r.values["cycles"]
        for s in r.values["statements"][:top]:
            if s["exec_ms_per_cycle"] < 0.005:
                continue
            query = s["query"].replace("|", "\\|")
            query = query if len(query) < 90 else query[:87] + "..."
            lines.append(f"| {EXPORTERS[r.exporter].title} | `{query}` |"
                         f" {s['calls'] / cycles:.1f} | {ms(s['exec_ms_per_cycle'])} |"
                         f" {ms(s['mean_ms'])} |")
    return "\n".join(lines)


def growth_table(results: list[Result], dimension: str) -> str:
    keys = [k for k in EXPORTERS if any(r.exporter == k for r in results)]
    points = sorted({(r.dataset["rows"], r.dataset["queues"]) for r in results},
                    key=lambda p: p if dimension == "rows" else (p[1], p[0]))
    head = ["rows" if dimension == "rows" else "queues (pipemon series)"]
    for k in keys:
        head.append(f"{EXPORTERS[k].title}: DB ms/cycle")
    for k in keys:
        head.append(f"{EXPORTERS[k].title}: CPU s/h")
    if "pipemon" in keys:
        head.append("pipemon: poll ms (both sources)")
    for k in keys:
        head.append(f"{EXPORTERS[k].title}: /metrics p50 / p99 ms (10 scrapers)")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for rows, queues in points:
        here = {r.exporter: r.values for r in results
                if (r.dataset["rows"], r.dataset["queues"]) == (rows, queues)}
        pipemon_series = here.get("pipemon", {}).get("series")
        label = (human(rows) if dimension == "rows"
                 else f"{queues} ({pipemon_series:,})" if pipemon_series else str(queues))
        cells = [label]
        for k in keys:
            v = here.get(k)
            if v is None:
                cells.append("")
                continue
            text = ms(v["db_ms_median"])
            if v.get("unmapped_scan"):  # its mean: the amortized share depends on the interval
                text += f" (scan {ms(v['unmapped_scan']['mean_ms'])} every 5 m)"
            cells.append(text)
        for k in keys:
            v = here.get(k)
            cells.append("" if v is None else f"{v['cpu_s_per_hour']:.1f}")
        if "pipemon" in keys:
            poll = here.get("pipemon", {}).get("poll_wall_ms_median")
            cells.append("" if poll is None else f"{poll:.2f}")
        for k in keys:
            v = here.get(k)
            cells.append("" if v is None else
                         f"{ms(v['load']['10']['p50_ms'])} / {ms(v['load']['10']['p99_ms'])}"
                         f" ({v['series']:,} series)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict[str, list[Result]], meta: dict) -> str:
    """The markdown tables of a run (also rendered again from its JSON with --report)."""
    args = meta["args"]
    main, growth_keys = results["main"], [k for k in EXPORTERS if k != "qe-scrape"]
    small = min((r.dataset["rows"] for r in results["queues"]), default=args["rows"])
    text = [f"### {human(args['rows'])} finished jobs, {args['queues']} queues, polls every"
            f" {args['interval']:g} s, {args['cycles']} cycles\n"]
    if main:
        text += [main_table(main), "", accuracy_table(main), "", statements_table(main)]
    if results["rows"]:
        text += ["", "### Growth with rows\n", growth_table(
            results["rows"] + [r for r in main if r.exporter in growth_keys], "rows")]
    if results["queues"]:
        text += ["", f"### Growth with series ({human(small)} rows)\n",
                 growth_table(results["queues"], "queues")]
    return "\n".join(text) + "\n"


def load_results(path: Path) -> tuple[dict[str, list[Result]], dict]:
    data = json.loads(path.read_text())
    return ({part: [Result(**r) for r in rs] for part, rs in data["results"].items()},
            data["meta"])


def write_results(out: Path, results: dict[str, list[Result]], meta: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "results": {part: [r.__dict__ for r in rs]
                                      for part, rs in results.items()}}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    columns = ["part", "exporter", "rows", "queues", "interval_s", "cycles", "mode",
               "db_ms_median", "db_ms_p90", "db_ms_mean", "plan_ms_mean", "unmapped_scan_ms",
               "db_ms_with_unmapped", "statements_per_cycle", "poll_wall_ms_median", "series",
               "bytes", "bytes_scraped", "p50_ms_1", "p99_ms_1", "p50_ms_10", "p99_ms_10",
               "per_s_10", "errors_10", "p50_ms_10_paced", "p99_ms_10_paced", "cpu_s_per_hour",
               "rss_hwm_mib"]
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for part, rs in results.items():
            for r in rs:
                v = r.values
                loads = v.get("load", {})
                writer.writerow([
                    part, r.exporter, r.dataset["rows"], r.dataset["queues"],
                    r.settings["interval_s"], v.get("cycles"), v.get("mode"),
                    *(round(v[k], 3) if isinstance(v.get(k), float) else v.get(k) for k in (
                        "db_ms_median", "db_ms_p90", "db_ms_mean", "plan_ms_mean")),
                    round(v["unmapped_scan"]["mean_ms"], 3) if v.get("unmapped_scan") else "",
                    *(round(v[k], 3) if isinstance(v.get(k), float) else v.get(k) for k in (
                        "db_ms_with_unmapped", "statements_per_cycle", "poll_wall_ms_median",
                        "series", "bytes", "bytes_scraped")),
                    *(round(loads[n][k], 3) if n in loads else "" for n, k in (
                        ("1", "p50_ms"), ("1", "p99_ms"), ("10", "p50_ms"), ("10", "p99_ms"),
                        ("10", "per_s"), ("10", "errors"), ("10 paced", "p50_ms"),
                        ("10 paced", "p99_ms"))),
                    round(v.get("cpu_s_per_hour", 0), 2), round(v.get("rss_hwm_mib", 0), 1),
                ])


def problems(results: list[Result]) -> list[str]:
    """What makes the run fail (exit 1): broken exporters and wrong numbers, not slow ones."""
    found = []
    for r in results:
        v, title = r.values, EXPORTERS[r.exporter].title
        for name, stats in v.get("load", {}).items():
            if stats["errors"]:
                found.append(f"{title}: {stats['errors']} failed scrapes with {name} scrapers"
                             f" ({stats['first_error']})")
        if v.get("prometheus_scrape_errors"):
            found.append(f"{title}: {v['prometheus_scrape_errors']} failed periodic scrapes")
        if v.get("poll_errors"):
            found.append(f"{title}: {v['poll_errors']:g} failed polls")
        acc = v.get("accuracy")
        if acc and r.exporter == "pipemon" and not acc["counts_match"]:
            found.append(f"pipemon counted {acc['jobs_counted']:g} jobs (finished_total"
                         f" {acc['finished_total']:g}) and {acc['analysis_counted']:g} analyses"
                         f" where SQL finds {acc['jobs_exact']} and {acc['analysis_exact']}")
        if acc and r.exporter != "pipemon" and acc["missing"]:
            found.append(f"{title}: no series for {', '.join(acc['missing'])}")
    return found
