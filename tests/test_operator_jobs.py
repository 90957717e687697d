"""Stage Job manifests and Job states: pure functions, no cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from siked_operator.config import Config
from siked_operator.jobs import (
    ATTEMPT_LABEL,
    ITERATION_LABEL,
    QUEUE_LABEL,
    RUN_ANNOTATION,
    RUN_LABEL,
    STAGE_LABEL,
    JobState,
    build_stage_job,
    job_name,
    run_label,
)

from siked_runtime.graph import StageKey
from siked_runtime.spec import ResourceSpec, SpecError, load_manifest, validate_spec

sys.path.insert(0, str(Path(__file__).parent))
from k8s_tools import psa_restricted_violations  # noqa: E402

RUN = {
    "apiVersion": "siked.io/v1alpha1",
    "kind": "DistillationRun",
    "metadata": {"name": "gsm8k", "namespace": "team-a", "uid": "0f6c-uid", "labels": {"team": "math"}},
}
URI = "s3://runs/team-a/gsm8k"
CONFIG = Config(default_image="registry.example/siked:1", s3_endpoint="http://minio:9000", storage_secret="s3")


def spec(**overrides):
    base = {"student": {"model": "Qwen/Qwen2.5-1.5B-Instruct"}}
    return validate_spec({**base, **overrides})


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def env(job):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job).get("env", [])}


# --- names ----------------------------------------------------------------------------------------


def test_job_names_are_deterministic():
    assert job_name("gsm8k", StageKey("train", 1)) == "gsm8k-it1-train"
    assert job_name("gsm8k", StageKey("teacher")) == "gsm8k-teacher"
    assert job_name("gsm8k", StageKey("teacher-eval")) == "gsm8k-teacher-eval"
    assert job_name("gsm8k", StageKey("eval", 12), attempt=2) == "gsm8k-it12-eval-r2"


@pytest.mark.parametrize("name", ["a" * 55 + ".b.c", "exp.2026-01." + "x" * 50, "a" * 53 + "-.-" + "b" * 10])
def test_shortened_names_stay_dns_1123_and_label_values(name):
    from k8s_tools import DNS_SUBDOMAIN, LABEL_VALUE

    for key in (StageKey("train", 12), StageKey("teacher-eval")):
        for attempt in (0, 7):
            job = job_name(name, key, attempt)
            assert len(job) <= 63 and DNS_SUBDOMAIN.match(job) and LABEL_VALUE.match(job), job
    assert LABEL_VALUE.match(run_label(name)) and len(run_label(name)) <= 63


def test_long_run_names_are_shortened_uniquely():
    a, b = "x" * 60 + "-alpha", "x" * 60 + "-beta"
    names = {job_name(n, StageKey("sample", 10), attempt=3) for n in (a, b)}
    assert len(names) == 2
    assert all(len(n) <= 63 and n.endswith("-it10-sample-r3") for n in names)
    assert len(run_label(a)) <= 63 and run_label(a) != run_label(b)
    assert run_label("gsm8k") == "gsm8k"


# --- the Job --------------------------------------------------------------------------------------


def test_job_runs_the_stage_entrypoint_with_labels_and_owner():
    job = build_stage_job(RUN, StageKey("train", 1), spec(), CONFIG, run_uri=URI)
    meta = job["metadata"]
    assert meta["name"] == "gsm8k-it1-train" and meta["namespace"] == "team-a"
    assert meta["labels"][RUN_LABEL] == "gsm8k"
    assert meta["labels"][STAGE_LABEL] == "train"
    assert meta["labels"][ITERATION_LABEL] == "1"
    assert meta["labels"][ATTEMPT_LABEL] == "0"
    assert meta["labels"]["team"] == "math"  # the run's own labels travel along
    assert meta["annotations"][RUN_ANNOTATION] == "gsm8k"
    [owner] = meta["ownerReferences"]
    assert owner == {"apiVersion": "siked.io/v1alpha1", "kind": "DistillationRun", "name": "gsm8k",
                     "uid": "0f6c-uid", "controller": True}
    c = container(job)
    assert c["command"] == ["siked", "stage"]
    assert c["args"] == ["train", "--run-uri", URI, "--iteration", "1"]
    assert c["image"] == "registry.example/siked:1"
    assert job["spec"]["backoffLimit"] == 0  # retries are the operator's
    pod = job["spec"]["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"][RUN_LABEL] == "gsm8k" and pod["metadata"]["labels"]["team"] == "math"
    assert "activeDeadlineSeconds" not in job["spec"]


def test_disruptions_are_ignored_and_exit_codes_decide():
    from siked_jobs import EXIT_PERMANENT, EXIT_RETRYABLE

    rules = build_stage_job(RUN, StageKey("train", 0), spec(), CONFIG, run_uri=URI)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    actions = {r["action"]: r["onExitCodes"]["values"] for r in rules[1:]}
    assert actions == {"FailJob": [EXIT_PERMANENT], "Count": [EXIT_RETRYABLE]}
    assert all(r["onExitCodes"]["containerName"] == "stage" for r in rules[1:])


def test_stage_pods_pass_pod_security_restricted():
    s = spec(resources={"train": {"gpus": 2, "ephemeralStorage": "500Gi"}},
             podTemplate={"volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}],
                          "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]})
    for key in (StageKey("teacher"), StageKey("train", 1), StageKey("export")):
        pod = build_stage_job(RUN, key, s, CONFIG, run_uri=URI)["spec"]["template"]["spec"]
        assert psa_restricted_violations(pod) == [], key
        assert pod["automountServiceAccountToken"] is False
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        # Every writable place is an emptyDir with a size limit.
        empty = {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v}
        assert set(empty) == {"scratch", "dshm", "tmp"} and all(e.get("sizeLimit") for e in empty.values())
    train = build_stage_job(RUN, StageKey("train", 1), s, CONFIG, run_uri=URI)["spec"]["template"]["spec"]
    assert {v["name"]: v for v in train["volumes"]}["scratch"]["emptyDir"]["sizeLimit"] == "500Gi"
    assert train["containers"][0]["resources"]["limits"]["ephemeral-storage"] == "500Gi"
    # The checker does catch what the restricted profile forbids.
    bad = dict(train, securityContext={}, containers=[dict(train["containers"][0], securityContext={})])
    assert len(psa_restricted_violations(bad)) >= 4


def test_chart_can_replace_the_security_contexts():
    config = Config(pod_security_context={"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                          "fsGroup": 2000},
                    container_security_context={"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}})
    pod = build_stage_job(RUN, StageKey("teacher"), spec(), config, run_uri=URI)["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 2000
    assert "readOnlyRootFilesystem" not in pod["containers"][0]["securityContext"]


def test_pod_template_and_per_stage_overrides():
    s = spec(podTemplate={
        "labels": {"team": "math"}, "annotations": {"sidecar.istio.io/inject": "false"},
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}], "imagePullSecrets": ["registry"],
        "runtimeClassName": "nvidia",
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}},
        "stages": {"train": {"labels": {"kind": "train"}, "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
                             "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "c"}}],
                             "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}},
    })
    train = build_stage_job(RUN, StageKey("train", 0), s, CONFIG, run_uri=URI)
    teacher = build_stage_job(RUN, StageKey("teacher"), s, CONFIG, run_uri=URI)
    meta, pod = train["spec"]["template"]["metadata"], train["spec"]["template"]["spec"]
    assert meta["labels"]["team"] == "math" and meta["labels"]["kind"] == "train"
    assert meta["labels"][RUN_LABEL] == "gsm8k"  # ours win
    assert meta["annotations"]["sidecar.istio.io/inject"] == "false" and meta["annotations"][RUN_ANNOTATION]
    assert env(train)["HF_HUB_OFFLINE"] == "1" and env(train)["NCCL_DEBUG"] == "WARN"
    assert "NCCL_DEBUG" not in env(teacher) and env(teacher)["HF_HUB_OFFLINE"] == "1"
    assert pod["imagePullSecrets"] == [{"name": "registry"}] and pod["runtimeClassName"] == "nvidia"
    assert pod["affinity"]["nodeAffinity"]
    assert {"name": "cache", "mountPath": "/cache"} in container(train)["volumeMounts"]
    assert "cache" not in {v["name"] for v in teacher["spec"]["template"]["spec"]["volumes"]}


@pytest.mark.parametrize("bad, where", [
    ({"resources": {"default": {"queueName": "team a"}}}, "spec.resources.default.queueName"),
    ({"resources": {"train": {"nodeSelector": {"pool": "gpu/a100"}}}}, "spec.resources.train.nodeSelector"),
    ({"podTemplate": {"labels": {"-x": "y"}}}, "spec.podTemplate.labels"),
    ({"podTemplate": {"volumes": [{"name": "scratch", "emptyDir": {}}]}}, "spec.podTemplate.volumes"),
    ({"podTemplate": {"stages": {"trian": {}}}}, "spec.podTemplate.stages"),
])
def test_invalid_label_values_and_pod_templates_are_spec_errors(bad, where):
    with pytest.raises(SpecError) as exc:
        spec(**bad)
    assert any(p.startswith(where) for p in exc.value.problems), exc.value.problems


def test_kueue_jobs_start_suspended():
    queued = build_stage_job(RUN, StageKey("train", 0), spec(resources={"default": {"queueName": "research"}}),
                             CONFIG, run_uri=URI)
    assert queued["spec"]["suspend"] is True
    assert "suspend" not in build_stage_job(RUN, StageKey("train", 0), spec(), CONFIG, run_uri=URI)["spec"]


def test_stages_outside_iterations_have_no_iteration():
    job = build_stage_job(RUN, StageKey("teacher"), spec(), CONFIG, run_uri=URI)
    assert container(job)["args"] == ["teacher", "--run-uri", URI]
    assert ITERATION_LABEL not in job["metadata"]["labels"]


def test_retry_attempts_get_their_own_name_and_label():
    job = build_stage_job(RUN, StageKey("eval", 0), spec(), CONFIG, run_uri=URI, attempt=2)
    assert job["metadata"]["name"] == "gsm8k-it0-eval-r2"
    assert job["metadata"]["labels"][ATTEMPT_LABEL] == "2"


def test_storage_endpoint_and_credentials():
    job = build_stage_job(RUN, StageKey("teacher"), spec(), CONFIG, run_uri=URI)
    assert env(job)["SIKED_S3_ENDPOINT"] == "http://minio:9000"
    assert container(job)["envFrom"] == [{"secretRef": {"name": "s3"}}]
    own = spec(storage={"uri": URI, "endpoint": "http://ceph:7480", "secretRef": "team-a-s3"})
    job = build_stage_job(RUN, StageKey("teacher"), own, CONFIG, run_uri=URI)
    assert env(job)["SIKED_S3_ENDPOINT"] == "http://ceph:7480"
    assert container(job)["envFrom"] == [{"secretRef": {"name": "team-a-s3"}}]
    bare = build_stage_job(RUN, StageKey("teacher"), spec(), Config(), run_uri=URI)
    assert "envFrom" not in container(bare) and "SIKED_S3_ENDPOINT" not in env(bare)


def test_termination_message_is_the_stage_summary():
    c = container(build_stage_job(RUN, StageKey("teacher"), spec(), CONFIG, run_uri=URI))
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert env({"spec": {"template": {"spec": {"containers": [c]}}}})["SIKED_TERMINATION_LOG"] == "/dev/termination-log"


def test_resources_per_stage():
    s = spec(resources={
        "default": {"cpu": "4", "memory": "32Gi", "nodeSelector": {"pool": "gpu"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "priorityClassName": "batch", "queueName": "research"},
        "train": {"gpus": 4, "memory": "160Gi"},
        "teacher": {"queueName": "cpu-queue"},
    })
    train = build_stage_job(RUN, StageKey("train", 0), s, CONFIG, run_uri=URI)
    assert container(train)["resources"] == {
        "requests": {"cpu": "4", "memory": "160Gi", "nvidia.com/gpu": 4},
        "limits": {"memory": "160Gi", "nvidia.com/gpu": 4},
    }
    pod = train["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "batch"
    assert train["metadata"]["labels"][QUEUE_LABEL] == "research"
    # Kueue admits the Job; a queue label on its pods would make them workloads of their own.
    assert QUEUE_LABEL not in train["spec"]["template"]["metadata"]["labels"]

    teacher = build_stage_job(RUN, StageKey("teacher"), s, CONFIG, run_uri=URI)
    assert "nvidia.com/gpu" not in container(teacher)["resources"]["requests"]
    assert teacher["metadata"]["labels"][QUEUE_LABEL] == "cpu-queue"
    # Evaluations without their own entry use eval's; the baseline is an evaluation.
    s2 = spec(resources={"eval": {"gpus": 1}})
    baseline = build_stage_job(RUN, StageKey("baseline"), s2, CONFIG, run_uri=URI)
    assert container(baseline)["resources"]["limits"] == {"nvidia.com/gpu": 1}


def test_operator_default_resources_sit_under_the_runs():
    config = Config(default_resources=ResourceSpec(gpus=1, memory="16Gi", node_selector={"pool": "gpu"}))
    plain = build_stage_job(RUN, StageKey("train", 0), spec(), config, run_uri=URI)
    assert container(plain)["resources"] == {"requests": {"memory": "16Gi", "nvidia.com/gpu": 1},
                                             "limits": {"memory": "16Gi", "nvidia.com/gpu": 1}}
    assert plain["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    # The run's default and its stage entries win, field by field; 0 GPUs is a choice, not "unset".
    own = spec(resources={"default": {"memory": "8Gi"}, "teacher": {"gpus": 0}})
    teacher = build_stage_job(RUN, StageKey("teacher"), own, config, run_uri=URI)
    assert container(teacher)["resources"] == {"requests": {"memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    assert teacher["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}


def test_no_resources_means_no_requests():
    job = build_stage_job(RUN, StageKey("export"), spec(), CONFIG, run_uri=URI)
    assert container(job)["resources"] == {}
    pod = job["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "priorityClassName"} & pod.keys()
    assert QUEUE_LABEL not in job["metadata"]["labels"]


def test_image_and_pull_policy_from_the_spec():
    job = build_stage_job(RUN, StageKey("teacher"), spec(image="mine:2", imagePullPolicy="Always"), CONFIG,
                          run_uri=URI)
    assert container(job)["image"] == "mine:2" and container(job)["imagePullPolicy"] == "Always"


def test_teacher_api_key_only_reaches_teacher_stages():
    s = spec(teacher={"kind": "openai", "model": "gpt", "endpoint": "http://vllm:8000/v1",
                      "apiKeySecret": {"name": "teacher-api", "key": "token"}})
    teacher = env(build_stage_job(RUN, StageKey("teacher"), s, CONFIG, run_uri=URI))
    assert teacher["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "teacher-api", "key": "token"}}
    train = env(build_stage_job(RUN, StageKey("train", 0), s, CONFIG, run_uri=URI))
    assert "OPENAI_API_KEY" not in train


def test_remaining_run_deadline_bounds_the_job():
    job = build_stage_job(RUN, StageKey("teacher"), spec(), CONFIG, run_uri=URI, deadline_seconds=90)
    assert job["spec"]["activeDeadlineSeconds"] == 90


def test_service_account():
    job = build_stage_job(RUN, StageKey("teacher"), spec(), Config(service_account="siked-stage"), run_uri=URI)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "siked-stage"


def test_gpu_cluster_example_builds_jobs():
    run = load_manifest("examples/gpu-cluster.yaml")
    body = {"apiVersion": "siked.io/v1alpha1", "kind": "DistillationRun",
            "metadata": {"name": run.metadata.name, "namespace": run.metadata.namespace, "uid": "u"}}
    job = build_stage_job(body, StageKey("train", 2), run.spec, CONFIG, run_uri=run.spec.storage.uri)
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container(job)["image"] == "ghcr.io/siked/siked:0.1.0"


# --- reading Jobs back ----------------------------------------------------------------------------


def job_body(status=None, labels=None, **meta):
    labels = {RUN_LABEL: "gsm8k", STAGE_LABEL: "train", ITERATION_LABEL: "1", ATTEMPT_LABEL: "1"} | (labels or {})
    return {"metadata": {"name": "gsm8k-it1-train-r1", "labels": labels, **meta},
            "spec": {"backoffLimit": 0}, "status": status or {}}


def test_job_state_of_a_new_job():
    state = JobState.from_body(job_body())
    assert state.key == StageKey("train", 1) and state.attempt == 1 and state.run == "gsm8k"
    assert state.active and not state.started and state.phase == "Pending"


def test_job_state_running_succeeded_failed():
    running = JobState.from_body(job_body({"startTime": "2026-01-01T00:00:00Z", "active": 1, "ready": 1}))
    assert running.started and running.active and running.phase == "Running"
    pulling = JobState.from_body(job_body({"startTime": "2026-01-01T00:00:00Z", "active": 1, "ready": 0}))
    assert not pulling.started and pulling.phase == "Pending"
    older_cluster = JobState.from_body(job_body({"startTime": "2026-01-01T00:00:00Z", "active": 1}))
    assert older_cluster.started
    done = JobState.from_body(job_body({"succeeded": 1, "completionTime": "2026-01-01T00:10:00Z",
                                        "conditions": [{"type": "Complete", "status": "True"}]}))
    assert done.succeeded and not done.active and done.finished_at.minute == 10
    failed = JobState.from_body(job_body({"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow",
         "lastTransitionTime": "2026-01-01T00:05:00Z"}]}))
    assert failed.failed and failed.reason == "DeadlineExceeded" and failed.finished_at.minute == 5
    # A failed pod fails the Job (backoffLimit 0) even before the condition shows.
    assert JobState.from_body(job_body({"failed": 1})).failed


def test_job_state_suspended_and_deleting():
    suspended = job_body({"startTime": "2026-01-01T00:00:00Z", "active": 1})
    suspended["spec"]["suspend"] = True  # e.g. held by Kueue
    assert not JobState.from_body(suspended).started
    deleting = JobState.from_body(job_body(deletionTimestamp="2026-01-01T00:00:00Z"))
    assert deleting.deleting and not deleting.active


@pytest.mark.parametrize("labels", [{STAGE_LABEL: "bogus"}, {ITERATION_LABEL: "x"}, {STAGE_LABEL: "teacher"}])
def test_foreign_jobs_are_ignored(labels):
    assert JobState.from_body(job_body(labels=labels)) is None


# --- scale-out: sharded stages, torchrun, nodes -----------------------------------------------------


def test_a_sharded_stage_is_an_indexed_job_that_retries_each_part_alone():
    s = spec(sampling={"shards": 4}, backoffLimit=2)
    job = build_stage_job(RUN, StageKey("sample", 1), s, CONFIG, run_uri=URI)
    js = job["spec"]
    assert (js["completionMode"], js["completions"], js["parallelism"], js["backoffLimitPerIndex"]) == \
        ("Indexed", 4, 4, 2)
    assert "backoffLimit" not in js  # the limit is per part
    actions = {r["action"]: r for r in js["podFailurePolicy"]["rules"]}
    assert actions["FailIndex"]["onExitCodes"]["values"] == [2] and "FailJob" not in actions
    assert actions["Ignore"]["onPodConditions"][0]["type"] == "DisruptionTarget"
    # The part comes from the pod's JOB_COMPLETION_INDEX: the command is the plain stage command.
    assert container(job)["args"] == ["sample", "--run-uri", URI, "--iteration", "1"]
    assert "completionMode" not in build_stage_job(RUN, StageKey("train", 1), s, CONFIG, run_uri=URI)["spec"]


def test_an_indexed_jobs_name_leaves_room_for_its_pods_index():
    long_run = {**RUN, "metadata": {**RUN["metadata"], "name": "r" * 60}}
    job = build_stage_job(long_run, StageKey("eval", 3), spec(evaluation={"shards": 12}), CONFIG, run_uri=URI)
    assert len(job["metadata"]["name"]) + len("-11") <= 63


def test_a_multi_gpu_train_stage_runs_torchrun_with_a_process_per_gpu():
    s = spec(training={"distributed": {"strategy": "ddp"}}, resources={"train": {"gpus": 4}})
    job = build_stage_job(RUN, StageKey("train", 1), s, CONFIG, run_uri=URI)
    c = container(job)
    argv = c["command"] + c["args"]
    assert argv[0] == "torchrun" and "completionMode" not in job["spec"]
    assert argv[argv.index("--nproc-per-node") + 1] == "4" and argv[argv.index("--nnodes") + 1] == "1"
    assert argv[argv.index("--node-rank") + 1] == "0" and argv[argv.index("--master-addr") + 1] == "127.0.0.1"
    assert argv[argv.index("--no-python") + 1:] == ["siked", "stage", "train", "--run-uri", URI, "--iteration", "1"]
    assert "subdomain" not in job["spec"]["template"]["spec"]
    # One GPU, or no distribution: the plain stage command.
    plain = build_stage_job(RUN, StageKey("train", 1), spec(resources={"train": {"gpus": 4}}), CONFIG, run_uri=URI)
    assert container(plain)["command"] == ["siked", "stage"]


def test_a_multi_node_train_stage_is_an_indexed_job_with_a_headless_service():
    from siked_operator.jobs import build_stage_service

    s = spec(training={"distributed": {"strategy": "fsdp", "nodes": 3, "port": 29600}}, resources={"train": {"gpus": 8}})
    key = StageKey("train", 2)
    job = build_stage_job(RUN, key, s, CONFIG, run_uri=URI, attempt=1)
    js, pod = job["spec"], job["spec"]["template"]["spec"]
    name = job["metadata"]["name"]
    assert name == "gsm8k-it2-train-r1"
    assert (js["completionMode"], js["completions"], js["parallelism"], js["backoffLimit"]) == ("Indexed", 3, 3, 0)
    assert "backoffLimitPerIndex" not in js
    # One failed node fails the Job: training cannot go on without it. Disruptions are still ignored.
    rules = js["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "NotIn", "values": [0]}} in rules
    assert rules[0]["action"] == "Ignore"
    service = build_stage_service(RUN, key, s, CONFIG, attempt=1)
    assert service["metadata"]["name"] == pod["subdomain"] == name
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert service["metadata"]["ownerReferences"][0]["uid"] == RUN["metadata"]["uid"]
    argv = container(job)["command"] + container(job)["args"]
    assert argv[argv.index("--nnodes") + 1] == "3" and argv[argv.index("--nproc-per-node") + 1] == "8"
    assert argv[argv.index("--master-addr") + 1] == f"{name}-0.{name}"
    assert argv[argv.index("--master-port") + 1] == "29600"
    assert argv[argv.index("--node-rank") + 1] == "$(SIKED_NODE_RANK)"
    assert env(job)["SIKED_NODE_RANK"] == {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert psa_restricted_violations(pod) == []
    assert build_stage_service(RUN, StageKey("eval", 2), s, CONFIG) is None


def test_indexed_job_states_count_parts_and_fail_only_on_the_condition():
    job = build_stage_job(RUN, StageKey("sample", 1), spec(sampling={"shards": 3}), CONFIG, run_uri=URI)
    running = {**job, "status": {"active": 2, "ready": 2, "failed": 1, "succeeded": 1, "completedIndexes": "1",
                                 "failedIndexes": ""}}
    state = JobState.from_body(running)
    assert state.active and not state.failed and not state.succeeded and state.parts_done == 1
    done = {**job, "status": {"succeeded": 3, "failed": 1, "completedIndexes": "0-2"}}
    assert JobState.from_body(done).succeeded and JobState.from_body(done).parts_done == 3
    failed = {**job, "status": {"succeeded": 2, "failed": 4, "completedIndexes": "0,2", "failedIndexes": "1",
                                "conditions": [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}]}}
    state = JobState.from_body(failed)
    assert state.failed and state.failed_indexes == "1" and state.per_index and state.reason == "FailedIndexes"


def test_the_reference_stage_trains_under_torchrun_too():
    s = spec(method="skintern", internalization={}, training={"distributed": {"strategy": "ddp", "nodes": 2}})
    job = build_stage_job(RUN, StageKey("reference"), s, CONFIG, run_uri=URI)
    argv = container(job)["command"] + container(job)["args"]
    assert argv[0] == "torchrun" and argv[-3:] == ["reference", "--run-uri", URI]
    assert job["spec"]["completions"] == 2
