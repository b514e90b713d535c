"""The dashboards for sources with constant labels (`labels:` in the exporter's config).

    python -m grafana.generate --labels env,team --out my-dashboards/

A dashboard gets a variable per label (All by default, each narrowing the next and the source
list), every query that selects a source or a worker host selects by the labels too, and the
links between dashboards carry them. Without labels the dashboards are the committed ones.
"""

from __future__ import annotations

import copy
import json
import re

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from grafana.common import label_variable

# Where a query picks the series of one place: the labels narrow it further. `source=~"$source|"`
# (an annotation's) also matches series without a source; the labels' selectors do the same.
PLACE = re.compile(r'(?P<label>source|instance)=~"\$(?P=label)(?P<empty>\|?)"')
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)"
                          r"(?:\{(?P<selector>[^}]*)\})?, (?P<label>\w+)\)$")
# Every pipemon source exports it: the labels' values are read from it.
LABEL_SOURCE = "pipemon_source_up"


def selector(labels: list[str], empty: str = "") -> str:
    return ", ".join(f'{label}=~"${label}{empty}"' for label in labels)


def with_labels(model: dict, labels: list[str]) -> dict:
    """`model` with a variable per label and its queries and links selecting by them."""
    places = {v["name"] for v in model["templating"]["list"]} & {"source", "instance"}
    if not labels or not places:
        return model  # not a dashboard of sources (the relay's incidents)
    model = copy.deepcopy(model)
    variables = model["templating"]["list"]
    first = next(i for i, v in enumerate(variables) if v["type"] != "datasource")
    variables[first:first] = [_variable(label, labels[:i]) for i, label in enumerate(labels)]
    for variable in variables[first + len(labels):]:
        if variable["type"] == "query":
            variable["query"]["query"] = _label_values(variable["query"]["query"], labels)
    _rewrite(model, labels)
    return model


def _variable(label: str, before: list[str]) -> dict:
    builder = label_variable(label, label, LABEL_SOURCE, selector=selector(before),
                             description=f"The sources' constant label `{label}`.")
    return json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))


def _label_values(query: str, labels: list[str]) -> str:
    """A variable's label_values() query, narrowed by the labels (unless it has a place
    selector already, which _rewrite extends)."""
    match = LABEL_VALUES.match(query)
    if match is None or PLACE.search(query):
        return query
    inner = ", ".join(filter(None, (match["selector"], selector(labels))))
    return f"label_values({match['metric']}{{{inner}}}, {match['label']})"


def _rewrite(node, labels: list[str]):
    """Every string of the model: place selectors get the labels', links carry them."""
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = _rewrite(value, labels)
        return node
    if isinstance(node, list):
        return [_rewrite(item, labels) for item in node]
    if not isinstance(node, str):
        return node
    text = PLACE.sub(lambda m: f"{m[0]}, {selector(labels, m['empty'])}", node)
    params = "".join(f"&${{{label}:queryparam}}" for label in labels)
    return text.replace("${datasource:queryparam}", "${datasource:queryparam}" + params)
