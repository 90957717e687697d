"""One full pass over one run: read what exists, decide, make it so.

    result = reconcile_run(run_body, jobs, config, kube, now)   # blocking: storage and API calls
    result.patch    # merge patch for .status
    result.events   # Kubernetes events to post on the run

The handlers (`siked_operator.handlers`) call this from a worker thread; it
keeps nothing between calls. Inputs: the run object, its Jobs (from kopf's
index), its stage manifests (from storage). Outputs: Jobs created or deleted,
and the status patch and events that the handler hands to kopf.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from siked_operator import metrics
from siked_operator.config import Config
from siked_operator.jobs import JobState, build_stage_job, build_stage_service
from siked_operator.kube import Kube
from siked_operator.phases import ConditionType, Phase, Reason
from siked_operator.status import (
    Event,
    RunRef,
    condition,
    decide,
    invalid_status,
    jobs_digest,
    merge_conditions,
    parse_time,
    status_patch,
)
from siked_runtime.spec import (
    API_VERSION,
    KIND,
    DistillationSpec,
    SpecError,
    validate_spec,
)
from siked_runtime.storage import StorageError, Store, list_manifests, open_store

SPEC_KEY = "spec.yaml"

# Fields that steer where and how stages run, not what they compute: they may change mid-run.
RUN_CONTROLS = {"suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "resources",
                "image", "imagePullPolicy", "storage"}


@dataclass(frozen=True)
class Seen:
    """What a pass looked at: enough for the next one to tell that nothing can have changed.

    The driver keeps it between passes only to skip work; a restarted operator has none and
    simply looks again.
    """

    generation: Any
    jobs: str        # jobs_digest() of the Jobs it saw
    at: datetime     # when it read storage


@dataclass
class Result:
    patch: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    seen: Seen | None = None     # None when storage could not be read: the next pass tries again
    trouble: bool = False        # storage or the API failed: the driver backs off before the next pass


def resolve_run_uri(status: Mapping[str, Any], spec: DistillationSpec, config: Config, namespace: str,
                    name: str) -> str:
    """The run's storage prefix: the spec's, else the one it started with, else the operator's default."""
    if spec.storage.uri:
        return spec.storage.uri.rstrip("/")
    if status.get("runUri"):
        return status["runUri"]  # the operator's default may have changed since the run started
    if config.storage_uri:
        return f"{config.storage_uri.rstrip('/')}/{namespace}/{name}"
    why = "spec.storage.uri: required field is missing (this operator has no default storage; see --storage-uri)"
    raise SpecError([why], "spec")


def _dump(spec: DistillationSpec) -> dict[str, Any]:
    # Nulls stay: `earlyStopping.patience: null` means "never stop early", not "use the default".
    return spec.model_dump(mode="json", by_alias=True)


def spec_problems(run: Mapping[str, Any], config: Config) -> list[str]:
    """Why the run cannot start (empty when it can): spec errors, or no storage to put it in."""
    meta = run["metadata"]
    try:
        spec = validate_spec(dict(run.get("spec") or {}))
        resolve_run_uri(run.get("status") or {}, spec, config, meta["namespace"], meta["name"])
    except SpecError as exc:
        return exc.problems
    return []


def _science(spec: DistillationSpec) -> dict[str, Any]:
    return {k: v for k, v in _dump(spec).items() if k not in RUN_CONTROLS}


class OtherRun(Exception):
    """The storage holds the artifacts of another run: same name, another uid (deleted and re-created)."""


def store_spec(store: Store, name: str, namespace: str, spec: DistillationSpec, uid: str | None = None) -> list[str]:
    """Save the resolved manifest before the first stage; returns the fields that differ from a saved one.

    The run's uid is saved with it: a run deleted and re-created under the same name is another run, and
    must not pick up (or be refused by) the old one's artifacts without being told (OtherRun).
    """
    if store.exists(SPEC_KEY):
        saved_manifest = yaml.safe_load(store.get_text(SPEC_KEY)) or {}
        saved_uid = (saved_manifest.get("metadata") or {}).get("uid")
        if uid and saved_uid and saved_uid != uid:
            raise OtherRun(saved_uid)
        saved = validate_spec(saved_manifest.get("spec") or {})
        old, new = _science(saved), _science(spec)
        return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    metadata = {"name": name, "namespace": namespace} | ({"uid": uid} if uid else {})
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": _dump(spec)}
    store.put_text(SPEC_KEY, yaml.safe_dump(manifest, sort_keys=False))
    return []


def _spec_checked(status: Mapping[str, Any], generation: Any, uri: str) -> bool:
    valid = any(c.get("type") == ConditionType.SPEC_VALID.value and c.get("status") == "True"
                for c in status.get("conditions") or [])
    return valid and status.get("observedGeneration") == generation and status.get("runUri") == uri


