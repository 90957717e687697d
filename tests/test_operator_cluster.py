"""What a real cluster does to the operator: disruptions, pods that cannot start, Pod Security, Kueue,
deletion without the operator, two replicas, a storage outage, many unrelated Jobs.

Against the strict emulator of tests/k8s_tools.py (admission, pruning, label selectors, garbage
collection) with its simulated kubelet, Job controller and Kueue, `siked-operator` as a real process
and kubectl where a user would use it. Stage containers are simulated (`kt.Simulated`): these tests
are about what the cluster and the operator do with them.

    pytest tests/test_operator_cluster.py -m integration
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
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
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
RUNS = "/apis/siked.io/v1alpha1/namespaces/default/distillationruns"


class Outage:
    """A TCP proxy in front of S3 that can be switched off: going down cuts every open connection, and new ones
    are refused while it is down.

    Cutting is `shutdown`, not `close`: a socket closed while another thread is blocked reading it stays open
    until that read returns, so a reply dropped on its way back would leave the client waiting out its read
    timeout instead of seeing the outage.
    """

    def __init__(self, target: str):
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.down = threading.Event()
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def start(self) -> None:
        with self.lock:
            self.down.set()
            for s in self.open:
                _cut(s)

    def end(self) -> None:
        self.down.clear()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            if self.down.is_set():
                _cut(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _cut(client)
                continue
            with self.lock:
                if self.down.is_set():
                    _cut(client), _cut(upstream)
                    continue
                self.open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                if self.down.is_set():
                    break
                b.sendall(data)
        with self.lock:
            self.open -= {a, b}
        _cut(a), _cut(b)


def _cut(s: socket.socket) -> None:
    for step in (lambda: s.shutdown(socket.SHUT_RDWR), s.close):
        with contextlib.suppress(OSError):
            step()


@dataclass
class Cluster:
    server: kt.EmulatorServer
    api: kt.Api
    kubeconfig: Path
    kubelet: kt.SimulatedKubelet
    operators: list[kt.OperatorProcess]
    bucket: str
    endpoint: str

    def kubectl(self, *args: str) -> str:
        result = subprocess.run([kt.kubectl(), *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                                check=False, env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def wait(self, predicate: Any, what: str, timeout: float = 60) -> Any:
        try:
            return kt.wait_for(predicate, timeout, what)
        except TimeoutError as exc:
            status = [r.get("status") for r in self.api.runs()]
            logs = "\n".join(o.logs()[-3000:] for o in self.operators)
            raise AssertionError(f"{exc}\nruns' status: {str(status)[-3000:]}\noperator log:\n{logs}") from None

    def phase(self, name: str) -> str | None:
        run = self.api.run(name)
        return ((run or {}).get("status") or {}).get("phase")

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        self.wait(lambda: self.phase(name) == phase, f"run {name} to be {phase}", timeout)
        return self.api.run(name)

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        run = self.api.run(name) or {}
        return next((c for c in (run.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


@contextlib.contextmanager
def cluster(tmp_path: Path, s3_server: str, replicas: int = 1, endpoint: str | None = None,
            extra_args: tuple[str, ...] = ()) -> Iterator[Cluster]:
    import boto3

    bucket = f"siked-k8s-{uuid.uuid4().hex[:8]}"
    boto3.session.Session().client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    endpoint = endpoint or s3_server
    (tmp_path / "node").mkdir()
    with kt.cluster(tmp_path) as (server, api, kubeconfig):
        api.create_secret("siked-storage", CREDENTIALS)
        kubelet = kt.SimulatedKubelet(api, tmp_path / "node", simulate=lambda job: kt.Simulated(seconds=0.1))
        operators = []
        for i in range(replicas):
            (tmp_path / f"op{i}").mkdir()
            operators.append(kt.OperatorProcess(kubeconfig, tmp_path / f"op{i}", args=[
                "--storage-uri", f"s3://{bucket}/runs", "--s3-endpoint", endpoint, "--storage-secret",
                "siked-storage", "--metrics-port", "0", "--liveness-port", "0", "--poll-interval", "0.5",
                "--retry-backoff", "0.5", "--pending-check", "1", *(["--leader-election"] if replicas > 1 else []),
                *extra_args]))
        with kubelet, contextlib.ExitStack() as stack:
            for operator in operators:
                stack.enter_context(operator)
            yield Cluster(server, api, kubeconfig, kubelet, operators, bucket, endpoint)


def smoke(name: str = "smoke", **spec_changes: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(SMOKE)
    manifest["metadata"]["name"] = name
    manifest["spec"].update(spec_changes)
    return manifest


def stage_of(job: dict[str, Any]) -> str:
    labels = job["metadata"]["labels"]
    it = labels.get("siked.io/iteration")
    return labels["siked.io/stage"] + (f"[{it}]" if it is not None else "")


# --- failure semantics ----------------------------------------------------------------------------


def test_evictions_never_count_and_a_permanent_exit_fails_at_once(tmp_path, s3_server):
    pods = Counter()

    def simulate(job):
        name = job["metadata"]["name"]
        pods[name] += 1
        if name == "evicted-it0-train" and pods[name] <= 5:
            return kt.Simulated(seconds=0.2, evicted=True)  # a drain, a spot reclaim, a preemption
        if name == "broken-teacher":
            return kt.Simulated(exit_code=2, message='{"error": "FileNotFoundError: s3://data/train.jsonl"}')
        return kt.Simulated(seconds=0.1)

    with cluster(tmp_path, s3_server) as k8s:
        k8s.kubelet.simulate = simulate
        k8s.api.create_run(smoke("evicted", backoffLimit=1))
        k8s.api.create_run(smoke("broken", backoffLimit=3))
        run = k8s.wait_phase("evicted", "Succeeded", timeout=90)
        broken = k8s.wait_phase("broken", "Failed", timeout=30)
        creations = k8s.server.creations("jobs")

    # Five pods evicted, a sixth ran: all in the one Job, whose podFailurePolicy ignored the evictions.
    assert pods["evicted-it0-train"] == 6
    train0 = next(s for s in run["status"]["stages"] if s["name"] == "train[0]")
    assert train0["attempts"] == 1 and "failedJobs" not in train0
    assert creations[("default", "evicted-it0-train")] == 1
    # Exit code 2 matched the FailJob rule: the Job failed after one pod, and the run without a retry.
    failed = next(c for c in broken["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "StageFailed" and "train.jsonl" in failed["message"]
    assert pods["broken-teacher"] == 1 and ("default", "broken-teacher-r1") not in creations


def test_kueue_admits_preempts_and_readmits_without_counting_a_failure(tmp_path, s3_server):
    with cluster(tmp_path, s3_server) as k8s:
        k8s.kubelet.kueue_admit_seconds = 0.5
        k8s.kubelet.simulate = lambda job: kt.Simulated(seconds=3 if stage_of(job) == "train[0]" else 0.1)
        k8s.api.create_run(smoke("queued", resources={"default": {"queueName": "research"}}))
        k8s.wait(lambda: k8s.condition("queued", "Progressing").get("reason") == "JobQueued", "JobQueued")
        k8s.wait(lambda: "queued-it0-train" in k8s.kubelet.started, "train[0] to be admitted and run")
        k8s.kubelet.preempt("default", "queued-it0-train")
        k8s.wait(lambda: k8s.condition("queued", "Progressing").get("reason") == "JobQueued",
                 "the preempted Job to show as queued")
        run = k8s.wait_phase("queued", "Succeeded", timeout=90)
        jobs = k8s.api.jobs("queued")

    assert k8s.kubelet.started.count("queued-it0-train") == 2  # ran, was preempted, ran again
    train0 = next(s for s in run["status"]["stages"] if s["name"] == "train[0]")
    assert train0["attempts"] == 1 and "failedJobs" not in train0
    assert len(jobs) == 8 and all(j["spec"]["suspend"] is False for j in jobs)  # created suspended, admitted


# --- pods that cannot start -----------------------------------------------------------------------


def test_pods_that_cannot_start_say_why_and_the_pending_deadline_fails_the_run(tmp_path, s3_server):
    with cluster(tmp_path, s3_server) as k8s:
        k8s.kubelet.missing_images = {"registry.example/siked:typo"}
        k8s.api.create_run(smoke("gpu", resources={"default": {"nodeSelector": {"nvidia.com/gpu.present": "true"}}}))
        k8s.api.create_run(smoke("image", image="registry.example/siked:typo", pendingDeadlineSeconds=4))
        k8s.api.create_run(smoke("secret", storage={"secretRef": "no-such-secret"}))
        for name, reason, says in (("gpu", "Unschedulable", "didn't match Pod's node affinity/selector"),
                                   ("image", "ImagePullFailed", "ImagePullBackOff"),
                                   ("secret", "ContainerConfigError", 'secret "no-such-secret" not found')):
            k8s.wait(lambda name=name, reason=reason: k8s.condition(name, "Progressing").get("reason") == reason,
                     f"{name}: {reason}", timeout=20)
            described = k8s.kubectl("describe", "dr", name)
            assert reason in described and says in described, described
        events = Counter(e["reason"] for e in k8s.api.events("gpu"))
        assert events["Unschedulable"] == 1  # one event, however many passes saw it

        run = k8s.wait_phase("image", "Failed", timeout=30)
        failed = next(c for c in run["status"]["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "PendingDeadlineExceeded" and "ImagePullBackOff" in failed["message"]
        k8s.wait(lambda: not k8s.api.jobs("image"), "the pending Jobs to be deleted")

        # A Secret that appears lets the waiting pod start.
        k8s.api.create_secret("no-such-secret", CREDENTIALS)
        k8s.wait_phase("secret", "Succeeded", timeout=60)


# --- names, labels, Pod Security ------------------------------------------------------------------


def test_a_long_dotted_run_name_completes_in_a_restricted_namespace(tmp_path, s3_server):
    name = "exp.2026-12.gsm8k-qwen2.5-1.5b-instruct.lora-r16.alpha-schedule-a"
    assert len(name) > 60
    with cluster(tmp_path, s3_server) as k8s:
        k8s.api.patch("/api/v1/namespaces/default",
                      {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        k8s.api.create_run(smoke(name))
        run = k8s.wait_phase(name, "Succeeded", timeout=90)
        jobs = k8s.api.jobs()
        # The harness does refuse pods that break the profile.
        pod = copy.deepcopy(jobs[0]["spec"]["template"])
        pod["spec"]["securityContext"] = {}
        with pytest.raises(RuntimeError, match="403.*PodSecurity"):
            k8s.api.create("/api/v1/namespaces/default/pods", {"apiVersion": "v1", "kind": "Pod",
                                                               "metadata": {"name": "root-pod"}, **pod})
    assert k8s.kubelet.refused == []  # every stage pod passed admission, Pod Security included
    assert len(jobs) == 8 and all(len(j["metadata"]["name"]) <= 63 for j in jobs)
    assert {j["metadata"]["annotations"]["siked.io/run-name"] for j in jobs} == {name}
    assert run["status"]["progress"] == "8/8"


def test_an_invalid_queue_name_is_refused_by_siked_validate_and_the_crd(tmp_path, s3_server):
    manifest = smoke("queue", resources={"default": {"queueName": "research queue"}})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    siked = Path(sys.executable).parent / "siked"
    result = subprocess.run([str(siked), "validate", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "spec.resources.default.queueName: must be a label value" in result.stderr + \
        result.stdout
    with cluster(tmp_path, s3_server) as k8s, pytest.raises(RuntimeError, match="422.*queueName"):
        k8s.api.create_run(manifest)


# --- deletion and identity ------------------------------------------------------------------------


@pytest.mark.parametrize("delete_artifacts", [False, True])
def test_delete_with_the_operator_stopped(tmp_path, s3_server, delete_artifacts):
    with cluster(tmp_path, s3_server) as k8s:
        k8s.kubelet.simulate = lambda job: kt.Simulated(seconds=120 if stage_of(job) == "train[0]" else 0.1)
        k8s.api.create_run(smoke(storage={"deleteOnRunDeletion": delete_artifacts}))
        k8s.wait(lambda: "smoke-it0-train" in k8s.kubelet.started, "train[0] to run")
        finalizers = k8s.api.run("smoke")["metadata"].get("finalizers") or []
        assert finalizers == (["siked.io/finalizer"] if delete_artifacts else [])
        k8s.operators[0].kill()
        k8s.api.delete_run("smoke")
        if delete_artifacts:
            # Held by the finalizer until an operator deletes the artifacts.
            time.sleep(1)
            assert k8s.api.run("smoke") is not None
            k8s.operators[0].start()
        k8s.wait(lambda: k8s.api.run("smoke") is None, "the run to go", timeout=30)
        k8s.wait(lambda: not k8s.api.jobs() and not k8s.api.items("/api/v1/namespaces/default/pods"),
                 "its Jobs and pods to be garbage-collected")
        from siked_runtime.storage import open_store

        store = open_store(f"s3://{k8s.bucket}/runs/default/smoke", endpoint_url=k8s.endpoint)
        assert store.exists("spec.yaml") != delete_artifacts

        if not delete_artifacts:
            # The same name again is another run: it does not silently reuse the old run's artifacts.
            k8s.operators[0].start()
            k8s.api.create_run(smoke())
            run = k8s.wait_phase("smoke", "Failed", timeout=30)
            valid = next(c for c in run["status"]["conditions"] if c["type"] == "SpecValid")
            assert valid["reason"] == "StorageInUse" and "earlier run named smoke" in valid["message"]


# --- two replicas ---------------------------------------------------------------------------------


def test_two_replicas_one_active(tmp_path, s3_server):
    with cluster(tmp_path, s3_server, replicas=2) as k8s:
        for i in range(3):
            k8s.api.create_run(smoke(f"run-{i}"))
        for i in range(3):
            k8s.wait_phase(f"run-{i}", "Succeeded", timeout=90)
        lease = k8s.api.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/siked-operator")
        holder = lease["spec"]["holderIdentity"]
        # The active replica dies; the other takes over and drives a new run.
        active = next(o for o in k8s.operators if str(o.process.pid) in holder)
        active.kill()
        k8s.api.create_run(smoke("after-failover"))
        k8s.wait_phase("after-failover", "Succeeded", timeout=90)
        creations = k8s.server.creations("jobs")
    assert set(creations.values()) == {1}  # every Job created exactly once
    assert len(creations) == 4 * 8


# --- a storage outage -----------------------------------------------------------------------------

OUTAGE_SECONDS = 120


def test_storage_outage_backs_off_and_the_run_completes(tmp_path, s3_server):
    """The operator loses S3 for two minutes; train[0], running on a node that still reaches it, finishes then."""
    from siked_runtime.storage import open_store, publish

    outage = Outage(s3_server)

    def simulate(job):
        if stage_of(job) != "train[0]":
            return kt.Simulated(seconds=0.1)
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        store = open_store(args[args.index("--run-uri") + 1], endpoint_url=s3_server)  # not through the outage
        manifest = {"stage": "train", "iteration": 0, **kt.fake_manifest("train", 0), "duration_seconds": 1.0}
        threading.Timer(25, publish, args=(store, "iter-000/train", manifest)).start()
        return kt.Simulated(seconds=26, publish=False)

    with cluster(tmp_path, s3_server, endpoint=outage.url, extra_args=("--outage-backoff-max", "8")) as k8s:
        k8s.kubelet.simulate = simulate
        k8s.api.create_run(smoke())
        k8s.wait(lambda: "smoke-it0-train" in k8s.kubelet.started, "train[0] to run")
        events_before = len(k8s.api.events("smoke"))
        patches_before = k8s.server.count("PATCH", f"{RUNS}/smoke/status")
        outage.start()
        k8s.wait(lambda: k8s.condition("smoke", "Progressing").get("reason") == "StorageUnavailable",
                 "the outage to show", timeout=60)
        time.sleep(OUTAGE_SECONDS - 30)
        events = [e["reason"] for e in k8s.api.events("smoke")][events_before:]
        patches = k8s.server.count("PATCH", f"{RUNS}/smoke/status") - patches_before
        outage.end()
        run = k8s.wait_phase("smoke", "Succeeded", timeout=90)
    print(f"during a {OUTAGE_SECONDS}s outage: {len(events)} events ({Counter(events)}), {patches} status patches")
    assert events.count("StorageUnavailable") == 1 and len(events) < 10 and patches < 30
    assert run["status"]["progress"] == "8/8"


# --- memory with unrelated Jobs -------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_unrelated_jobs_do_not_grow_the_operator(tmp_path, s3_server):
    """The operator's RSS after a restart and a run, without and then with 2,000 Jobs that are not siked's."""
    unrelated = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"labels": {"app": "someone-else"}},
                 "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                     {"name": "main", "image": "busybox", "command": ["true"], "env": [
                         {"name": f"PADDING_{i}", "value": "x" * 200} for i in range(10)]}]}}}}

    def settled_rss(k8s: Cluster) -> float:
        # A fresh process lists (and would keep) everything it watches; the same runs exist both times, as
        # the operator's memory steps with the runs it drives at once (its worker threads).
        k8s.operators[0].restart()
        time.sleep(4)
        return _rss_mb(k8s.operators[0].process.pid)

    with cluster(tmp_path, s3_server) as k8s:
        k8s.api.create_run(smoke("first"))
        k8s.wait_phase("first", "Succeeded", timeout=60)
        before = settled_rss(k8s)
        for i in range(2000):
            k8s.api.create("/apis/batch/v1/namespaces/default/jobs",
                           {**unrelated, "metadata": {**unrelated["metadata"], "name": f"other-{i}"}})
        after = settled_rss(k8s)
        k8s.api.create_run(smoke("second"))  # and it still works
        k8s.wait_phase("second", "Succeeded", timeout=60)
    print(f"operator RSS: {before:.1f} MB without, {after:.1f} MB with 2,000 unrelated Jobs")
    assert after <= before * 1.10
