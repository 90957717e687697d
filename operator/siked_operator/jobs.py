"""Stage Jobs: their names, their manifests, and what the operator reads back from them.

Pure functions, tested without a cluster:

    build_stage_job(run, StageKey("train", 1), spec, config, run_uri="s3://…", attempt=0) -> dict
    JobState.from_body(job) -> JobState     # what a Job's status says about its stage attempt

Names are deterministic (`<run>-it<N>-<stage>`, `-r<k>` for retry k), so creating
a Job is "create if absent" and a restarted operator can never start a stage twice.

Scale-out, as the Job controller and JobSet do it:
  * a sharded stage (`shards: N`) is an Indexed Job with one pod per part; the Job
    retries each part alone (`backoffLimitPerIndex`), and the pod's completion index
    is its part (JOB_COMPLETION_INDEX, read by `siked stage`);
  * a train stage on several processes runs torchrun in its pod
    (`siked_runtime.distributed.torchrun_argv`); on several nodes it is an Indexed Job
    with a pod per node, a headless Service (`build_stage_service`) that gives pod 0 a
    name to rendezvous at, and a node rank from the completion index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kopf
from siked_jobs import EXIT_PERMANENT, EXIT_RETRYABLE

from siked_operator.config import Config
from siked_runtime.distributed import LOCALHOST, needs_launcher, torchrun_argv, world
from siked_runtime.graph import BASELINE, EVAL, EXPORT, REFERENCE, TEACHER, TEACHER_EVAL, TRAIN, StageKey
from siked_runtime.spec import API_VERSION, KIND, DistillationSpec, PodOverrides, ResourceSpec
from siked_runtime.stages.shards import shard_count

RUN_LABEL = "siked.io/run"
STAGE_LABEL = "siked.io/stage"
ITERATION_LABEL = "siked.io/iteration"
ATTEMPT_LABEL = "siked.io/attempt"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RUN_ANNOTATION = "siked.io/run-name"  # the full run name; the label may be shortened
RUN_URI_ANNOTATION = "siked.io/run-uri"

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # the annotation the Job controller sets
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"                  # the label it puts on a Job's pods
NODE_RANK = "SIKED_NODE_RANK"

CONTAINER = "stage"
TERMINATION_LOG = "/dev/termination-log"
SCRATCH = "/scratch"
NAME_LIMIT = 63  # Job names become the `job-name` label of their pods
# Writable volumes of a read-only root filesystem. Every emptyDir has a size limit: past it the kubelet
# evicts the pod instead of letting one stage fill the node's disk (or, for /dev/shm, its memory).
SCRATCH_SIZE = "100Gi"   # model downloads and checkpoints; spec.resources.*.ephemeralStorage replaces it
SHM_SIZE = "16Gi"        # PyTorch data loaders and NCCL; counts against the memory limit
TMP_SIZE = "4Gi"         # Python, boto3 and the PoT sandbox's temporary directories

# Stage pods pass Pod Security `restricted`; the Helm chart can replace these (OpenShift assigns uids).
POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}

# What the Job controller does with a failed pod. A disruption (drain, preemption, Kueue eviction) is not
# the stage's fault: the pod is replaced and nothing is counted. The stage's own exit codes decide the rest.
POD_FAILURE_POLICY = {"rules": [
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]}},
    {"action": "Count", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_RETRYABLE]}},
]}

# A part of a sharded stage: a permanent failure fails that part alone (the others go on, and each part is
# retried backoffLimitPerIndex times by the Job controller); disruptions are replaced as above.
PER_INDEX_FAILURE_POLICY = {"rules": [
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    {"action": "FailIndex", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]}},
    {"action": "Count", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_RETRYABLE]}},
]}
# A node of a multi-node train stage: training cannot go on without any of its nodes, so one failed pod fails
# the whole Job (the operator retries the stage with a new Job, as for any stage).
NODE_FAILURE_POLICY = {"rules": [
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}},
]}

# Stages without their own entry in spec.resources use the closest one.
_RESOURCES_OF = {BASELINE: EVAL, TEACHER_EVAL: TEACHER, REFERENCE: TRAIN, EXPORT: "default"}


def _shorten(name: str, room: int) -> str:
    """`name` if it fits in `room` characters, else a prefix and a hash of the whole (still unique).

    The cut never ends in '-' or '.': "run.v2.-1a2b3c" is neither a DNS-1123 name nor a label value.
    """
    if len(name) <= room:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[: room - 7].rstrip('-.')}-{digest}"


def run_label(run_name: str) -> str:
    """The run's name as a label value (at most 63 characters)."""
    return _shorten(run_name, NAME_LIMIT)


