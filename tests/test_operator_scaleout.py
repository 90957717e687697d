"""Scale-out on the strict emulator: sharded stages and multi-node training as Indexed Jobs.

The real operator, the real stage entrypoint in every pod, and the simulated kubelet playing the
Job controller for Indexed Jobs (tests/k8s_tools.py). Fixtures come from test_operator_e2e.py.

    pytest tests/test_operator_scaleout.py -m integration
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import k8s_tools as kt  # noqa: E402
from test_operator_e2e import K8s, k8s, smoke  # noqa: E402,F401 - k8s is the fixture

pytestmark = pytest.mark.integration


def _completed(k8s: K8s, stage: str, timeout: float) -> dict:
    """The stage's Job once the (simulated) Job controller says it is complete: the stage is published."""
    def complete():
        job = next((j for j in k8s.api.jobs("smoke") if j["metadata"]["labels"]["siked.io/stage"] == stage), None)
        conditions = ((job or {}).get("status") or {}).get("conditions") or []
        return job if any(c["type"] == "Complete" and c["status"] == "True" for c in conditions) else None
    return k8s.wait(complete, f"the {stage} Job to complete", timeout=timeout)


@pytest.fixture(autouse=True)
def _one_thread_per_pod(k8s: K8s):
    # Several pods share this machine's few cores, as pods share a node within their CPU limits.
    k8s.kubelet.env["OMP_NUM_THREADS"] = "1"


def test_a_sharded_sample_stage_reruns_only_its_failed_part_and_equals_the_unsharded_stage(k8s: K8s, tmp_path):
    from siked_runtime.graph import StageKey
    from siked_runtime.spec import validate_spec
    from siked_runtime.stages import run_stage
    from siked_runtime.storage import open_store, read_manifest

    def part_1_fails_once(job: dict, index: int, tries: int) -> kt.Simulated | None:
        if job["metadata"]["labels"]["siked.io/stage"] == "sample" and index == 1 and tries == 0:
            summary = {"stage": "sample", "status": "failed", "retryable": True, "exit_code": 75,
                       "error": "ConnectionError: storage went away"}
            return kt.Simulated(exit_code=75, message=json.dumps(summary), seconds=0.2, publish=False)
        return None

    k8s.kubelet.simulate_index = part_1_fails_once
    # float32: in bf16 (`auto` on a CPU with native bf16) a question's samples depend on its batch, and the
    # parts' batches are not the unsharded stage's (benchmarks/batch_invariance.py).
    student = {**smoke()["spec"]["student"], "dtype": "float32"}
    manifest = smoke(student=student, sampling={"batchSize": 16, "maxNewTokens": 24, "shards": 3},
                     iterations={"max": 1, "samplesPerQuestion": 2, "adaptiveBudget": False,
                                 "earlyStopping": {"patience": None}},
                     evaluation={"batchSize": 16, "maxNewTokens": 24, "baseline": False})
    k8s.api.create_run(manifest)
    job = _completed(k8s, "sample", timeout=900)
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["backoffLimitPerIndex"]) == \
        ("Indexed", 3, 3)
    assert job["status"]["completedIndexes"] == "0-2" and job["status"]["failed"] == 1
    pods = Counter(index for name, index in k8s.kubelet.started_indexes if name == job["metadata"]["name"])
    assert pods == {0: 1, 1: 2, 2: 1}  # only the failed part ran again
    assert job["metadata"]["name"] == "smoke-it1-sample"  # one Job: the Job controller retried the part

    store = k8s.store()
    merged = read_manifest(store, "iter-001/sample")
    assert merged["parts"] == 3 and merged["questions"] == 8
    # The same stage unsharded, here, on the same model: the same rows.
    local = open_store(str(tmp_path / "unsharded"))
    store.download_dir("iter-000/train/model", tmp_path / "unsharded" / "iter-000" / "train" / "model")
    unsharded = dict(manifest["spec"], sampling={"batchSize": 16, "maxNewTokens": 24})
    expected = run_stage(validate_spec(unsharded), local, StageKey("sample", 1))
    assert store.read_jsonl("iter-001/sample/all.jsonl.gz") == local.read_jsonl("iter-001/sample/all.jsonl.gz")
    assert merged["samples"] == expected["samples"] and merged["rows"] == expected["rows"]
    assert merged["strategy_shares"] == expected["strategy_shares"]


def test_a_two_node_train_stage_rendezvous_and_publishes_one_model(k8s: K8s):
    from siked_runtime.storage import read_manifest

    port = kt.free_port()
    manifest = smoke(training={"maxSteps": 2, "batchSize": 4,
                               "distributed": {"strategy": "ddp", "nodes": 2, "port": port}},
                     iterations={"max": 0, "earlyStopping": {"patience": None}},
                     evaluation={"batchSize": 16, "maxNewTokens": 24, "baseline": False})
    k8s.api.create_run(manifest)
    job = _completed(k8s, "train", timeout=900)
    name = job["metadata"]["name"]
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 2, 2)
    assert job["spec"]["template"]["spec"]["subdomain"] == name
    assert sorted(i for n, i in k8s.kubelet.started_indexes if n == name) == [0, 1]  # one pod per node, once
    service = k8s.api.get(f"/api/v1/namespaces/default/services/{name}")
    run = k8s.api.run("smoke")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert service["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    pods = [p for p in k8s.api.items("/api/v1/namespaces/default/pods")
            if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == name]
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
    assert all(p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0 for p in pods)
    store = k8s.store()
    train = read_manifest(store, "iter-000/train")
    assert train is not None and store.exists("iter-000/train/model/model.safetensors")
    assert [k for k in store.list("iter-000/train") if k.endswith("manifest.json")] == ["iter-000/train/manifest.json"]
