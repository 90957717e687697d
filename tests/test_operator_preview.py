"""`siked jobs RUN.yaml`: the Jobs the operator would create, from the same builder, checked as a cluster would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from siked_operator.config import Config
from siked_operator.jobs import build_stage_job
from siked_operator.preview import planned_keys, preview_jobs
from siked_operator.status import planned_stages

from siked_runtime.graph import StageKey, plan
from siked_runtime.spec import SpecError, load_manifest

sys.path.insert(0, str(Path(__file__).parent))
import k8s_tools as kt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIKED = str(Path(sys.executable).parent / "siked")


def siked_jobs(*args: str) -> list[dict]:
    out = subprocess.run([SIKED, "jobs", *args], capture_output=True, text=True, check=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("example", ["smoke.yaml", "gpu-cluster.yaml", "skintern-quickstart.yaml"])
def test_every_planned_stage_gets_a_job_a_cluster_would_admit(example):
    run = load_manifest(REPO / "examples" / example)
    objects = siked_jobs(str(REPO / "examples" / example), "--storage-uri", "s3://runs/siked")
    jobs = [o for o in objects if o["kind"] == "Job"]
    services = [o for o in objects if o["kind"] == "Service"]  # before each multi-node train Job
    assert len(jobs) + len(services) == len(objects)
    assert len(jobs) == len(planned_keys(run)) == planned_stages(run.spec, plan(run.spec, {}))
    assert len({j["metadata"]["name"] for j in jobs}) == len(jobs)
    multi_node = [j for j in jobs if j["spec"].get("completionMode") == "Indexed"
                  and j["spec"]["template"]["spec"].get("subdomain")]
    assert [s["metadata"]["name"] for s in services] == [j["spec"]["template"]["spec"]["subdomain"] for j in multi_node]
    assert bool(services) == (example == "gpu-cluster.yaml")  # its training runs on 2 nodes
    for job in jobs:
        assert kt.admit(job) == [], job["metadata"]["name"]  # schema (strict), names, labels
        assert kt.psa_restricted_violations(job["spec"]["template"]["spec"]) == []


def test_one_stage_is_the_operators_job():
    run = load_manifest(REPO / "examples" / "smoke.yaml")
    [job] = siked_jobs(str(REPO / "examples" / "smoke.yaml"), "--storage-uri", "s3://runs/siked", "--stage", "train",
                       "--iteration", "1", "--image", "registry.example/siked:2")
    body = {"apiVersion": "siked.io/v1alpha1", "kind": "DistillationRun",
            "metadata": {"name": "smoke", "namespace": "default", "uid": "00000000-0000-0000-0000-000000000000",
                         "labels": {}}}
    config = Config(storage_uri="s3://runs/siked", default_image="registry.example/siked:2")
    assert job == build_stage_job(body, StageKey("train", 1), run.spec, config,
                                  run_uri="s3://runs/siked/default/smoke")


def test_no_storage_is_an_error():
    run = load_manifest(REPO / "examples" / "smoke.yaml")
    with pytest.raises(SpecError, match="spec.storage.uri"):
        preview_jobs(run, Config())
    result = subprocess.run([SIKED, "jobs", str(REPO / "examples" / "smoke.yaml"), "--stage", "nope",
                             "--storage-uri", "s3://r/s"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "plans no stage nope" in result.stderr


def test_a_multi_node_train_stage_previews_its_service_before_its_job():
    from siked_runtime.spec import DistributedSpec

    run = load_manifest(Path(__file__).resolve().parents[1] / "examples" / "smoke.yaml")
    training = run.spec.training.model_copy(update={"distributed": DistributedSpec(strategy="ddp", nodes=2)})
    run = run.model_copy(update={"spec": run.spec.model_copy(update={"training": training})})
    objects = preview_jobs(run, Config(storage_uri="s3://runs"), stage="train", iteration=0)
    assert [o["kind"] for o in objects] == ["Service", "Job"]
    assert objects[0]["metadata"]["name"] == objects[1]["spec"]["template"]["spec"]["subdomain"]
