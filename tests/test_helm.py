"""The Helm chart (deploy/helm/siked), rendered by the real helm binary.

Every rendered object validates against the Kubernetes schemas of a current release (strict: unknown
fields fail), in the default and non-default configurations. The chart's RBAC is checked against
reality: the operator runs against the API emulator with the Deployment's settings, every request it
makes is recorded, and each must be allowed by the rendered roles, with no rule left unused.

    pytest tests/test_helm.py
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from siked_operator.main import build_parser, config_from

sys.path.insert(0, str(Path(__file__).parent))
import k8s_tools as kt

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "siked"
RELEASE, NAMESPACE = "siked", "siked-system"
KUBERNETES = latest_version()  # of the schemas kubernetes-validate ships
OLDEST = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"].strip(">=").split("-")[0]

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "metrics-off": ["--set", "metrics.enabled=false"],
    "servicemonitor": ["--set", "metrics.serviceMonitor.enabled=true",
                       "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack"],
    "crds-off": ["--set", "crds.enabled=false"],
    "prometheusrule": ["--set", "metrics.prometheusRule.enabled=true",
                       "--set", "metrics.prometheusRule.labels.release=kube-prometheus-stack"],
    "replicas": ["--set", "replicaCount=2"],
    "openshift": ["--set", "podSecurityContext.runAsUser=null", "--set", "podSecurityContext.runAsGroup=null",
                  "--set-json", 'stages.podSecurityContext={"runAsNonRoot": true, "seccompProfile": '
                                '{"type": "RuntimeDefault"}}',
                  "--set-json", 'stages.securityContext={"allowPrivilegeEscalation": false, "capabilities": '
                                '{"drop": ["ALL"]}}'],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}"],
    "configured": [
        "--set", "storage.uri=s3://ml-runs/siked", "--set", "storage.endpoint=http://minio.storage:9000",
        "--set", "storage.jobSecret=siked-s3", "--set", "storage.operatorSecret=siked-operator-s3",
        "--set", "stages.serviceAccountName=siked-stage", "--set", "stages.image.tag=0.1.0-cu13",
        "--set-json", ('stages.resources={"gpus": 1, "memory": "64Gi", "nodeSelector": {"pool": "gpu"}, '
                       '"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}'),
        "--set", "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/siked",
        "--set", "dashboard.label=grafana_dashboard_siked", "--set", "dashboard.labelValue=yes",
        "--set", "dashboard.namespace=monitoring", "--set", "crds.keep=false",
        "--set-json", 'env=[{"name": "AWS_REGION", "value": "eu-west-1"}]',
        "--set", "nodeSelector.pool=system",
    ],
}


def helm(*args: str) -> str:
    result = subprocess.run([kt.helm(), *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@functools.cache
def _rendered(variant: str) -> str:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *VARIANTS[variant])


def render(variant: str = "default") -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(_rendered(variant)) if doc]


def the(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


# --- lint, render, validate ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint(variant):
    out = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *VARIANTS[variant])
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("kubernetes", [KUBERNETES, OLDEST])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(variant, kubernetes):
    """Against the newest release's schemas, and the oldest the chart supports (Chart.yaml's kubeVersion)."""
    objects = render(variant)
    assert objects
    for obj in objects:
        if obj["kind"] in ("ServiceMonitor", "PrometheusRule"):
            continue  # prometheus-operator's kinds, not Kubernetes': checked in their own tests
        try:
            kubernetes_validate.validate(obj, kubernetes, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({variant}, {kubernetes}): {path}: {exc.message}")


def test_a_broken_object_does_fail_validation():
    deployment = copy.deepcopy(the(render(), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["dropCapabilities"] = ["ALL"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_what_each_variant_renders():
    assert kinds(render()) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition",
                               "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]
    assert kinds(render("metrics-off")) == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                                            "Deployment", "Role", "RoleBinding", "ServiceAccount"]
    assert "PrometheusRule" in kinds(render("prometheusrule")) and "PrometheusRule" not in kinds(render())
    assert "ServiceMonitor" in kinds(render("servicemonitor"))
    assert "CustomResourceDefinition" not in kinds(render("crds-off"))
    namespaced = render("namespaced")
    assert sorted((o["kind"], o["metadata"]["namespace"]) for o in namespaced if o["kind"] in ("Role", "RoleBinding")) \
        == [("Role", NAMESPACE), ("Role", "team-a"), ("Role", "team-b"),  # the leader Lease's, and the runs'
            ("RoleBinding", NAMESPACE), ("RoleBinding", "team-a"), ("RoleBinding", "team-b")]


def test_every_value_is_documented():
    """Each key in values.yaml has a `# --` comment above it, or is a group of documented keys."""
    lines = (CHART / "values.yaml").read_text().splitlines()

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    undocumented, documented_block = [], None  # the indentation of a documented key whose value goes on
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if documented_block is not None and indent(line) > documented_block:
            continue  # inside a documented value (e.g. resources.requests.cpu)
        documented_block = None
        key, _, value = line.partition(":")
        above = i - 1
        while above >= 0 and lines[above].lstrip().startswith("#") and "# --" not in lines[above]:
            above -= 1
        if above >= 0 and "# --" in lines[above]:
            documented_block = indent(line)
        elif value.strip() or i + 1 == len(lines) or indent(lines[i + 1]) <= indent(line):
            undocumented.append(key.strip())  # a value, not a group of keys
    assert undocumented == []


# --- the CRD --------------------------------------------------------------------------------------


def test_the_chart_renders_crds_distillationrun_yaml():
    committed = yaml.safe_load((REPO / "crds" / "distillationrun.yaml").read_text())
    assert the(render("configured"), "CustomResourceDefinition") == committed  # crds.keep=false
    kept = the(render(), "CustomResourceDefinition")
    assert kept["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert kept == committed


def test_the_charts_crd_is_the_generated_file_not_a_copy():
    link = CHART / "files" / "distillationrun.yaml"
    assert link.is_symlink() and link.resolve() == (REPO / "crds" / "distillationrun.yaml").resolve()


# --- the Deployment -------------------------------------------------------------------------------


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(objects)["env"] if "value" in e}


def test_operator_pod_passes_pod_security_restricted():
    for variant in ("default", "openshift", "replicas"):
        pod = the(render(variant), "Deployment")["spec"]["template"]["spec"]
        assert kt.psa_restricted_violations(pod) == [], variant


def test_stage_security_contexts_reach_the_operator():
    env = operator_env(render("openshift"))
    assert json.loads(env["SIKED_OPERATOR_POD_SECURITY_CONTEXT"]) == {
        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert "readOnlyRootFilesystem" not in json.loads(env["SIKED_OPERATOR_CONTAINER_SECURITY_CONTEXT"])
    pod = the(render("openshift"), "Deployment")["spec"]["template"]["spec"]
    assert "runAsUser" not in pod["securityContext"]  # OpenShift's SCC assigns it
    assert "SIKED_OPERATOR_POD_SECURITY_CONTEXT" not in operator_env(render())


def test_two_replicas_roll_and_elect_a_leader():
    deployment = the(render("replicas"), "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    env = operator_env(render("replicas"))
    assert env["SIKED_OPERATOR_LEADER_ELECTION"] == "true" and env["SIKED_OPERATOR_LEASE_NAMESPACE"] == NAMESPACE
    args = build_parser().parse_args([])
    assert args.leader_election is False  # outside the chart (a laptop, a test) it is off unless asked


def test_one_replica_replaced_not_rolled_with_secure_defaults():
    deployment = the(render(), "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == \
        "RuntimeDefault"
    security = container(render())["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}
    assert pod["serviceAccountName"] == the(render(), "ServiceAccount")["metadata"]["name"]
    assert container(render())["image"] == "ghcr.io/siked/siked-operator:0.1.0"


def test_values_reach_the_operators_settings(monkeypatch):
    """The Deployment's environment, read the way `siked-operator` reads it."""
    for name in list(os.environ):
        if name.startswith("SIKED_OPERATOR_"):
            monkeypatch.delenv(name)
    objects = render("configured")
    for name, value in operator_env(objects).items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args([])
    config = config_from(args)
    assert config.storage_uri == "s3://ml-runs/siked" and config.s3_endpoint == "http://minio.storage:9000"
    assert config.storage_secret == "siked-s3" and config.service_account == "siked-stage"
    assert config.default_image == "ghcr.io/siked/siked:0.1.0-cu13"
    assert config.default_resources.gpus == 1 and config.default_resources.node_selector == {"pool": "gpu"}
    assert args.metrics_port == 9090 and args.liveness_port == 8080
    assert container(objects)["envFrom"] == [{"secretRef": {"name": "siked-operator-s3"}}]
    assert operator_env(objects)["AWS_REGION"] == "eu-west-1"
    # Every variable the chart sets is one the operator reads.
    known = {f"SIKED_OPERATOR_{f.upper()}" for f in vars(config)} | {
        "SIKED_OPERATOR_NAMESPACES", "SIKED_OPERATOR_METRICS_PORT", "SIKED_OPERATOR_LIVENESS_PORT",
        "SIKED_OPERATOR_LEADER_ELECTION", "SIKED_OPERATOR_LEASE_NAMESPACE"}
    assert {n for n in operator_env(objects) if n.startswith("SIKED_")} <= known


