"""The dashboard and the alerts against a real Prometheus (Debian's `prometheus` package, promtool included).

* During an operator run against the Kubernetes API emulator (tests/k8s_tools.py), Prometheus scrapes the
  operator's metrics endpoint; then every Grafana panel's query, with the dashboard's variables
  substituted the way Grafana does, goes through Prometheus's HTTP API and must return a series.
* `promtool check metrics` lints a scrape of that endpoint.
* The chart's PrometheusRule passes `promtool check rules`, and `promtool test rules` with one test file per
  alert (tests/fixtures/alerts/<alert>.yaml).

    pytest tests/test_prometheus.py -m integration     # .ci/run installs prometheus with apt-get
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import k8s_tools as kt  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "siked"
DASHBOARD = CHART / "dashboards" / "siked.json"
ALERT_TESTS = Path(__file__).parent / "fixtures" / "alerts"
SMOKE = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# What Grafana puts in for its built-in variables on a dashboard opened right after the run.
GRAFANA_BUILTINS = {"$__rate_interval": "1m", "$__range": "10m", "$__interval": "15s"}


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install -y prometheus); .ci/run installs it")
    return path


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    return json.loads(body) if body.startswith("{") else body


class Prometheus:
    """`prometheus` scraping one target every second, with its HTTP API on a free local port."""

    def __init__(self, workdir: Path, target: str):
        self.port = kt.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "siked-operator", "static_configs": [{"targets": [target]}]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [_binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        kt.wait_for(self._ready, 60, "prometheus to be ready")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        try:
            return _get(f"{self.url}/-/ready") is not None
        except OSError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        reply = _get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}")
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def scrapes(self) -> float:
        """Successful scrapes of the operator so far."""
        result = self.query('count_over_time(up{job="siked-operator"}[1h])')
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def scraped(s3_server: str, tmp_path_factory) -> tuple[Prometheus, str]:
    """A smoke run driven to Succeeded by the real operator, one stage failing once on the way (so failure
    and retry series exist), scraped by Prometheus the whole time. Returns (prometheus, a scrape's text)."""
    import boto3

    _binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus-e2e")
    bucket = f"siked-prom-{uuid.uuid4().hex[:8]}"
    boto3.session.Session().client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    (tmp / "node").mkdir()
    metrics_port, liveness_port = kt.free_port(), kt.free_port()

    def simulate(job: dict[str, Any]) -> kt.Simulated:
        labels = job["metadata"]["labels"]
        if labels["siked.io/stage"] == "train" and labels.get("siked.io/iteration") == "0" \
                and int(labels["siked.io/attempt"]) < 1:
            summary = {"stage": "train", "status": "failed", "retryable": True, "exit_code": 1,
                       "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
            return kt.Simulated(exit_code=1, message=json.dumps(summary), seconds=0.3)
        return kt.Simulated(seconds=0.3)

    with kt.cluster(tmp) as (server, api, kubeconfig):
        api.create_secret("siked-storage", CREDENTIALS)
        kubelet = kt.SimulatedKubelet(api, tmp / "node", env={"PATH": f"{kt.VENV_BIN}:/usr/bin:/bin"})
        kubelet.simulate = simulate
        operator = kt.OperatorProcess(kubeconfig, tmp, args=[
            "--storage-uri", f"s3://{bucket}/runs", "--s3-endpoint", s3_server, "--storage-secret", "siked-storage",
            "--metrics-port", str(metrics_port), "--liveness-port", str(liveness_port),
            "--poll-interval", "0.5", "--retry-backoff", "1",
        ])
        prometheus = Prometheus(tmp, f"127.0.0.1:{metrics_port}")
        try:
            with kubelet, operator:
                api.create_run(SMOKE)
                kt.wait_for(lambda: ((api.run("smoke") or {}).get("status") or {}).get("phase") == "Succeeded",
                            120, "the smoke run to succeed")
                # Counters need two samples after their last change for increase() to see them.
                scrapes = prometheus.scrapes()
                kt.wait_for(lambda: prometheus.scrapes() >= scrapes + 3, 30, "three more scrapes")
                scrape = _get(f"http://127.0.0.1:{metrics_port}/metrics")
                yield prometheus, scrape  # the operator keeps serving: a stopped target's series go stale
        finally:
            prometheus.stop()


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _variable_values(prometheus: Prometheus, substitute) -> dict[str, str]:
    """Each query variable resolved as Grafana does for `label_values(selector, label)`: the label's values
    on the series the selector matches, all of them selected, as a regex alternation."""
    values: dict[str, str] = {}
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        selector, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"]).groups()
        found = prometheus.api(f"label/{label}/values", **{"match[]": substitute(selector, values)})
        assert found, f"variable ${variable['name']}: {variable['query']['query']} has no values"
        values[variable["name"]] = "|".join(re.escape(v) for v in found) if len(found) > 1 else re.escape(found[0])
    return values


def _substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in {**GRAFANA_BUILTINS, **{f"${k}": v for k, v in values.items()}}.items():
        expr = expr.replace(name.replace("$", "${", 1) + "}", value).replace(name, value)
    return expr


def test_every_panel_query_returns_series(scraped):
    prometheus, _ = scraped
    values = _variable_values(prometheus, _substitute)
    assert values["namespace"] == "default" and values["run"] == "smoke"
    empty, checked = [], 0
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = _substitute(target["expr"], values)
            assert "$" not in expr, expr
            checked += 1
            if not prometheus.query(expr):
                empty.append(f"{panel['title']}: {expr}")
    assert checked >= 15
    assert empty == [], "panels without data:\n" + "\n".join(empty)


def test_panels_show_what_the_run_did(scraped):
    prometheus, _ = scraped
    # The run is Succeeded, iteration 1's accuracy is recorded, and train[0]'s failure and retry counted.
    phases = {r["metric"]["phase"]: r["value"][1] for r in prometheus.query('siked_run_phase{run="smoke"} == 1')}
    assert phases == {"Succeeded": "1"}
    accuracy = prometheus.query('siked_run_accuracy{run="smoke", dataset="validation"}')
    assert {r["metric"]["iteration"] for r in accuracy} == {"0", "1"}
    failures = prometheus.query('sum by (stage) (siked_stage_job_failures_total{run="smoke"})')
    assert [(r["metric"]["stage"], r["value"][1]) for r in failures] == [("train", "1")]
    retries = prometheus.query('sum by (stage) (siked_stage_retries_total{run="smoke"})')
    assert [(r["metric"]["stage"], r["value"][1]) for r in retries] == [("train", "1")]


def test_promtool_check_metrics_passes_on_a_scrape(scraped):
    _, scrape = scraped
    assert "siked_run_phase{" in scrape
    result = subprocess.run([_binary("promtool"), "check", "metrics"], input=scrape, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def _rules(tmp_path: Path) -> Path:
    """The chart's PrometheusRule, rendered with its defaults, as a Prometheus rule file."""
    rendered = subprocess.run(
        [kt.helm(), "template", "siked", str(CHART), "--namespace", "siked-system",
         "--set", "metrics.prometheusRule.enabled=true"], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    [rule] = [d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_alert_rules_pass_promtool_check(tmp_path):
    promtool = _binary("promtool")
    rules = _rules(tmp_path)
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = [r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert f"{len(alerts)} rules found" in result.stdout
    # one promtool test file per alert, and one per alert only
    assert sorted(p.stem for p in ALERT_TESTS.glob("*.yaml")) == sorted(alerts)


@pytest.mark.parametrize("alert", sorted(p.stem for p in ALERT_TESTS.glob("*.yaml")))
def test_alert_fires_when_it_should(alert, tmp_path):
    promtool = _binary("promtool")
    _rules(tmp_path)
    shutil.copy(ALERT_TESTS / f"{alert}.yaml", tmp_path / f"{alert}.yaml")
    test = yaml.safe_load((tmp_path / f"{alert}.yaml").read_text())
    assert {t["alertname"] for case in test["tests"] for t in case["alert_rule_test"]} == {alert}
    result = subprocess.run([promtool, "test", "rules", f"{alert}.yaml"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