def job_name(run_name: str, key: StageKey, attempt: int = 0, indexes: int = 1) -> str:
    """`<run>-it<N>-<stage>` (`<run>-<stage>` outside iterations), `-r<k>` for retry k, within 63 characters.

    An Indexed Job's pods are named (as hosts) `<job>-<index>`: `indexes` leaves room for that.
    """
    suffix = f"-{key.stage}" if key.iteration is None else f"-it{key.iteration}-{key.stage}"
    if attempt:
        suffix += f"-r{attempt}"
    room = NAME_LIMIT - len(suffix) - (len(f"-{indexes - 1}") if indexes > 1 else 0)
    return _shorten(run_name, room) + suffix


def service_name(job: str) -> str:
    """The headless Service of a multi-node Job: the Job's name (a Service's must start with a letter)."""
    return job if job[0].isalpha() else _shorten(f"s{job}", NAME_LIMIT)


# Stages that train, with training.distributed: torchrun starts them.
TRAINING = (TRAIN, REFERENCE)


def train_world(spec: DistillationSpec, key: StageKey, config: Config) -> tuple[int, int]:
    """(nodes, processes per node) of a training stage (train, reference); (1, 1) for every other stage."""
    if key.stage not in TRAINING:
        return 1, 1
    return world(spec, stage_resources(spec, key.stage, config.default_resources).gpus)


def indexes(spec: DistillationSpec, key: StageKey, config: Config) -> int:
    """Pods of the stage's Job that run at once, one per completion index: its parts, or its nodes."""
    return max(shard_count(spec, key.stage), train_world(spec, key, config)[0])


def stage_resources(spec: DistillationSpec, stage: str, defaults: ResourceSpec) -> ResourceSpec:
    """The operator's defaults, then the run's `resources.default`, then the stage's own entry on top."""
    run = spec.resources.for_stage(_RESOURCES_OF.get(stage, stage))
    return ResourceSpec(**(defaults.model_dump(exclude_none=True) | run.model_dump(exclude_none=True)))


