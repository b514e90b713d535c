"""Pull the series the rules read from a real Prometheus, as a history on the rules' step.

`/api/v1/query_range` returns each series at every step with Prometheus's own lookback and
staleness already applied, so a step without a value is a series that was absent or stale then:
the history marks it stale, and promtool's evaluation sees what Prometheus saw. Ranges are pulled
in chunks of at most 6 hours (Prometheus refuses more than 11,000 points per series).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request

from pipemon.backtest.rules import RuleSet
from pipemon.backtest.series import History, labels_key

CHUNK_SECONDS = 6 * 3600
MAX_POINTS = 10_000


class PullError(Exception):
    pass


def queries(rules: RuleSet) -> list[str]:
    """One query per metric the rules read: the bare name when some rule reads all of its
    series, else each selector the rules write."""
    out = []
    for name, selectors in sorted(rules.selectors.items()):
        if f"{name}{{}}" in selectors or name in selectors:
            out.append(name)
        else:
            out.extend(selectors)
    return out


def pull(url: str, rules: RuleSet, start: float, end: float, step: float,
         bearer_token: str | None = None, timeout: float = 60.0, progress=None) -> History:
    """Every series the rules read, from `start` to `end` (unix seconds) every `step`."""
    start = math.floor(start / step) * step
    steps = int((end - start) // step) + 1
    history = History(steps, step, start)
    chunk = min(CHUNK_SECONDS, MAX_POINTS * step)
    for query in queries(rules):
        t = start
        while t <= start + (steps - 1) * step:
            last = min(t + chunk - step, start + (steps - 1) * step)
            for series in _query_range(url, query, t, last, step, bearer_token, timeout):
                labels = dict(series["metric"])
                name = labels.pop("__name__", "")
                if not name:
                    continue
                values = history.values(name, **labels)
                for ts, value in series["values"]:
                    values[round((float(ts) - start) / step)] = float(value)
            if progress:
                progress(query, t, last)
            t = last + step
    history.mark_stale()
    return history


def _query_range(url: str, query: str, start: float, end: float, step: float,
                 bearer_token: str | None, timeout: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}",
                                     "end": f"{end:.3f}", "step": f"{step:g}s"})
    request = urllib.request.Request(f"{url.rstrip('/')}/api/v1/query_range",
                                     data=params.encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    if bearer_token:
        request.add_header("Authorization", f"Bearer {bearer_token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as err:
        detail = _error_detail(err)
        raise PullError(f"{url}: query_range {query!r} failed: HTTP {err.code}{detail}") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PullError(f"{url}: cannot reach Prometheus: {reason}") from err
    except json.JSONDecodeError as err:
        raise PullError(f"{url}: query_range {query!r}: not JSON: {err}") from err
    if body.get("status") != "success" or body.get("data", {}).get("resultType") != "matrix":
        raise PullError(f"{url}: query_range {query!r}: {body.get('error') or body}")
    return body["data"]["result"]


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read() or b"{}")
        return f": {body.get('error')}" if body.get("error") else ""
    except (ValueError, OSError):
        return ""


__all__ = ["PullError", "labels_key", "pull", "queries"]
