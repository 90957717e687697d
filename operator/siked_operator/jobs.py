"""Stage Jobs: their names, their manifests, and what the operator reads back from them.

Pure functions, tested without a cluster:

    build_stage_job(run, StageKey("train", 1), spec, config, run_uri="s3://…", attempt=0) -> dict
    JobState.from_body(job) -> JobState     # what a Job's status says about its stage attempt

Names are deterministic (`<run>-it<N>-<stage>`, `-r<k>` for retry k), so creating
a Job is "create if absent" and a restarted operator can never start a stage twice.
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
from siked_runtime.graph import BASELINE, EVAL, EXPORT, REFERENCE, TEACHER, TEACHER_EVAL, TRAIN, StageKey
from siked_runtime.spec import API_VERSION, KIND, DistillationSpec, PodOverrides, ResourceSpec

RUN_LABEL = "siked.io/run"
STAGE_LABEL = "siked.io/stage"
ITERATION_LABEL = "siked.io/iteration"
ATTEMPT_LABEL = "siked.io/attempt"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RUN_ANNOTATION = "siked.io/run-name"  # the full run name; the label may be shortened
RUN_URI_ANNOTATION = "siked.io/run-uri"

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


def job_name(run_name: str, key: StageKey, attempt: int = 0) -> str:
    """`<run>-it<N>-<stage>` (`<run>-<stage>` outside iterations), `-r<k>` for retry k, within 63 characters."""
    suffix = f"-{key.stage}" if key.iteration is None else f"-it{key.iteration}-{key.stage}"
    if attempt:
        suffix += f"-r{attempt}"
    return _shorten(run_name, NAME_LIMIT - len(suffix)) + suffix


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


def _pod_spec(spec: DistillationSpec, key: StageKey, config: Config, run_name: str, run_uri: str) -> dict[str, Any]:
    res = stage_resources(spec, key.stage, config.default_resources)
    extra = pod_overrides(spec, key.stage)
    args = [key.stage, "--run-uri", run_uri]
    if key.iteration is not None:
        args += ["--iteration", str(key.iteration)]
    volumes, mounts = _volumes(res, extra)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or config.default_image,
        "command": list(config.stage_command),
        "args": args,
        "env": _env(spec, key, config, run_name) + list(extra.env or []),
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
    queue = stage_resources(spec, key.stage, config.default_resources).queue_name
    if queue:
        labels[QUEUE_LABEL] = queue
    annotations = {RUN_ANNOTATION: run_name, RUN_URI_ANNOTATION: run_uri}
    extra = pod_overrides(spec, key.stage)
    job_spec: dict[str, Any] = {
        # Retries of real failures are the operator's: it counts attempts across Jobs, backs off, and reads
        # exit codes. Disruptions are the Job controller's to absorb (podFailurePolicy).
        "backoffLimit": 0,
        "podFailurePolicy": POD_FAILURE_POLICY,
        "template": {
            "metadata": {"labels": {**(extra.labels or {}),
                                    **{k: v for k, v in labels.items() if k != QUEUE_LABEL}},
                         "annotations": {**(extra.annotations or {}), **annotations}},
            "spec": _pod_spec(spec, key, config, run_name, run_uri),
        },
    }
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
            "name": job_name(run_name, key, attempt),
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }
    # Owner reference (controller), namespace, and the run's own labels on the Job and its pods.
    kopf.adopt(job, owner=_owner(run), nested="spec.template")
    # blockOwnerDeletion needs `update` on distillationruns/finalizers where the API server checks it
    # (OpenShift); background garbage collection deletes the Jobs with their run either way.
    for ref in job["metadata"]["ownerReferences"]:
        ref.pop("blockOwnerDeletion", None)
    return job


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
        succeeded = "Complete" in true or (status.get("succeeded") or 0) > 0
        failed = not succeeded and ("Failed" in true or (status.get("failed") or 0) > (spec.get("backoffLimit") or 0))
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
        )