def is_quiet(seen: Seen | None, status: Mapping[str, Any], generation: Any, jobs: list[JobState], now: datetime,
             config: Config) -> bool:
    """Nothing can have changed since the last pass: same spec, same Job states, nothing due."""
    if seen is None or seen.generation != generation or seen.jobs != jobs_digest(generation, jobs):
        return False
    next_check = parse_time(status.get("nextCheckTime"))
    if next_check is not None and now >= next_check:
        return False
    if status.get("phase") in (Phase.SUCCEEDED.value, Phase.FAILED.value):
        return True  # only a spec edit or a Job change can move a finished run
    return (now - seen.at).total_seconds() < config.resync_seconds


def _progressing(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ConditionType.PROGRESSING.value), {})


def _with_progressing(conditions: list[dict[str, Any]] | None, reason: Reason, message: str, now: datetime,
                      generation: Any, previous: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """`conditions` with Progressing replaced; transition times relative to `previous` (default: `conditions`)."""
    kept = [c for c in conditions or [] if c.get("type") != ConditionType.PROGRESSING.value]
    return merge_conditions(conditions if previous is None else previous,
                            [*kept, condition(ConditionType.PROGRESSING, False, reason, message)], now, generation)


def _storage_trouble(status: Mapping[str, Any], exc: Exception, now: datetime, generation: Any) -> Result:
    """One condition and one Warning event per outage: a pass during the same outage patches nothing."""
    if _progressing(status).get("reason") == Reason.STORAGE_UNAVAILABLE.value:
        return Result(patch={}, trouble=True)
    message = f"cannot read the run's storage: {exc}"[:2000]
    conditions = _with_progressing(status.get("conditions"), Reason.STORAGE_UNAVAILABLE, message, now, generation)
    return Result(patch={"conditions": conditions}, events=[Event("Warning", Reason.STORAGE_UNAVAILABLE.value, message)],
                  trouble=True)


def _api_message(exc: ApiException) -> str:
    """The API server's own explanation (its Status message), else the HTTP status line."""
    try:
        import json

        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    return f"{exc.status} {body.get('reason') or exc.reason}: {body.get('message') or exc.body or ''}".strip()[:2000]


def _create_jobs(run: Mapping[str, Any], decision: Any, spec: DistillationSpec, config: Config, kube: Kube,
                 uri: str, events: list[Event]) -> tuple[Reason, str] | None:
    """Create the decided Jobs; the first refusal as (reason, message), None when all went well."""
    meta = run["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    for key, attempt in decision.create:
        job = build_stage_job(run, key, spec, config, run_uri=uri, attempt=attempt,
                              deadline_seconds=decision.deadline_seconds)
        job_name = job["metadata"]["name"]
        service = build_stage_service(run, key, spec, config, attempt=attempt)
        try:
            if service is not None:  # before the Job: its pods need their names from the first moment
                kube.create_service(namespace, service)
            created = kube.create_job(namespace, job)
            owner = None if created else kube.job_owner(namespace, job_name)
        except ApiException as exc:
            return Reason.JOB_CREATE_FAILED, f"creating Job {job_name} for {key} failed: {_api_message(exc)}"
        if not created and owner is not None and owner != meta.get("uid"):
            whose = f"another owner (uid {owner})" if owner else "no DistillationRun"
            return Reason.JOB_CONFLICT, (f"Job {job_name} exists and belongs to {whose}, not this run (uid "
                                         f"{meta.get('uid')}); delete it or rename the run")
        if created:
            metrics.JOBS_CREATED.labels(key.stage).inc()
            if attempt:
                metrics.RETRIES.labels(namespace, name, key.stage).inc()
            retry = f" (attempt {attempt + 1} of {spec.backoff_limit + 1})" if attempt else ""
            events.append(Event("Normal", Reason.STAGE_STARTED.value, f"{key} started{retry}: Job {job_name}"))
    return None


def reconcile_run(run: Mapping[str, Any], jobs: list[JobState], config: Config, kube: Kube, now: datetime,
                  logger: logging.Logger | logging.LoggerAdapter) -> Result:
    started = time.perf_counter()
    meta = run["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    status = run.get("status") or {}
    seen = Seen(generation, jobs_digest(generation, jobs), now)

    def refuse(reason: Reason, problems: list[str], uri: str | None) -> Result:
        new, events = invalid_status(RunRef(name, namespace, generation, uri), reason, problems, status, now)
        metrics.observe_run(namespace, name, new)
        # Only what changed; progress fields stay, so fixing the spec picks up where the run was.
        return Result({k: v for k, v in new.items() if status.get(k) != v}, events, seen)

    try:
        spec = validate_spec(dict(run.get("spec") or {}))
        uri = resolve_run_uri(status, spec, config, namespace, name)
    except SpecError as exc:
        return refuse(Reason.INVALID_SPEC, exc.problems, status.get("runUri"))

    store = open_store(uri, endpoint_url=spec.storage.endpoint or config.s3_endpoint)
    uid = meta.get("uid")
    # A Job of our name whose owner is another object (a run deleted and re-created, or not a run) is not ours.
    jobs = [j for j in jobs if j.owner_uid is None or uid is None or j.owner_uid == uid]
    try:
        if not _spec_checked(status, generation, uri):
            changed = store_spec(store, name, namespace, spec, uid)
            if changed:
                why = (f"{store.url(SPEC_KEY)} holds this run's spec with different {', '.join(changed)}; these "
                       f"fields shape the artifacts and cannot change mid-run (restore them, or start a new run "
                       f"with another spec.storage.uri)")
                return refuse(Reason.SPEC_CHANGED, [why], uri)
        done = list_manifests(store)
        recorded = {n for rec in status.get("stages") or [] for n in rec.get("failedJobs") or []}
        failures = {j.name: kube.job_failure(namespace, j.name) for j in jobs if j.failed and j.name not in recorded}
        waiting = {j.name: w for j in jobs if j.active and not j.started and not j.suspended
                   and (w := kube.pod_waiting(namespace, j.name)) is not None}
    except OtherRun as exc:
        why = (f"{store.url(SPEC_KEY)} belongs to an earlier run named {name} (uid {exc}), not to this one (uid "
               f"{uid}); delete those artifacts, or give this run another name or spec.storage.uri")
        return refuse(Reason.STORAGE_IN_USE, [why], uri)
    except (StorageError, OSError) as exc:
        # Info, not warning: kopf posts warnings as events, and the outage gets one event (Result.events).
        logger.info(f"storage of run {namespace}/{name} unavailable: {exc}")
        metrics.STORAGE_UNAVAILABLE.labels(namespace, name).set(1)
        metrics.RECONCILE_ERRORS.labels("storage").inc()
        return _storage_trouble(status, exc, now, generation)
    metrics.STORAGE_UNAVAILABLE.labels(namespace, name).set(0)
    waited = [(now - since).total_seconds() for j in jobs if j.active and not j.started and not j.suspended
              and (since := j.start_time or j.created_at) is not None]
    metrics.PENDING_SECONDS.labels(namespace, name).set(max(waited, default=0.0))

    decision = decide(RunRef(name, namespace, generation, uri), spec, done, jobs, status, now, config, failures,
                      waiting)
    events = list(decision.events)
    for job_name, why in decision.delete:
        if kube.delete_job(namespace, job_name):
            logger.info(f"deleted Job {job_name}: {why}")
    refused = None if meta.get("deletionTimestamp") else _create_jobs(run, decision, spec, config, kube, uri, events)
    if refused is not None:
        reason, message = refused
        logger.info(message)  # posted once as an event below, not once per pass
        metrics.RECONCILE_ERRORS.labels("api").inc()
        if _progressing(status).get("reason") != reason.value:
            events.append(Event("Warning", reason.value, message))
        decision.status["conditions"] = _with_progressing(decision.status["conditions"], reason, message, now,
                                                          generation, status.get("conditions"))

    for key, seconds in decision.finished_stages:
        if seconds is not None:
            metrics.STAGE_DURATION.labels(key.stage).observe(seconds)
    for key in decision.failed_attempts:
        metrics.JOB_FAILURES.labels(namespace, name, key.stage).inc()
    metrics.observe_run(namespace, name, decision.status)
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    return Result(status_patch(status, decision.status), events, seen, trouble=refused is not None)


def cleanup_run(run: Mapping[str, Any], config: Config, kube: Kube,
                logger: logging.Logger | logging.LoggerAdapter) -> None:
    """On deletion: the run's Jobs go; its artifacts stay unless spec.storage.deleteOnRunDeletion."""
    meta = run["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    for job in kube.run_jobs(namespace, name):
        if kube.delete_job(namespace, job["metadata"]["name"]):
            logger.info(f"deleted Job {job['metadata']['name']} of the deleted run")
    metrics.forget_run(namespace, name)
    try:
        spec = validate_spec(dict(run.get("spec") or {}))
        uri = resolve_run_uri(run.get("status") or {}, spec, config, namespace, name)
    except SpecError:
        return  # an invalid run never wrote anything
    if spec.storage.delete_on_run_deletion:
        open_store(uri, endpoint_url=spec.storage.endpoint or config.s3_endpoint).delete_prefix("")
        logger.info(f"deleted the artifacts under {uri} (spec.storage.deleteOnRunDeletion)")