def test_scope_and_metrics_port():
    assert "SIKED_OPERATOR_NAMESPACES" not in operator_env(render())  # cluster-wide
    assert operator_env(render("namespaced"))["SIKED_OPERATOR_NAMESPACES"] == "team-a,team-b"
    off = render("metrics-off")
    assert operator_env(off)["SIKED_OPERATOR_METRICS_PORT"] == "0"
    assert [p["name"] for p in container(off)["ports"]] == ["healthz"]


# --- metrics, ServiceMonitor, dashboard -----------------------------------------------------------


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_monitor():
    objects = render("servicemonitor")
    service, monitor = the(objects, "Service"), the(objects, "ServiceMonitor")
    pod_labels = the(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], pod_labels)
    assert service["spec"]["ports"][0]["targetPort"] in [p["name"] for p in container(objects)["ports"]]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True  # keeps the runs' own `namespace` label
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap():
    dashboard = (CHART / "dashboards" / "siked.json").read_text()
    default = the(render(), "ConfigMap")
    assert default["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert default["metadata"]["namespace"] == NAMESPACE
    assert json.loads(default["data"]["siked.json"]) == json.loads(dashboard)
    configured = the(render("configured"), "ConfigMap")
    assert configured["metadata"]["labels"]["grafana_dashboard_siked"] == "yes"
    assert configured["metadata"]["namespace"] == "monitoring"


def test_prometheus_rule_passes_promtool_and_fires(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        assert not os.environ.get("CI"), "CI installs promtool (.ci/run: apt-get install prometheus)"
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rule = the(render("prometheusrule"), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0 and "SUCCESS: 4 rules found" in checked.stdout, checked.stdout + checked.stderr
    # Each alert fires on the series the operator exports, and not before its threshold (the annotations'
    # templates are checked above; here only the expressions, thresholds and labels).
    bare = copy.deepcopy(rule["spec"])
    for group in bare["groups"]:
        for r in group["rules"]:
            r.pop("annotations")
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(bare))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": [str(tmp_path / "bare.yaml")],
                                                        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [
            {"series": 'siked_run_phase{namespace="ml",run="r1",phase="Failed"}', "values": "0 0 1 1"},
            {"series": 'siked_run_pending_seconds{namespace="ml",run="r2"}', "values": "0+600x5"},
            {"series": 'siked_reconcile_errors_total{kind="storage"}', "values": "0+2x20"},
            {"series": 'siked_run_storage_unavailable{namespace="ml",run="r3"}', "values": "1x20"},
        ], "alert_rule_test": [
            {"eval_time": "1m", "alertname": "SikedRunFailed", "exp_alerts": []},
            {"eval_time": "3m", "alertname": "SikedRunFailed",
             "exp_alerts": [{"exp_labels": {"namespace": "ml", "run": "r1", "severity": "warning"}}]},
            {"eval_time": "2m", "alertname": "SikedStagePendingTooLong", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "SikedStagePendingTooLong",
             "exp_alerts": [{"exp_labels": {"namespace": "ml", "run": "r2", "severity": "warning"}}]},
            {"eval_time": "16m", "alertname": "SikedOperatorErrors", "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
            {"eval_time": "5m", "alertname": "SikedStorageUnavailable", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "SikedStorageUnavailable",
             "exp_alerts": [{"exp_labels": {"namespace": "ml", "run": "r3", "severity": "warning"}}]},
        ]}]}))
    tested = subprocess.run([promtool, "test", "rules", str(tmp_path / "test.yaml")], capture_output=True, text=True,
                            check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# --- RBAC against the calls the operator makes ----------------------------------------------------


@dataclass(frozen=True)
class Attributes:
    """What kube-apiserver's authorizer sees of a request."""

    verb: str
    group: str
    resource: str          # with its subresource: distillationruns/status
    namespace: str | None  # None: a cluster-scoped resource or a request across all namespaces


def attributes(method: str, path: str, watch: bool) -> Attributes | None:
    """A request as kube-apiserver's RequestInfo reads it; None for discovery, which every user may read."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        assert parts[0] in ("api", "apis", "version"), f"{method} {path}: not a Kubernetes API path"
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource += "/" + rest[2]
    if method == "GET":
        verb = "watch" if watch else "get" if name else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}[method]
    return Attributes(verb, group, resource, namespace)


@dataclass(frozen=True)
class Grant:
    """One rule of a role bound to the operator, and where it applies (None: cluster-wide)."""

    namespace: str | None
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def allows(self, a: Attributes) -> bool:
        return (self.namespace is None or self.namespace == a.namespace) and a.group in self.groups \
            and a.resource in self.resources and a.verb in self.verbs

    def triples(self) -> Iterable[tuple[str, str, str]]:
        return product(self.groups, self.resources, self.verbs)


def grants(objects: list[dict[str, Any]]) -> list[Grant]:
    """The rules the operator's ServiceAccount gets through the chart's bindings."""
    pod = the(objects, "Deployment")["spec"]["template"]["spec"]
    subject = {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o["rules"]
             for o in objects if o["kind"] in ("ClusterRole", "Role")}
    out = []
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert subject in binding["subjects"], binding["metadata"]
        ref, where = binding["roleRef"], binding["metadata"].get("namespace")
        for rule in roles[(ref["kind"], where if ref["kind"] == "Role" else None, ref["name"])]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no wildcards' cousins
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
            out.append(Grant(where, tuple(rule["apiGroups"]), tuple(rule["resources"]), tuple(rule["verbs"])))
    return out


OPERATOR_TOKEN = "siked-operator"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def first_teacher_attempt_fails(job: dict[str, Any]) -> kt.Simulated:
    labels = job["metadata"]["labels"]
    if labels["siked.io/stage"] == "teacher" and labels["siked.io/attempt"] == "0":
        return kt.Simulated(exit_code=1, message='{"error": "ConnectionError: teacher endpoint reset"}', seconds=0.1)
    return kt.Simulated(seconds=0.1)


def record_operator_calls(objects: list[dict[str, Any]], s3_server: str, workdir: Path) -> set[Attributes]:
    """Runs the operator with the Deployment's settings through everything it does to a run; its calls.

    One run trained on two nodes with a failing first attempt (the failed pod is read), a TTL (finished
    Jobs deleted), then a run deleted while its Jobs run (the finalizer, listing and deleting its Jobs).
    Stages are simulated.
    """
    import boto3

    bucket = f"siked-rbac-{uuid.uuid4().hex[:8]}"
    boto3.session.Session().client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    smoke = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())
    (workdir / "node").mkdir()
    with kt.EmulatorServer() as server:
        api = kt.Api(server.url)
        api.create_secret("siked-storage", CREDENTIALS)
        kubeconfig = kt.write_kubeconfig(workdir / "kubeconfig", server.url, token=OPERATOR_TOKEN)
        kubelet = kt.SimulatedKubelet(api, workdir / "node", simulate=first_teacher_attempt_fails)
        operator = kt.OperatorProcess(kubeconfig, workdir, scope=[], env=operator_env(objects), args=[
            "--storage-uri", f"s3://{bucket}/runs", "--s3-endpoint", s3_server, "--storage-secret", "siked-storage",
            "--metrics-port", "0", "--liveness-port", "0", "--poll-interval", "0.5", "--retry-backoff", "0.5"])
        with kubelet, operator:
            # Trained on two nodes: its train Jobs get a headless Service each.
            training = {**smoke["spec"]["training"], "distributed": {"strategy": "ddp", "nodes": 2}}
            api.create_run({**smoke, "spec": {**smoke["spec"], "ttlSecondsAfterFinished": 1, "training": training}})
            kt.wait_for(lambda: (api.run("smoke").get("status") or {}).get("phase") == "Succeeded", 90,
                        "the run to succeed")
            kt.wait_for(lambda: not api.jobs("smoke"), 30, "finished Jobs to go after their TTL")
            deleted = {**smoke["spec"], "storage": {"deleteOnRunDeletion": True}}
            api.create_run({**smoke, "metadata": {"name": "deleted"}, "spec": deleted})
            kt.wait_for(lambda: api.jobs("deleted"), 30, "the second run's Jobs")
            api.delete_run("deleted")
            kt.wait_for(lambda: api.run("deleted") is None, 30, "the finalizer to let the run go")
            # A Job of a stage's name that is not the run's: the operator reads it to say whose it is.
            api.create("/apis/batch/v1/namespaces/default/jobs", {
                "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "taken-teacher"},
                "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                    {"name": "x", "image": "busybox"}]}}}})
            api.create_run({**smoke, "metadata": {"name": "taken"}})
            kt.wait_for(lambda: any(e["reason"] == "JobConflict" for e in api.events("taken")), 30, "JobConflict")
            kt.wait_for(lambda: any(e["reason"] == "Finished" for e in api.events("smoke")), 30, "the events")
            if operator_env(objects).get("SIKED_OPERATOR_LEADER_ELECTION") == "true":
                lease = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/siked-operator"
                acquired = api.get(lease)["spec"]["renewTime"]
                kt.wait_for(lambda: api.get(lease)["spec"]["renewTime"] != acquired, 30, "the Lease to be renewed")
        calls = server.calls(OPERATOR_TOKEN)
    assert calls, "no request carried the operator's token"
    return {a for call in calls if (a := attributes(*call)) is not None}


@pytest.mark.integration
@pytest.mark.parametrize("variant", ["default", "namespaced-default"])
def test_rbac_allows_exactly_what_the_operator_calls(variant, s3_server, tmp_path):
    values = ["--set", "watchNamespaces={default}"] if variant == "namespaced-default" else []
    objects = [doc for doc in yaml.safe_load_all(
        helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values)) if doc]
    rules = grants(objects)
    started = time.monotonic()
    calls = record_operator_calls(objects, s3_server, tmp_path)
    print(f"{variant}: recorded in {time.monotonic() - started:.1f}s")
    for call in sorted(calls, key=str):
        print(f"  {call.verb:6} {call.group or 'core'}/{call.resource} in {call.namespace or '(cluster)'}")

    denied = [c for c in calls if not any(g.allows(c) for g in rules)]
    assert denied == [], "calls the chart's RBAC would forbid"
    unused = [(g.namespace, *t) for g in rules for t in g.triples()
              if not any(g.allows(c) and (c.group, c.resource, c.verb) == t for c in calls)]
    assert unused == [], "rules the operator never needed"
