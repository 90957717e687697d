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

from siked_operator import metrics
from siked_operator.config import Config
from siked_operator.jobs import JobState, build_stage_job
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


def store_spec(store: Store, name: str, namespace: str, spec: DistillationSpec) -> list[str]:
    """Save the resolved manifest before the first stage; returns the fields that differ from a saved one."""
    if store.exists(SPEC_KEY):
        saved = validate_spec((yaml.safe_load(store.get_text(SPEC_KEY)) or {}).get("spec") or {})
        old, new = _science(saved), _science(spec)
        return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
                "spec": _dump(spec)}
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


def _storage_trouble(status: Mapping[str, Any], exc: Exception, now: datetime, generation: Any) -> Result:
    message = f"cannot read the run's storage: {exc}"[:2000]
    kept = [c for c in status.get("conditions") or [] if c.get("type") != ConditionType.PROGRESSING.value]
    conditions = merge_conditions(status.get("conditions"), [
        *kept, condition(ConditionType.PROGRESSING, False, Reason.STORAGE_UNAVAILABLE, message)], now, generation)
    was = next((c for c in status.get("conditions") or [] if c.get("type") == ConditionType.PROGRESSING.value), {})
    events = [] if was.get("reason") == Reason.STORAGE_UNAVAILABLE.value else [
        Event("Warning", Reason.STORAGE_UNAVAILABLE.value, message)]
    return Result(patch={"conditions": conditions}, events=events)


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
    try:
        if not _spec_checked(status, generation, uri):
            changed = store_spec(store, name, namespace, spec)
            if changed:
                why = (f"{store.url(SPEC_KEY)} holds this run's spec with different {', '.join(changed)}; these "
                       f"fields shape the artifacts and cannot change mid-run (restore them, or start a new run "
                       f"with another spec.storage.uri)")
                return refuse(Reason.SPEC_CHANGED, [why], uri)
        done = list_manifests(store)
        recorded = {n for rec in status.get("stages") or [] for n in rec.get("failedJobs") or []}
        failures = {j.name: kube.job_failure(namespace, j.name) for j in jobs if j.failed and j.name not in recorded}
    except (StorageError, OSError) as exc:
        logger.warning(f"storage of run {namespace}/{name} unavailable: {exc}")
        return _storage_trouble(status, exc, now, generation)

    decision = decide(RunRef(name, namespace, generation, uri), spec, done, jobs, status, now, config, failures)
    events = list(decision.events)
    for job_name, why in decision.delete:
        if kube.delete_job(namespace, job_name):
            logger.info(f"deleted Job {job_name}: {why}")
    for key, attempt in decision.create:
        job = build_stage_job(run, key, spec, config, run_uri=uri, attempt=attempt,
                              deadline_seconds=decision.deadline_seconds)
        if kube.create_job(namespace, job):
            metrics.JOBS_CREATED.labels(key.stage).inc()
            if attempt:
                metrics.RETRIES.labels(namespace, name, key.stage).inc()
            retry = f" (attempt {attempt + 1} of {spec.backoff_limit + 1})" if attempt else ""
            events.append(Event("Normal", Reason.STAGE_STARTED.value,
                                f"{key} started{retry}: Job {job['metadata']['name']}"))

    for key, seconds in decision.finished_stages:
        if seconds is not None:
            metrics.STAGE_DURATION.labels(key.stage).observe(seconds)
    for key in decision.failed_attempts:
        metrics.JOB_FAILURES.labels(namespace, name, key.stage).inc()
    metrics.observe_run(namespace, name, decision.status)
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    return Result(status_patch(status, decision.status), events, seen)


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