def _container_resources(res: ResourceSpec) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        # Memory limit = request: a stage that outgrows its request is OOM-killed and retried,
        # rather than starving its neighbours on a shared GPU node.
        requests["memory"] = limits["memory"] = res.memory
    if res.gpus:
        # Extended resources need limits equal to requests.
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = res.gpus
    if res.ephemeral_storage:
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = res.ephemeral_storage
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _env(spec: DistillationSpec, key: StageKey, config: Config, run_name: str) -> list[dict[str, Any]]:
    env = [
        {"name": "SIKED_RUN", "value": run_name},
        {"name": "SIKED_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "SIKED_CACHE", "value": f"{SCRATCH}/siked"},
        {"name": "HF_HOME", "value": f"{SCRATCH}/huggingface"},
    ]
    endpoint = spec.storage.endpoint or config.s3_endpoint
    if endpoint:
        env.append({"name": "SIKED_S3_ENDPOINT", "value": endpoint})
    secret = spec.teacher.api_key_secret
    if secret is not None and key.stage in (TEACHER, TEACHER_EVAL):
        env.append({"name": spec.teacher.api_key_env,
                    "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    return env


def pod_overrides(spec: DistillationSpec, stage: str) -> PodOverrides:
    """spec.podTemplate with its entry for `stage` on top: maps merged, lists appended, the rest replaced."""
    base = spec.pod_template
    extra = (base.stages or {}).get(stage)
    fields = base.model_dump(exclude={"stages"})
    if extra is not None:
        for name, value in extra.model_dump(exclude_none=True).items():
            if isinstance(value, dict) and name != "affinity":
                fields[name] = (fields[name] or {}) | value
            elif isinstance(value, list):
                fields[name] = (fields[name] or []) + value
            else:
                fields[name] = value
    return PodOverrides(**fields)


def _volumes(res: ResourceSpec, extra: PodOverrides) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes = [
        {"name": "scratch", "emptyDir": {"sizeLimit": res.ephemeral_storage or SCRATCH_SIZE}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
    ]
    mounts = [{"name": "scratch", "mountPath": SCRATCH}, {"name": "dshm", "mountPath": "/dev/shm"},
              {"name": "tmp", "mountPath": "/tmp"}]
    return volumes + list(extra.volumes or []), mounts + list(extra.volume_mounts or [])


def _command(spec: DistillationSpec, key: StageKey, config: Config, job: str, run_uri: str) -> list[str]:
    """What the stage container runs: `siked stage …`, under torchrun for a training stage on several processes.

    On several nodes, each pod's node rank is its completion index and the rendezvous is at pod 0, by
    its name under the Job's headless Service.
    """
    stage_argv = [*config.stage_command, key.stage, "--run-uri", run_uri]
    if key.iteration is not None:
        stage_argv += ["--iteration", str(key.iteration)]
    gpus = stage_resources(spec, key.stage, config.default_resources).gpus
    if key.stage not in TRAINING or not needs_launcher(spec, gpus):
        return stage_argv
    if train_world(spec, key, config)[0] == 1:
        return torchrun_argv(spec, gpus, node_rank="0", master_addr=LOCALHOST, stage_argv=stage_argv)
    return torchrun_argv(spec, gpus, node_rank=f"$({NODE_RANK})", master_addr=f"{job}-0.{service_name(job)}",
                         stage_argv=stage_argv)


def _pod_spec(spec: DistillationSpec, key: StageKey, config: Config, run_name: str, run_uri: str,
              job: str) -> dict[str, Any]:
    res = stage_resources(spec, key.stage, config.default_resources)
    extra = pod_overrides(spec, key.stage)
    argv = _command(spec, key, config, job, run_uri)
    stage_command = list(config.stage_command)
    command, args = (stage_command, argv[len(stage_command):]) if argv[:len(stage_command)] == stage_command \
        else (argv[:1], argv[1:])
    env = _env(spec, key, config, run_name)
    nodes = train_world(spec, key, config)[0]
    if nodes > 1:
        # Kubernetes expands $(SIKED_NODE_RANK) in the command from this variable.
        env.append({"name": NODE_RANK, "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}})
    volumes, mounts = _volumes(res, extra)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or config.default_image,
        "command": command,
        "args": args,
        "env": env + list(extra.env or []),
        "resources": _container_resources(res),
        "terminationMessagePath": TERMINATION_LOG,
        # The stage writes a JSON summary there; a crash before that leaves the log's tail instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
        "securityContext": dict(config.container_security_context or CONTAINER_SECURITY),
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    secret = spec.storage.secret_ref or config.storage_secret
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        # Stages talk to storage, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": dict(config.pod_security_context or POD_SECURITY),
        "containers": [container],
        "volumes": volumes,
    }
    if config.service_account:
        pod["serviceAccountName"] = config.service_account
    if res.node_selector:
        pod["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in res.tolerations]
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    if extra.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in extra.image_pull_secrets]
    if extra.affinity:
        pod["affinity"] = dict(extra.affinity)
    if extra.runtime_class_name:
        pod["runtimeClassName"] = extra.runtime_class_name
    if nodes > 1:
        pod["subdomain"] = service_name(job)  # pod i is <job>-i.<service>: torchrun's rendezvous finds pod 0
    return pod


def build_stage_job(
    run: Mapping[str, Any],
    key: StageKey,
    spec: DistillationSpec,
    config: Config,
    *,
    run_uri: str,
    attempt: int = 0,
    deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The Job that runs one attempt of one stage of `run` (the DistillationRun object as the API returns it)."""
    meta = run["metadata"]
    run_name = meta["name"]
    labels = stage_labels(run_name, key, attempt)
    queue = stage_resources(spec, key.stage, config.default_resources).queue_name
    if queue:
        labels[QUEUE_LABEL] = queue
    annotations = {RUN_ANNOTATION: run_name, RUN_URI_ANNOTATION: run_uri}
    extra = pod_overrides(spec, key.stage)
    name = job_name(run_name, key, attempt, indexes(spec, key, config))
    job_spec: dict[str, Any] = {
        # Retries of real failures are the operator's: it counts attempts across Jobs, backs off, and reads
        # exit codes. Disruptions are the Job controller's to absorb (podFailurePolicy).
        "backoffLimit": 0,
        "podFailurePolicy": POD_FAILURE_POLICY,
        **_indexed(spec, key, config),
        "template": {
            "metadata": {"labels": {**(extra.labels or {}),
                                    **{k: v for k, v in labels.items() if k != QUEUE_LABEL}},
                         "annotations": {**(extra.annotations or {}), **annotations}},
            "spec": _pod_spec(spec, key, config, run_name, run_uri, name),
        },
    }
    job_spec = {k: v for k, v in job_spec.items() if v is not None}
    if queue:
        # Created suspended, as Kueue's own integrations do: Kueue unsuspends the Job when it admits it.
        job_spec["suspend"] = True
    if deadline_seconds is not None:
        # What is left of the run's activeDeadlineSeconds: the cluster stops the stage at the run's deadline.
        job_spec["activeDeadlineSeconds"] = max(1, int(deadline_seconds))
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }
    # Owner reference (controller), namespace, and the run's own labels on the Job and its pods.
    _adopt(job, run, nested="spec.template")
    return job


def _indexed(spec: DistillationSpec, key: StageKey, config: Config) -> dict[str, Any]:
    """The Job fields of a sharded stage (a pod per part) or a multi-node train stage (a pod per node)."""
    parts, nodes = shard_count(spec, key.stage), train_world(spec, key, config)[0]
    if parts > 1:
        # Each part is retried alone; the Job fails once a part used up its retries (the operator then fails
        # the stage: its retries are spent) or exited with the permanent code.
        return {"completionMode": "Indexed", "completions": parts, "parallelism": parts,
                # No Job-wide limit (the API server then sets it to the largest value): the limit is per part.
                "backoffLimit": None, "backoffLimitPerIndex": spec.backoff_limit,
                "podFailurePolicy": PER_INDEX_FAILURE_POLICY}
    if nodes > 1:
        return {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes,
                "podFailurePolicy": NODE_FAILURE_POLICY}
    return {}


def build_stage_service(run: Mapping[str, Any], key: StageKey, spec: DistillationSpec, config: Config, *,
                        attempt: int = 0) -> dict[str, Any] | None:
    """The headless Service of a multi-node train Job (None for any other stage).

    It gives each of the Job's pods a DNS name, `<job>-<index>.<service>`, before the pods are ready
    (torchrun's rendezvous happens before anything is ready). Owned by the run, so it goes with it.
    """
    if train_world(spec, key, config)[0] == 1:
        return None
    meta = run["metadata"]
    job = job_name(meta["name"], key, attempt, indexes(spec, key, config))
    labels = stage_labels(meta["name"], key, attempt)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(job), "namespace": meta.get("namespace"), "labels": labels,
                     "annotations": {RUN_ANNOTATION: meta["name"]}},
        "spec": {"clusterIP": "None", "selector": {JOB_NAME_LABEL: job}, "publishNotReadyAddresses": True},
    }
    _adopt(service, run)
    return service


def stage_labels(run_name: str, key: StageKey, attempt: int) -> dict[str, str]:
    """The labels of a stage attempt's objects (its Job, its pods, a multi-node Job's Service)."""
    labels = {
        "app.kubernetes.io/name": "siked",
        "app.kubernetes.io/component": "stage",
        "app.kubernetes.io/managed-by": "siked-operator",
        RUN_LABEL: run_label(run_name),
        STAGE_LABEL: key.stage,
        ATTEMPT_LABEL: str(attempt),
    }
    if key.iteration is not None:
        labels[ITERATION_LABEL] = str(key.iteration)
    return labels


def _adopt(obj: dict[str, Any], run: Mapping[str, Any], nested: str | None = None) -> None:
    """Owner reference (controller), namespace and the run's labels, as kopf sets them.

    blockOwnerDeletion needs `update` on distillationruns/finalizers where the API server checks it
    (OpenShift); background garbage collection deletes the objects with their run either way.
    """
    kopf.adopt(obj, owner=_owner(run), **({"nested": nested} if nested else {}))
    for ref in obj["metadata"]["ownerReferences"]:
        ref.pop("blockOwnerDeletion", None)


def _owner(run: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": run.get("apiVersion", API_VERSION), "kind": run.get("kind", KIND),
            "metadata": dict(run["metadata"])}


# --- reading Jobs back ------------------------------------------------------------------------


def _started(status: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """The stage's pod runs: counted ready (a pod pulling its image is active, not ready yet)."""
    if spec.get("suspend"):  # e.g. held by Kueue until admitted
        return False
    if "ready" in status:
        return (status.get("ready") or 0) > 0
    return bool(status.get("active"))  # clusters older than the Job `ready` count


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class JobState:
    """One attempt of one stage, as its Job's status tells it."""

    name: str
    run: str
    key: StageKey
    attempt: int
    started: bool                  # the Job's pod is running (admitted, scheduled, image pulled)
    succeeded: bool
    failed: bool
    deleting: bool
    created_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None      # of the Failed condition: BackoffLimitExceeded, DeadlineExceeded, …
    message: str | None = None
    suspended: bool = False        # spec.suspend: Kueue has not admitted it (or preempted it)
    start_time: datetime | None = None  # when the Job controller started it (again, after a suspension)
    owner_uid: str | None = None   # of its controlling owner: a run with the same name but another uid is not it
    completions: int = 1           # pods that must succeed: an Indexed Job's parts or nodes
    completed_indexes: str = ""    # of an Indexed Job, as its status says them: "0,2-3"
    failed_indexes: str = ""
    per_index: bool = False        # backoffLimitPerIndex: the Job itself retried each part

    @property
    def parts_done(self) -> int:
        """How many of an Indexed Job's indexes succeeded."""
        return count_indexes(self.completed_indexes)

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed

    @property
    def active(self) -> bool:
        """Running or about to: counts as the stage's current attempt."""
        return not self.finished and not self.deleting

    @property
    def phase(self) -> str:
        if self.succeeded:
            return "Succeeded"
        if self.failed:
            return "Failed"
        if self.deleting:
            return "Deleting"
        if self.suspended:
            return "Suspended"
        return "Running" if self.started else "Pending"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobState | None:
        """The state of a stage Job; None for a Job that is not one of ours."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        try:
            iteration = labels.get(ITERATION_LABEL)
            key = StageKey(labels[STAGE_LABEL], int(iteration) if iteration is not None else None)
            attempt = int(labels.get(ATTEMPT_LABEL, 0))
        except (KeyError, ValueError):
            return None
        status = body.get("status") or {}
        spec = body.get("spec") or {}
        true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        completions = spec.get("completions") or 1
        per_index = spec.get("backoffLimitPerIndex") is not None
        succeeded = "Complete" in true or (status.get("succeeded") or 0) >= completions
        # With per-part retries a failed pod is one try of its part; only the Job's condition says it failed.
        failed = not succeeded and ("Failed" in true or (
            not per_index and (status.get("failed") or 0) > (spec.get("backoffLimit") or 0)))
        ended = true.get("Complete") or true.get("Failed") or {}
        finished_at = _time(status.get("completionTime")) or _time(ended.get("lastTransitionTime"))
        owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), {})
        return cls(
            name=meta.get("name", ""),
            run=annotations.get(RUN_ANNOTATION) or labels.get(RUN_LABEL, ""),
            key=key,
            attempt=attempt,
            started=_started(status, spec),
            succeeded=succeeded,
            failed=failed,
            deleting=bool(meta.get("deletionTimestamp")),
            created_at=_time(meta.get("creationTimestamp")),
            finished_at=finished_at,
            reason=true["Failed"].get("reason") if "Failed" in true else None,
            message=true["Failed"].get("message") if "Failed" in true else None,
            suspended=bool(spec.get("suspend")),
            start_time=_time(status.get("startTime")),
            owner_uid=owner.get("uid"),
            completions=completions,
            completed_indexes=status.get("completedIndexes") or "",
            failed_indexes=status.get("failedIndexes") or "",
            per_index=per_index,
        )


def count_indexes(indexes: str) -> int:
    """How many indexes a Job status's interval list names: "0,2-4" -> 4."""
    total = 0
    for item in filter(None, indexes.split(",")):
        first, _, last = item.partition("-")
        total += int(last or first) - int(first) + 1
    return total
