"""Accuracy: pipemon's run-time percentiles computed from its scraped buckets as PromQL's
histogram_quantile does, against percentile_cont over exactly the jobs it counted; the peers'
"last hour" values against the same SQL run the moment they are scraped."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from bench.peers.data import FINAL_STATES
from bench.peers.exporters import QUERIES, Contender


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile (promql/quantile.go, bucketQuantile) over (le, count)."""
    buckets = sorted(buckets)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return math.nan
    counts = []
    for _le, count in buckets:  # Prometheus makes the counts monotonic first
        counts.append(max(count, counts[-1]) if counts else count)
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(buckets) - 1) if counts[i] >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, end, count = 0.0, buckets[b][0], counts[b]
    if b > 0:
        start = buckets[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def parse(text: str) -> list:
    return list(text_string_to_metric_families(text))


def pipemon_histograms(families: list, name: str) -> dict[str, dict]:
    """queue -> {le: count, 'sum': s, 'count': n}, summed over outcomes; '' = every queue."""
    out: dict[str, dict] = {}
    for family in families:
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.labels.get("source") != "jobs":
                continue
            for queue in (sample.labels["queue"], ""):
                entry = out.setdefault(queue, {"le": {}, "sum": 0.0, "count": 0.0})
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    entry["le"][le] = entry["le"].get(le, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    entry["sum"] += sample.value
                elif sample.name.endswith("_count"):
                    entry["count"] += sample.value
    return out


def window_quantiles(families: list) -> dict[tuple[str, str], float]:
    """(queue, quantile) -> pipemon_queue_job_run_window_seconds (exact_quantiles)."""
    return {(sample.labels["queue"], sample.labels["quantile"]): sample.value
            for family in families if family.name == "pipemon_queue_job_run_window_seconds"
            for sample in family.samples if sample.labels.get("source") == "jobs"}


def metric_total(families: list, name: str, **labels: str) -> float:
    total = 0.0
    for family in families:
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def rel(measured: float, exact: float) -> float:
    if exact == 0:
        return 0.0 if measured == 0 else math.inf
    return (measured - exact) / exact


def pipemon_accuracy(conn, text: str, id_range: tuple[int, int],
                     analysis_range: tuple[int, int]) -> dict:
    families = parse(text)
    hist = pipemon_histograms(families, "pipemon_queue_job_run_seconds")
    rows = conn.execute(
        "SELECT queue, count(*), avg(run), percentile_cont(ARRAY[0.5, 0.95, 0.99])"
        " WITHIN GROUP (ORDER BY run)"
        " FROM (SELECT queue, extract(epoch FROM finished_at - started_at)::float8 AS run"
        "       FROM jobs WHERE id > %s AND id <= %s AND status = ANY(%s)) AS j"
        " GROUP BY ROLLUP (queue)", (*id_range, list(FINAL_STATES))).fetchall()
    exact = {(queue or ""): (count, avg, pcts) for queue, count, avg, pcts in rows}
    result: dict = {"jobs_exact": exact.get("", (0,))[0],
                    "jobs_counted": hist.get("", {}).get("count", 0.0),
                    "finished_total": metric_total(families, "pipemon_queue_jobs_finished_total",
                                                   source="jobs")}
    window = window_quantiles(families)
    worst: dict[str, float] = {}
    worst_exact: dict[str, float] = {}
    queues_compared = 0
    for queue, (count, avg, pcts) in exact.items():
        entry = hist.get(queue)
        if entry is None or not count:
            continue
        buckets = list(entry["le"].items())
        for q, exact_value in zip((0.5, 0.95, 0.99), pcts, strict=True):
            measured = histogram_quantile(q, buckets)
            key = f"p{round(q * 100)}"
            if queue == "":
                result[key] = {"histogram": measured, "exact": exact_value,
                               "error": rel(measured, exact_value)}
            elif count >= 100:  # per-queue worst error, queues with 100+ jobs
                worst[key] = max(worst.get(key, 0.0), abs(rel(measured, exact_value)))
                exported = window.get((queue, floatToGoString(q)), math.nan)
                worst_exact[key] = max(worst_exact.get(key, 0.0),
                                       abs(rel(exported, exact_value)))
        if queue and count >= 100:
            queues_compared += 1
        if queue == "":
            mean = entry["sum"] / entry["count"] if entry["count"] else math.nan
            result["avg"] = {"histogram": mean, "exact": avg, "error": rel(mean, avg)}
    result["worst_queue_error"] = worst
    result["worst_queue_error_exact"] = worst_exact  # exact_quantiles' window gauges
    result["queues_compared"] = queues_compared
    result["jobs_per_queue_min"] = min((c for q, (c, _a, _p) in exact.items() if q), default=0)
    analysis_exact = conn.execute("SELECT count(*) FROM audio_events_cache WHERE id > %s"
                                  " AND id <= %s", analysis_range).fetchone()[0]
    result["analysis_exact"] = analysis_exact
    result["analysis_counted"] = metric_total(families, "pipemon_analysis_results_total",
                                              source="analysis")
    result["counts_match"] = (result["jobs_counted"] == result["jobs_exact"]
                              == result["finished_total"]
                              and result["analysis_counted"] == analysis_exact)
    return result


def peer_values(families: list, exporter: Contender) -> dict[tuple, float]:
    """(value column, label values...) -> value, from either peer's exposition."""
    columns = {v: q for q in QUERIES for v in q["values"]}
    out = {}
    for family in families:
        for sample in family.samples:
            if exporter.key == "sqlexp":
                column = sample.labels.get("col")
                if sample.name != "sql_" + columns.get(column, {}).get("name", "?"):
                    continue
            else:
                column = sample.name
            if column not in columns:
                continue
            key = (column, *(sample.labels.get(label, "") for label in columns[column]["labels"]))
            out[key] = sample.value
    return out


def exact_values(conn) -> dict[tuple, float]:
    out = {}
    for q in QUERIES:
        cur = conn.execute(q["sql"])
        names = [d.name for d in cur.description]
        for row in cur.fetchall():
            record = dict(zip(names, row, strict=True))
            for value in q["values"]:
                key = (value, *(record[label] for label in q["labels"]))
                out[key] = float(record[value])
    return out


def peer_accuracy(conn, text: str, exporter: Contender) -> dict:
    """The peer's values as just scraped (`text`) against the same SQL run right then
    (staleness only)."""
    exact = exact_values(conn)
    measured = peer_values(parse(text), exporter)
    missing = sorted({k[0] for k in exact if k not in measured})
    errors: dict[str, float] = {}
    for key, value in exact.items():
        if key in measured:
            errors[key[0]] = max(errors.get(key[0], 0.0), abs(rel(measured[key], value)))
    return {"missing": missing, "worst_error": errors, "series": len(measured)}
