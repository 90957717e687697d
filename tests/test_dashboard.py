"""The Grafana dashboard (deploy/helm/siked/dashboards/siked.json) asks only for what the operator exports.

Every metric named in a panel's or a variable's query is one of `siked_operator.metrics`, with the
suffixes its type gets on the wire (_total, _bucket, …), and every label the query filters or groups by
is one of that metric's labels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from siked_operator import metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "siked" / "dashboards" / "siked.json"
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset"}


def exported() -> dict[str, set[str]]:
    """Series name -> its label names, for every metric the operator serves."""
    out: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            [family] = metric.describe()
            labels = set(metric._labelnames) | ({"le"} if family.type == "histogram" else set())
            out |= {family.name + suffix: labels for suffix in SUFFIXES[family.type]}
    for family in metrics.RunsByPhase().collect():
        out[family.name] = {label for sample in family.samples for label in sample.labels}
    return out


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = [t["expr"] for p in panels() for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(selector, label): the label must be one of the selector's metric.
            selector, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"]).groups()
            out.append(f"count by ({label}) ({selector})")
    return out


def used(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, labels it is filtered or grouped by) for each metric in a PromQL expression."""
    expr = re.sub(r'"[^"]*"', '""', expr)             # strings: "$namespace", ".*"
    expr = re.sub(r"\[[^\]]*\]", "", expr)            # ranges: [$__rate_interval]
    grouped = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        grouped |= {label.strip() for label in group.split(",") if label.strip()}
    expr = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", expr)
    found = []
    for match in re.finditer(r"([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", expr):
        name, selector, call = match.groups()
        if name in PROMQL_WORDS or (call and not selector):
            continue  # a keyword or a function (sum, rate, histogram_quantile, …)
        filtered = set(re.findall(r"(\w+)\s*[=!]~?", selector or ""))
        found.append((name, filtered | grouped))
    return found


def test_the_dashboard_is_grafana_json_with_the_panels_asked_for():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    titles = {p["title"] for p in panels()}
    assert {"Runs by phase", "Eval accuracy per iteration and dataset", "Strategy shares",
            "α (teacher share of training rows)", "Student samples", "Correct-sample rate", "Stage durations",
            "Job failures", "Retries"} <= titles
    for p in panels():
        assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]


@pytest.mark.parametrize("expr", queries())
def test_every_query_uses_exported_metrics_and_their_labels(expr):
    series = exported()
    found = used(expr)
    assert found, expr
    for name, labels in found:
        assert name in series, f"{name} is not exported by siked_operator.metrics"
        assert labels <= series[name], f"{name} has no label {labels - series[name]}"


def test_the_query_check_catches_mistakes():
    series = exported()
    [(name, labels)] = used('sum by (stage) (rate(siked_stage_retries_total{run=~"$run"}[5m]))')
    assert name in series and labels == {"stage", "run"}
    [(name, _)] = used("siked_run_acuracy")
    assert name not in series
    [(name, labels)] = used('sum by (dataset) (siked_run_alpha{namespace="a"})')
    assert not labels <= series[name]
    assert "siked_stage_duration_seconds_bucket" in series and "siked_stage_duration_seconds" not in series
