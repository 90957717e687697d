"""The operator as in production, against a Kubernetes API over HTTP (see tests/k8s_tools.py).

Each test gets an API emulator, a moto S3 bucket, a simulated kubelet that runs
every Job the operator creates, and `siked-operator` as a real process. The
end-to-end test applies examples/smoke.yaml with the real kubectl and runs the
real stage entrypoint for every Job. The fault tests simulate the stage
containers (`Simulated`: a duration, an exit code, a termination message) because
they are about what the operator does with a Job's outcome, not about the stage.

    pytest tests/test_operator_e2e.py -m integration
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import k8s_tools as kt

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())
SMOKE_JOBS = {"smoke-teacher", "smoke-baseline", "smoke-it0-train", "smoke-it0-eval", "smoke-it1-sample",
              "smoke-it1-train", "smoke-it1-eval", "smoke-export"}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class K8s:
    server: kt.EmulatorServer
    api: kt.Api
    kubeconfig: Path
    kubelet: kt.SimulatedKubelet
    operator: kt.OperatorProcess
    bucket: str
    endpoint: str
    metrics_port: int
    liveness_port: int

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([kt.kubectl(), *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                                check=False, env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        try:
            return kt.wait_for(predicate, timeout, what)
        except TimeoutError as exc:
            runs = json.dumps([r.get("status") for r in self.api.runs()], indent=1)[-4000:]
            raise AssertionError(f"{exc}\nruns' status: {runs}\noperator log:\n{self.operator.logs()[-6000:]}")

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait(lambda: (run := self.api.run(name)) and (run.get("status") or {}).get("phase") == phase
                         and run, f"run {name} to be {phase}", timeout)

    def job_names(self, run: str = "smoke") -> set[str]:
        return {j["metadata"]["name"] for j in self.api.jobs(run)}

    def store(self, run: str = "smoke"):
        from siked_runtime.storage import open_store

        return open_store(f"s3://{self.bucket}/runs/default/{run}", endpoint_url=self.endpoint)


@pytest.fixture
def k8s(s3_server: str, tmp_path: Path):
    import boto3

    bucket = f"siked-e2e-{uuid.uuid4().hex[:8]}"
    boto3.session.Session().client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    (tmp_path / "node").mkdir()
    (tmp_path / "home").mkdir()
    metrics_port, liveness_port = kt.free_port(), kt.free_port()
    with kt.cluster(tmp_path) as (server, api, kubeconfig):
        api.create_secret("siked-storage", CREDENTIALS)
        # What the stage image provides: the siked command, and no network for model hubs.
        image = {"PATH": f"{kt.VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
                 "TOKENIZERS_PARALLELISM": "false"}
        kubelet = kt.SimulatedKubelet(api, tmp_path / "node", env=image)
        operator = kt.OperatorProcess(kubeconfig, tmp_path, args=[
            "--storage-uri", f"s3://{bucket}/runs", "--s3-endpoint", s3_server, "--storage-secret", "siked-storage",
            "--metrics-port", str(metrics_port), "--liveness-port", str(liveness_port),
            "--poll-interval", "0.5", "--retry-backoff", "1",
        ])
        with kubelet, operator:
            yield K8s(server, api, kubeconfig, kubelet, operator, bucket, s3_server, metrics_port, liveness_port)


def smoke(**spec_changes: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(SMOKE)
    manifest["spec"].update(spec_changes)
    return manifest


def attempt(job: dict[str, Any]) -> int:
    return int(job["metadata"]["labels"]["siked.io/attempt"])


def stage_of(job: dict[str, Any]) -> str:
    labels = job["metadata"]["labels"]
    it = labels.get("siked.io/iteration")
    return labels["siked.io/stage"] + (f"[{it}]" if it is not None else "")


def failing(stage: str, error: str, exit_code: int = 1) -> kt.Simulated:
    """A stage container that fails the way the real entrypoint does: a JSON summary, an exit code."""
    summary = {"stage": stage, "status": "failed", "retryable": exit_code != 2, "exit_code": exit_code,
               "error": error}
    return kt.Simulated(exit_code=exit_code, message=json.dumps(summary), seconds=0.2)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


# --- the real thing -------------------------------------------------------------------------------


def test_smoke_run_end_to_end(k8s: K8s):
    k8s.kubectl("apply", "--validate=false", "-f", "crds/distillationrun.yaml")
    k8s.kubectl("apply", "--validate=false", "-f", "examples/smoke.yaml")
    run = k8s.wait_phase("smoke", "Succeeded", timeout=600)
    status = run["status"]

    assert status["progress"] == "8/8" and status["iteration"] == 1 and status["stage"] == "export"
    assert status["runUri"] == f"s3://{k8s.bucket}/runs/default/smoke"
    assert status["bestIteration"] in (0, 1)
    assert status["modelUri"] == f"{status['runUri']}/final/model"
    assert set(status["baseline"]) == {"validation", "synthetic-test"}
    assert [r["iteration"] for r in status["results"]] == [0, 1]
    for r in status["results"]:
        assert set(r["accuracy"]) == {"validation", "synthetic-test"}
        assert all(0 <= v <= 1 for v in r["accuracy"].values())
        assert set(r["strategyShares"]) <= {"cot", "l2m", "pot"}
        assert r["modelUri"].startswith(f"{status['runUri']}/iter-00{r['iteration']}/train/")
        assert r["rows"] == r["teacherRows"] + r["selfRows"] > 0
    assert "alpha" in status["results"][1] and "samples" in status["results"][1]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "SpecValid": "True", "Progressing": "False", "Complete": "True"}
    assert all(s["phase"] == "Succeeded" and s["attempts"] == 1 for s in status["stages"])

    # One Job per stage, each created once; the real entrypoint left its summary as the termination message.
    assert k8s.job_names() == SMOKE_JOBS
    assert set(k8s.server.creations("jobs").values()) == {1}
    pods = k8s.api.items("/api/v1/namespaces/default/pods")
    summaries = [json.loads(p["status"]["containerStatuses"][0]["state"]["terminated"]["message"]) for p in pods]
    assert sorted(s["stage"] for s in summaries) == sorted(
        ["teacher", "baseline", "train", "eval", "sample", "train", "eval", "export"])
    assert all(s["status"] == "succeeded" for s in summaries)

    # Kubernetes events per stage, and the finish (kopf posts events in the background).
    k8s.wait(lambda: any(e["reason"] == "Finished" for e in k8s.api.events("smoke")), "the Finished event")
    events = Counter((e["reason"], e["message"].split(" ")[0]) for e in k8s.api.events("smoke"))
    for name in ("teacher", "baseline", "train[0]", "eval[0]", "sample[1]", "train[1]", "eval[1]", "export"):
        assert events[("StageStarted", name)] == 1 and events[("StageSucceeded", name)] == 1, name
    assert events[("Finished", "all")] == 1

    # What kubectl shows: the CRD's printer columns.
    table = k8s.kubectl("get", "dr").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "ITERATION", "STAGE", "BEST", "AGE"]
    assert table[1].split()[:5] == ["smoke", "Succeeded", "1", "export", str(status["bestIteration"])]

    # Artifacts stay in storage; the resolved spec is saved with them.
    store = k8s.store()
    assert yaml.safe_load(store.get_text("spec.yaml"))["spec"]["student"]["model"] == "builtin:tiny-random"
    assert store.exists("final/manifest.json")

    # Metrics and liveness.
    code, text = get(f"http://127.0.0.1:{k8s.metrics_port}/metrics")
    assert code == 200
    assert 'siked_runs{phase="Succeeded"} 1.0' in text
    assert 'siked_run_accuracy{dataset="validation",iteration="1",namespace="default",run="smoke"}' in text
    assert 'siked_stage_jobs_created_total{stage="train"} 2.0' in text
    assert get(f"http://127.0.0.1:{k8s.liveness_port}/healthz")[0] == 200


def test_examples_survive_kubectl(k8s: K8s):
    """What kubectl sends is what we wrote (YAML 1.1 reads a bare `n` as false, for one)."""
    crd = yaml.safe_load((REPO / "crds" / "distillationrun.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for example in ("examples/smoke.yaml", "examples/gpu-cluster.yaml"):
        sent = json.loads(k8s.kubectl("create", "--dry-run=client", "--validate=false", "-o", "json",
                                      "-f", example).stdout)
        assert sent["spec"] == yaml.safe_load((REPO / example).read_text())["spec"], example
        assert kt.pruned(sent, schema) == [], example


# --- operator restarts ----------------------------------------------------------------------------


def test_operator_killed_during_each_stage(k8s: K8s):
    k8s.kubelet.simulate = lambda job: kt.Simulated(seconds=2.5)
    k8s.api.create_run(smoke())
    killed_during: set[str] = set()
    deadline = time.monotonic() + 180
    while (k8s.api.run("smoke").get("status") or {}).get("phase") != "Succeeded":
        assert time.monotonic() < deadline, f"run did not finish; killed during {killed_during}"
        for job in k8s.api.jobs("smoke"):
            status = job.get("status") or {}
            name = job["metadata"]["name"]
            if name not in killed_during and status.get("startTime") and not status.get("succeeded"):
                k8s.operator.restart()  # SIGKILL, then a fresh process
                killed_during.add(name)
        time.sleep(0.2)

    assert killed_during == SMOKE_JOBS
    assert k8s.job_names() == SMOKE_JOBS
    assert set(k8s.server.creations("jobs").values()) == {1}  # no Job created twice
    run = k8s.api.run("smoke")
    assert [r["iteration"] for r in run["status"]["results"]] == [0, 1]
    assert all(s["phase"] == "Succeeded" for s in run["status"]["stages"])


# --- failing Jobs ---------------------------------------------------------------------------------


def test_a_job_that_fails_twice_then_succeeds(k8s: K8s):
    def simulate(job):
        if stage_of(job) == "train[0]" and attempt(job) < 2:
            return failing("train", "RuntimeError: CUDA error: an illegal memory access was encountered")
        return kt.Simulated(seconds=0.2)

    k8s.kubelet.simulate = simulate
    k8s.api.create_run(smoke())
    run = k8s.wait_phase("smoke", "Succeeded", timeout=90)

    train0 = next(s for s in run["status"]["stages"] if s["name"] == "train[0]")
    assert train0["attempts"] == 3 and train0["failedJobs"] == ["smoke-it0-train", "smoke-it0-train-r1"]
    assert train0["lastFailure"]["exitCode"] == 1 and "illegal memory access" in train0["lastFailure"]["message"]
    assert {"smoke-it0-train", "smoke-it0-train-r1", "smoke-it0-train-r2"} <= k8s.job_names()
    assert set(k8s.server.creations("jobs").values()) == {1}
    retries = [e["message"] for e in k8s.api.events("smoke") if e["reason"] == "StageRetry"]
    assert len(retries) == 2 and all(m.startswith("train[0] attempt") for m in retries)


def test_a_job_that_always_fails_fails_the_run(k8s: K8s):
    def simulate(job):
        if stage_of(job) == "teacher":
            return failing("teacher", "StorageError: S3 request failed: 503 SlowDown")
        return kt.Simulated(seconds=120)  # the baseline, still running when the run fails

    k8s.kubelet.simulate = simulate
    k8s.api.create_run(smoke(backoffLimit=2))
    run = k8s.wait_phase("smoke", "Failed", timeout=60)

    failed = next(c for c in run["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "teacher failed 3 time(s)" in failed["message"] and "503 SlowDown" in failed["message"]
    # Three attempts, then the run's other Jobs are stopped and nothing else starts.
    k8s.wait(lambda: k8s.job_names() == {"smoke-teacher", "smoke-teacher-r1", "smoke-teacher-r2"},
             "the baseline Job to be deleted")
    time.sleep(2)
    assert k8s.job_names() == {"smoke-teacher", "smoke-teacher-r1", "smoke-teacher-r2"}
    assert any(e["reason"] == "BackoffLimitExceeded" for e in k8s.api.events("smoke"))


def test_a_permanent_failure_is_not_retried(k8s: K8s):
    k8s.kubelet.simulate = lambda job: (failing("teacher", "FileNotFoundError: s3://data/train.jsonl", exit_code=2)
                                        if stage_of(job) == "teacher" else kt.Simulated(seconds=0.2))
    k8s.api.create_run(smoke())
    run = k8s.wait_phase("smoke", "Failed", timeout=60)
    failed = next(c for c in run["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "StageFailed" and "train.jsonl" in failed["message"]
    time.sleep(2)
    assert "smoke-teacher-r1" not in k8s.job_names()


# --- invalid specs --------------------------------------------------------------------------------


# What the CRD's schema can say, the API server refuses; the rest the operator reports on the run.
REFUSED_BY_THE_SERVER = {
    "no-student": ({"student": None}, "spec: Invalid value: 'student' is a required property"),
    "bad-alpha": ({"mixing": {"policy": "alpha", "alphaSchedule": [0.5, 1.4]}}, "spec.mixing.alphaSchedule.1"),
    "bad-queue": ({"resources": {"default": {"queueName": "team a"}}}, "spec.resources.default.queueName"),
}
INVALID = {
    "no-schedule": ({"mixing": {"policy": "alpha"}}, "spec.mixing.alphaSchedule: is required"),
    "bad-storage": ({"storage": {"uri": "ftp://example.com/runs"}}, "spec.storage.uri"),
}


def test_invalid_specs_are_refused_by_the_server_or_get_a_condition_and_no_jobs(k8s: K8s):
    k8s.kubelet.simulate = lambda job: kt.Simulated(seconds=0.2)
    for name, (changes, expected) in REFUSED_BY_THE_SERVER.items():
        manifest = smoke(**changes)
        manifest["spec"] = {k: v for k, v in manifest["spec"].items() if v is not None}
        manifest["metadata"]["name"] = name
        with pytest.raises(RuntimeError, match="422") as refused:
            k8s.api.create_run(manifest)
        assert expected in str(refused.value), str(refused.value)
    # An unknown field is pruned by the server, as with any structural schema.
    typo = smoke(iteration={"max": 2})
    typo["metadata"]["name"] = "typo"
    k8s.api.create_run(typo)
    assert "iteration" not in k8s.api.run("typo")["spec"]
    k8s.api.delete_run("typo")

    for name, (changes, _) in INVALID.items():
        manifest = smoke(**changes)
        manifest["metadata"]["name"] = name
        k8s.api.create_run(manifest)
    for name, (_, expected) in INVALID.items():
        run = k8s.wait_phase(name, "Failed", timeout=30)
        valid = next(c for c in run["status"]["conditions"] if c["type"] == "SpecValid")
        assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
        assert expected in valid["message"], valid["message"]
        k8s.wait(lambda: any(e["reason"] == "InvalidSpec" for e in k8s.api.events(name)),
                 f"an InvalidSpec event for {name}")
    time.sleep(2)
    assert k8s.api.jobs() == []

    # Fixing the spec starts the run.
    k8s.api.patch_run("no-schedule", {"spec": {"mixing": {"alphaSchedule": [0.5]}}})
    k8s.wait(lambda: k8s.job_names("no-schedule"), "the fixed run's first Jobs")
    k8s.wait_phase("no-schedule", "Succeeded", timeout=60)


# --- suspend, deletion, deadline, TTL -------------------------------------------------------------


def test_suspend_mid_stage_deletes_the_job_and_resume_completes(k8s: K8s):
    pods = Counter()

    def simulate(job):
        pods[job["metadata"]["name"]] += 1
        long = job["metadata"]["name"] == "smoke-it0-train" and pods["smoke-it0-train"] == 1
        return kt.Simulated(seconds=120 if long else 0.2)

    k8s.kubelet.simulate = simulate
    k8s.api.create_run(smoke())
    k8s.wait(lambda: "smoke-it0-train" in k8s.kubelet.started, "train[0] to run")
    k8s.api.patch_run("smoke", {"spec": {"suspend": True}})
    run = k8s.wait_phase("smoke", "Suspended", timeout=30)
    assert next(c for c in run["status"]["conditions"] if c["type"] == "Suspended")["status"] == "True"

    # The running stage's Job is deleted (its GPUs freed); nothing new starts.
    k8s.wait(lambda: "smoke-it0-train" not in k8s.job_names(), "the running Job to be deleted")
    before = k8s.job_names()
    time.sleep(1.5)
    assert k8s.job_names() == before and k8s.api.run("smoke")["status"]["phase"] == "Suspended"

    k8s.api.patch_run("smoke", {"spec": {"suspend": False}})
    run = k8s.wait_phase("smoke", "Succeeded", timeout=60)
    assert next(c for c in run["status"]["conditions"] if c["type"] == "Suspended")["status"] == "False"
    train0 = next(s for s in run["status"]["stages"] if s["name"] == "train[0]")
    assert "failedJobs" not in train0  # a suspension is not a failure
    assert k8s.server.creations("jobs")[("default", "smoke-it0-train")] == 2 and pods["smoke-it0-train"] == 2
    k8s.wait(lambda: {"Suspended", "Resumed"} <= {e["reason"] for e in k8s.api.events("smoke")},
             "the Suspended and Resumed events")


@pytest.mark.parametrize("delete_artifacts", [False, True])
def test_delete_mid_run(k8s: K8s, delete_artifacts: bool):
    k8s.kubelet.simulate = lambda job: kt.Simulated(seconds=120 if job["metadata"]["name"].endswith("-train")
                                                    else 0.2)
    k8s.api.create_run(smoke(storage={"deleteOnRunDeletion": delete_artifacts}))
    k8s.wait(lambda: any((j.get("status") or {}).get("startTime") for j in k8s.api.jobs("smoke")
                         if j["metadata"]["name"] == "smoke-it0-train"), "train[0] to run")

    k8s.kubectl("delete", "dr", "smoke", "--timeout=60s")  # waits for the finalizer
    assert k8s.api.run("smoke") is None
    assert k8s.api.jobs("smoke") == []
    store = k8s.store()
    if delete_artifacts:
        assert store.list() == []
    else:
        assert store.exists("spec.yaml") and store.exists("teacher/manifest.json")


def test_active_deadline_fails_the_run(k8s: K8s):
    k8s.kubelet.simulate = lambda job: kt.Simulated(seconds=120)
    k8s.api.create_run(smoke(activeDeadlineSeconds=3))
    k8s.wait(lambda: k8s.job_names(), "the first Jobs")
    assert all(j["spec"]["activeDeadlineSeconds"] <= 3 for j in k8s.api.jobs("smoke"))
    run = k8s.wait_phase("smoke", "Failed", timeout=30)
    assert next(c for c in run["status"]["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
    k8s.wait(lambda: not k8s.api.jobs("smoke"), "the run's Jobs to be deleted")


def test_finished_jobs_go_after_their_ttl_and_attempts_are_remembered(k8s: K8s):
    def simulate(job):
        if stage_of(job) == "teacher" and attempt(job) == 0:
            return failing("teacher", "ConnectionError: teacher endpoint reset the connection")
        return kt.Simulated(seconds=0.3)

    k8s.kubelet.simulate = simulate
    k8s.api.create_run(smoke(ttlSecondsAfterFinished=1))
    run = k8s.wait_phase("smoke", "Succeeded", timeout=90)
    k8s.wait(lambda: not k8s.api.jobs("smoke"), "finished Jobs to be deleted")
    teacher = next(s for s in k8s.api.run("smoke")["status"]["stages"] if s["name"] == "teacher")
    assert teacher["attempts"] == 2 and teacher["failedJobs"] == ["smoke-teacher"], teacher
    assert run["status"]["phase"] == "Succeeded"
    assert set(k8s.server.creations("jobs")) >= {("default", "smoke-teacher"), ("default", "smoke-teacher-r1")}
