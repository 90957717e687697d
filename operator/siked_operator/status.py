"""What a run should look like now: its status, the Jobs to create or delete, the events to post.

Pure: `decide()` takes the spec, the stage manifests found in storage, the run's
Jobs as the API shows them and the run's previous status, and returns a
`Decision`. The handlers fetch those inputs and carry the decision out; nothing
here remembers anything between calls, so a restarted operator decides the same.

What persists between calls lives in the status itself: the start time (for
activeDeadlineSeconds) and, per stage, the names of its failed Jobs (so the
attempt count survives Jobs that were cleaned up after ttlSecondsAfterFinished).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from siked_jobs import EXIT_PERMANENT

from siked_operator.config import Config
from siked_operator.jobs import JobState
from siked_operator.phases import ConditionType, Phase, Reason
from siked_runtime.graph import EXPORT, SAMPLE, STAGES, TRAIN, Plan, StageKey, plan
from siked_runtime.report import build_report
from siked_runtime.spec import DistillationSpec, Method

# --- small helpers ------------------------------------------------------------------------------


def timestamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value))


def _round(x: Any, digits: int = 4) -> Any:
    return round(x, digits) if isinstance(x, float) else x


def _rounded_map(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if m is None else {str(k): _round(v) for k, v in m.items()}


def stage_name(key: StageKey) -> str:
    return str(key)


def _order(key: StageKey) -> tuple:
    if key.stage == EXPORT:
        return (10**6, 0)
    if key.iteration is None:
        return (-1, STAGES.index(key.stage))
    return (key.iteration, STAGES.index(key.stage))


def key_of(record: Mapping[str, Any]) -> StageKey | None:
    try:
        return StageKey(record["stage"], record.get("iteration"))
    except (KeyError, ValueError, TypeError):
        return None


def planned_stages(spec: DistillationSpec, p: Plan) -> int:
    """How many stages the run will have, given what is known about where it stops."""
    last = p.last_iteration if p.last_iteration is not None else spec.last_iteration
    n = 1 + int(spec.evaluation.baseline) + int(spec.evaluation.teacher) + 1  # teacher, evals, export
    n += int(spec.method == Method.skintern and spec.skintern.reference)  # SKIntern's comparison
    for t in range(last + 1):
        n += 2 + int(spec.method == Method.siked and t >= 1)
    return n


def jobs_digest(generation: Any, jobs: Iterable[JobState]) -> str:
    """Changes whenever the spec or any of the run's Jobs changes state: what makes a pass worth doing."""
    parts = [str(generation)] + sorted(f"{j.name}={j.phase}:{j.completed_indexes}/{j.failed_indexes}" for j in jobs)
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


# --- inputs and outputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRef:
    name: str
    namespace: str
    generation: int | None
    run_uri: str | None = None


@dataclass(frozen=True)
class Failure:
    """What a failed attempt's pod said: its exit code and termination message."""

    exit_code: int | None = None
    message: str | None = None
    reason: str | None = None  # the operator's own verdict (PendingDeadlineExceeded), when it ended the attempt

    @property
    def permanent(self) -> bool:
        return self.exit_code == EXIT_PERMANENT or self.reason == Reason.PENDING_DEADLINE_EXCEEDED.value


@dataclass(frozen=True)
class PodWaiting:
    """Why a stage Job's pod has not started: the scheduler's or the kubelet's reason and message."""

    reason: str            # Unschedulable, ErrImagePull, ImagePullBackOff, CreateContainerConfigError, …
    message: str = ""

    @property
    def condition_reason(self) -> Reason:
        if self.reason == "Unschedulable":
            return Reason.UNSCHEDULABLE
        if self.reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"):
            return Reason.IMAGE_PULL_FAILED
        if self.reason in ("CreateContainerConfigError", "CreateContainerError"):
            return Reason.CONTAINER_CONFIG_ERROR
        return Reason.JOB_PENDING


# Progressing reasons that mean "a pod cannot start": each new one is posted as a Warning event.
POD_PROBLEMS = (Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_FAILED, Reason.CONTAINER_CONFIG_ERROR)


@dataclass(frozen=True)
class Event:
    type: str      # Normal or Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: dict[str, Any]
    create: list[tuple[StageKey, int]] = field(default_factory=list)      # (stage, attempt)
    delete: list[tuple[str, str]] = field(default_factory=list)           # (Job name, why)
    events: list[Event] = field(default_factory=list)
    deadline_seconds: int | None = None                                    # left of activeDeadlineSeconds
    finished_stages: list[tuple[StageKey, float | None]] = field(default_factory=list)  # newly done: (stage, s)
    failed_attempts: list[StageKey] = field(default_factory=list)                       # new failed Jobs

    @property
    def phase(self) -> Phase:
        return Phase(self.status["phase"])


# --- conditions ---------------------------------------------------------------------------------


def condition(type_: ConditionType, status: bool, reason: Reason, message: str = "") -> dict[str, Any]:
    return {"type": type_.value, "status": "True" if status else "False", "reason": reason.value, "message": message}


def merge_conditions(previous: Iterable[Mapping[str, Any]], new: Iterable[dict[str, Any]], now: datetime,
                     generation: int | None) -> list[dict[str, Any]]:
    """Kubernetes-style: lastTransitionTime moves only when a condition's status changes."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for c in new:
        old = before.get(c["type"])
        changed = old is None or old.get("status") != c["status"]
        c = {**c, "lastTransitionTime": timestamp(now) if changed else old.get("lastTransitionTime", timestamp(now))}
        if generation is not None:
            c["observedGeneration"] = generation
        out.append(c)
    return out


# --- results ------------------------------------------------------------------------------------


def iteration_results(spec: DistillationSpec, done: Mapping[str, Mapping]) -> tuple[dict, list[dict]]:
    """Baseline accuracy per set, and one compact record per evaluated iteration (never rows)."""
    report = build_report(spec, done)
    results = []
    for it in report["iterations"]:
        t = it["iteration"]
        train = done.get(StageKey(TRAIN, t).prefix, {})
        sample = done.get(StageKey(SAMPLE, t).prefix, {}) if t >= 1 else {}
        record = {
            "iteration": t,
            "alpha": _round(it["alpha"]),
            "rows": train.get("rows"),
            "teacherRows": it["teacher_rows"],
            "selfRows": it["self_rows"],
            "samples": sample.get("samples"),
            "correctSamples": sample.get("correct_samples"),
            "sampleAccuracy": _round(it["sample_accuracy"]),
            "accuracy": _rounded_map(it["eval"]),
            "strategyShares": _rounded_map(it["strategy_shares"]),
            "trainLoss": _round(it["train_loss"]),
            "modelUri": train.get("model"),
            "regressed": it["regressed"],
        }
        results.append({k: v for k, v in record.items() if v is not None})
    return _rounded_map(report["baseline"]) or {}, results


def stage_summary(key: StageKey, manifest: Mapping[str, Any]) -> str:
    """A few numbers for a StageSucceeded event."""
    parts = []
    if isinstance(manifest.get("accuracy"), Mapping):
        parts += [f"{k} {v:.3f}" for k, v in manifest["accuracy"].items() if isinstance(v, (int, float))]
    for field_, label in (("rows", "rows"), ("correct_samples", "correct samples"), ("alpha", "α")):
        value = manifest.get(field_)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{label} {_round(value, 3)}")
    return ", ".join(parts)


# --- per-stage records --------------------------------------------------------------------------


@dataclass
class StageView:
    key: StageKey
    jobs: list[JobState]
    failed_jobs: list[str]
    last_failure: dict[str, Any] | None
    manifest: Mapping[str, Any] | None
    attempts_before: int = 0  # as the previous status counted them (their Jobs may be gone)

    @property
    def done(self) -> bool:
        return self.manifest is not None

    @property
    def active(self) -> JobState | None:
        return next((j for j in self.jobs if j.active), None)

    @property
    def failures(self) -> int:
        return len(self.failed_jobs)

    @property
    def permanent(self) -> bool:
        return bool(self.last_failure and self.last_failure.get("permanent"))

    def record(self) -> dict[str, Any]:
        active = self.active
        latest = max(self.jobs, key=lambda j: j.attempt, default=None)
        if self.done:
            phase = Phase.SUCCEEDED.value
        elif active is not None:
            phase = Phase.RUNNING.value if active.started else Phase.PENDING.value
        elif self.failures:
            phase = Phase.FAILED.value
        else:
            phase = Phase.PENDING.value
        rec: dict[str, Any] = {"name": stage_name(self.key), "stage": self.key.stage, "phase": phase}
        if self.key.iteration is not None:
            rec["iteration"] = self.key.iteration
        job = active or latest
        if job is not None:
            rec["job"] = job.name
        # Attempts seen: Jobs that exist now, and what the status counted before (Jobs may be cleaned up).
        seen = len(set(self.failed_jobs) | {j.name for j in self.jobs})
        rec["attempts"] = max(seen, self.attempts_before, 1 if self.done else 0)
        if self.done:
            if isinstance(self.manifest.get("duration_seconds"), (int, float)):
                rec["durationSeconds"] = _round(float(self.manifest["duration_seconds"]), 1)
            if self.manifest.get("published_at"):
                rec["completionTime"] = timestamp(parse_time(self.manifest["published_at"]))
        if self.failed_jobs:
            rec["failedJobs"] = list(self.failed_jobs)
        if self.last_failure:
            rec["lastFailure"] = dict(self.last_failure)
        return rec


def _stage_views(p: Plan, done: Mapping[str, Mapping], jobs: list[JobState], previous: Mapping[str, Any],
                 failures: Mapping[str, Failure], now: datetime) -> dict[StageKey, StageView]:
    by_key: dict[StageKey, list[JobState]] = defaultdict(list)
    for j in jobs:
        by_key[j.key].append(j)
    before: dict[StageKey, Mapping[str, Any]] = {}
    for rec in previous.get("stages") or []:
        key = key_of(rec)
        if key is not None:
            before[key] = rec
    keys = set(by_key) | set(before) | set(p.runnable)
    for prefix in done:
        try:
            keys.add(StageKey.from_prefix(prefix))
        except ValueError:
            pass
    views = {}
    for key in sorted(keys, key=_order):
        rec = before.get(key, {})
        failed = list(rec.get("failedJobs") or [])
        last_failure = dict(rec["lastFailure"]) if rec.get("lastFailure") else None
        for j in sorted(by_key[key], key=lambda j: j.attempt):
            if j.failed and j.name not in failed:
                failed.append(j.name)
                info = failures.get(j.name) or Failure()
                message = info.message or j.message or j.reason or "the stage Job failed"
                if j.failed_indexes:
                    message = f"failed parts {j.failed_indexes} of {j.completions}: {message}"
                last_failure = {
                    "job": j.name,
                    "exitCode": info.exit_code,
                    "reason": info.reason or j.reason,
                    "message": message[:1024],
                    "time": timestamp(j.finished_at or now),
                    # A sharded stage's Job already retried each part backoffLimit times.
                    "permanent": info.permanent or j.per_index,
                }
                last_failure = {k: v for k, v in last_failure.items() if v is not None}
        views[key] = StageView(key, by_key[key], failed, last_failure, done.get(key.prefix),
                               int(rec.get("attempts") or 0))
    return views


# --- the decision -------------------------------------------------------------------------------


def decide(
    run: RunRef,
    spec: DistillationSpec,
    done: Mapping[str, Mapping],
    jobs: list[JobState],
    previous: Mapping[str, Any],
    now: datetime,
    config: Config,
    failures: Mapping[str, Failure] | None = None,
    waiting: Mapping[str, PodWaiting] | None = None,
) -> Decision:
    """The run's next status and actions, from its spec, storage and Jobs (see the module docstring).

    `failures`: what the pods of failed Jobs said; `waiting`: why the pods of pending Jobs do not start.
    """
    failures = dict(failures or {})
    waiting = waiting or {}
    decision = Decision(status={})
    next_check: list[datetime] = []
    jobs = _past_pending_deadline(spec, jobs, waiting, failures, now, config, next_check, decision)
    p = plan(spec, done)
    views = _stage_views(p, done, jobs, previous, failures, now)
    started_at = parse_time(previous.get("startTime")) or now

    def stop_active(why: str) -> None:
        for v in views.values():
            if v.active is not None:
                decision.delete.append((v.active.name, why))

    deadline = spec.active_deadline_seconds
    deadline_at = started_at + timedelta(seconds=deadline) if deadline else None
    failing = [v for v in views.values() if not v.done and (v.permanent or v.failures > spec.backoff_limit)]
    backing_off: list[tuple[StageView, datetime]] = []

    if p.finished:
        phase, reason, message = Phase.SUCCEEDED, Reason.FINISHED, _finished_message(p)
    elif deadline_at is not None and now >= deadline_at:
        phase, reason = Phase.FAILED, Reason.DEADLINE_EXCEEDED
        message = f"the run exceeded activeDeadlineSeconds ({deadline}s)"
        stop_active("run deadline exceeded")
    elif failing:
        v = failing[0]
        why = (v.last_failure or {}).get("message", "")
        if (v.last_failure or {}).get("reason") == Reason.PENDING_DEADLINE_EXCEEDED.value:
            phase, reason = Phase.FAILED, Reason.PENDING_DEADLINE_EXCEEDED
            message = f"{stage_name(v.key)} did not start within pendingDeadlineSeconds: {why}"
        elif v.permanent:
            phase, reason = Phase.FAILED, Reason.STAGE_FAILED
            message = f"{stage_name(v.key)} failed and retrying cannot help: {why}"
        else:
            phase, reason = Phase.FAILED, Reason.BACKOFF_LIMIT_EXCEEDED
            message = (f"{stage_name(v.key)} failed {v.failures} time(s), more than backoffLimit "
                       f"{spec.backoff_limit}: {why}")
        stop_active(f"{stage_name(v.key)} failed")
    elif spec.suspend:
        # Deleting the running Jobs frees their GPUs; a stage is atomic, so it restarts cleanly on resume.
        phase, reason = Phase.SUSPENDED, Reason.SUSPENDED
        running = [stage_name(v.key) for v in views.values() if v.active is not None]
        message = "spec.suspend is set: no stage runs"
        if running:
            message += f"; stopped {', '.join(running)}, which restarts on resume"
        stop_active("spec.suspend is set")
    else:
        for key in p.runnable:
            v = views[key]
            if v.done or v.active is not None:
                continue
            if v.failures:
                last = parse_time((v.last_failure or {}).get("time")) or now
                retry_at = last + timedelta(seconds=config.retry_delay(v.failures))
                if now < retry_at:
                    backing_off.append((v, retry_at))
                    next_check.append(retry_at)
                    continue
            decision.create.append((key, v.failures))
        phase, reason, message = _progress(views, decision.create, backing_off, waiting)
        if any(v.active is not None and not v.active.started and not v.active.suspended for v in views.values()):
            next_check.append(now + timedelta(seconds=config.pending_check_seconds))  # re-read its pods
        if deadline_at is not None:
            next_check.append(deadline_at)
            decision.deadline_seconds = max(1, math.ceil((deadline_at - now).total_seconds()))

    decision.delete += _expired_jobs(spec, views, previous, now, next_check)
    decision.status = _status(run, spec, p, done, views, previous, now, phase, reason, message, started_at,
                              decision.create, next_check)
    decision.events = _events(previous, decision.status, views, config, spec)
    before = {key_of(r): r for r in previous.get("stages") or []}
    for key, v in views.items():
        old = before.get(key, {})
        if v.done and old.get("phase") != Phase.SUCCEEDED.value:
            seconds = v.manifest.get("duration_seconds")
            decision.finished_stages.append((key, float(seconds) if isinstance(seconds, (int, float)) else None))
        decision.failed_attempts += [key for name in v.failed_jobs if name not in (old.get("failedJobs") or [])]
    return decision


def _finished_message(p: Plan) -> str:
    best = p.best_iteration
    text = "all stages finished"
    if best is not None:
        text += f"; best iteration {best} (validation {p.iterations[best].validation:.4f})"
    if p.stop_reason:
        text += f"; stopped because {p.stop_reason}"
    return text


def _past_pending_deadline(spec: DistillationSpec, jobs: list[JobState], waiting: Mapping[str, PodWaiting],
                           failures: dict[str, Failure], now: datetime, config: Config, next_check: list[datetime],
                           decision: Decision) -> list[JobState]:
    """Jobs whose pod has not started within pendingDeadlineSeconds become failed attempts (and are deleted).

    The clock starts when the Job controller started the Job (after Kueue admitted it), else at its creation.
    """
    deadline = spec.pending_deadline_seconds
    if deadline is None:
        return jobs
    out = []
    for j in jobs:
        since = j.start_time or j.created_at
        if not j.active or j.started or j.suspended or since is None:
            out.append(j)
            continue
        due = since + timedelta(seconds=deadline)
        if now < due:
            next_check.append(due)
            out.append(j)
            continue
        why = waiting.get(j.name)
        detail = f"{why.reason}: {why.message}" if why else "its pod was not running"
        message = f"Job {j.name} was pending for more than {deadline}s; {detail}"
        failures[j.name] = Failure(message=message, reason=Reason.PENDING_DEADLINE_EXCEEDED.value)
        decision.delete.append((j.name, "pendingDeadlineSeconds exceeded"))
        out.append(dataclasses.replace(j, failed=True, finished_at=now,
                                       reason=Reason.PENDING_DEADLINE_EXCEEDED.value, message=message))
    return out


def _running_name(v: StageView) -> str:
    """A running stage's name, with how many of its parts are done when it is sharded."""
    job = v.active
    if job is None or not job.per_index:
        return stage_name(v.key)
    return f"{stage_name(v.key)} ({job.parts_done}/{job.completions} parts done)"


def _progress(views: Mapping[StageKey, StageView], create: list, backing_off: list,
              waiting: Mapping[str, PodWaiting]) -> tuple[Phase, Reason, str]:
    running = [v for v in views.values() if v.active is not None and v.active.started]
    pending = [v for v in views.values() if v.active is not None and not v.active.started]
    phase = Phase.RUNNING if running or any(v.done for v in views.values()) else Phase.PENDING
    also = f"; running {', '.join(_running_name(v) for v in running)}" if running else ""
    if backing_off:
        v, at = backing_off[0]
        return (phase, Reason.BACKOFF,
                f"{stage_name(v.key)} failed {v.failures} time(s); next attempt at {timestamp(at)}{also}")
    stuck = [(v, waiting[v.active.name]) for v in pending if not v.active.suspended and v.active.name in waiting]
    if stuck:
        v, why = stuck[0]
        return (phase, why.condition_reason,
                f"{stage_name(v.key)} (Job {v.active.name}) cannot start: {why.reason}: {why.message}{also}")
    if running:
        return phase, Reason.STAGE_RUNNING, also.removeprefix("; ")
    queued = [v for v in pending if v.active.suspended]
    if queued:
        names = ", ".join(f"{stage_name(v.key)} (Job {v.active.name})" for v in queued)
        return phase, Reason.JOB_QUEUED, f"suspended until Kueue admits it: {names}"
    if pending:
        names = ", ".join(f"{stage_name(v.key)} (Job {v.active.name})" for v in pending)
        return phase, Reason.JOB_PENDING, f"waiting for the stage Job to start: {names}"
    if create:
        return phase, Reason.JOB_PENDING, "creating " + ", ".join(stage_name(k) for k, _ in create)
    return phase, Reason.STAGE_RUNNING, ""


def _expired_jobs(spec: DistillationSpec, views: Mapping[StageKey, StageView], previous: Mapping[str, Any],
                  now: datetime, next_check: list[datetime]) -> list[tuple[str, str]]:
    """Finished Jobs past ttlSecondsAfterFinished whose outcome the status already holds."""
    ttl = spec.ttl_seconds_after_finished
    if ttl is None:
        return []
    recorded = {name for rec in previous.get("stages") or [] for name in rec.get("failedJobs") or []}
    out = []
    for v in views.values():
        for j in v.jobs:
            if not j.finished or j.deleting or j.finished_at is None:
                continue
            if not ((j.succeeded and v.done) or (j.failed and j.name in recorded)):
                continue  # keep it until its outcome is in the status
            expires = j.finished_at + timedelta(seconds=ttl)
            if now >= expires:
                out.append((j.name, f"finished more than ttlSecondsAfterFinished ({ttl}s) ago"))
            else:
                next_check.append(expires)
    return out


def _status(run: RunRef, spec: DistillationSpec, p: Plan, done: Mapping[str, Mapping],
            views: Mapping[StageKey, StageView], previous: Mapping[str, Any], now: datetime, phase: Phase,
            reason: Reason, message: str, started_at: datetime, create: list, next_check: list[datetime]) -> dict:
    records = [v.record() for v in views.values()]
    for key, attempt in create:  # about to be created: show them as pending right away
        for rec in records:
            if key_of(rec) == key:
                rec["phase"] = Phase.PENDING.value
                rec["attempts"] = attempt + 1
    current = [rec for rec in records if rec["phase"] in (Phase.RUNNING.value, Phase.PENDING.value)]
    iterations = [k.iteration for k, v in views.items() if k.iteration is not None and (v.done or v.active)]
    iterations += [k.iteration for k in p.runnable if k.iteration is not None]
    baseline, results = iteration_results(spec, done)
    n_done = sum(1 for v in views.values() if v.done)

    if phase == Phase.SUCCEEDED:
        stage = EXPORT
    elif current:
        stage = ",".join(rec["name"].split("[")[0] for rec in current)
    else:
        stage = previous.get("stage", "")
    status: dict[str, Any] = {
        "phase": phase.value,
        "stage": stage,
        "iteration": max(iterations, default=0),
        "progress": f"{n_done}/{planned_stages(spec, p)}",
        "runUri": run.run_uri,
        "startTime": timestamp(started_at),
        "stages": records,
        "results": results,
    }
    if baseline:
        status["baseline"] = baseline
    if p.best_iteration is not None:
        status["bestIteration"] = p.best_iteration
    if p.stop_reason:
        status["stopReason"] = p.stop_reason
    export = done.get(StageKey(EXPORT).prefix)
    if export is not None and export.get("model"):
        status["modelUri"] = export["model"]
    if phase.finished:
        status["completionTime"] = previous.get("completionTime") or timestamp(now)
    if run.generation is not None:
        status["observedGeneration"] = run.generation
    future = [t for t in next_check if t > now]
    if future:
        status["nextCheckTime"] = timestamp(min(future))
    status["conditions"] = merge_conditions(previous.get("conditions"), _conditions(spec, phase, reason, message,
                                                                                  previous), now, run.generation)
    return status


def _conditions(spec: DistillationSpec, phase: Phase, reason: Reason, message: str,
                previous: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = [condition(ConditionType.SPEC_VALID, True, Reason.VALID)]
    progressing = phase in (Phase.PENDING, Phase.RUNNING)
    out.append(condition(ConditionType.PROGRESSING, progressing, reason, message))
    was_suspended = any(c.get("type") == ConditionType.SUSPENDED.value for c in previous.get("conditions") or [])
    if spec.suspend:
        out.append(condition(ConditionType.SUSPENDED, True, Reason.SUSPENDED, message))
    elif was_suspended:
        out.append(condition(ConditionType.SUSPENDED, False, Reason.RESUMED, "spec.suspend was unset"))
    if phase == Phase.SUCCEEDED:
        out.append(condition(ConditionType.COMPLETE, True, Reason.FINISHED, message))
    if phase == Phase.FAILED:
        out.append(condition(ConditionType.FAILED, True, reason, message))
    return out


def _events(previous: Mapping[str, Any], status: Mapping[str, Any], views: Mapping[StageKey, StageView],
            config: Config, spec: DistillationSpec) -> list[Event]:
    """Events for what changed since the previous status: stages that finished or failed, phase changes."""
    before = {key_of(r): r for r in previous.get("stages") or []}
    events = []
    for key, v in views.items():
        old = before.get(key, {})
        if v.done and old.get("phase") != Phase.SUCCEEDED.value:
            took = v.manifest.get("duration_seconds")
            text = f"{stage_name(key)} succeeded" + (f" in {took:.1f}s" if isinstance(took, (int, float)) else "")
            summary = stage_summary(key, v.manifest)
            events.append(Event("Normal", Reason.STAGE_SUCCEEDED.value, text + (f": {summary}" if summary else "")))
        new_failures = [name for name in v.failed_jobs if name not in (old.get("failedJobs") or [])]
        if new_failures and not v.done:
            lf = v.last_failure or {}
            code = f" (exit code {lf['exitCode']})" if lf.get("exitCode") is not None else ""
            text = f"{stage_name(key)} attempt {v.failures} failed{code}: {lf.get('message', '')}"
            if v.permanent:
                events.append(Event("Warning", Reason.STAGE_FAILED.value, text + "; not retried"))
            elif v.failures > spec.backoff_limit:
                events.append(Event("Warning", Reason.STAGE_FAILED.value,
                                    text + f"; backoffLimit {spec.backoff_limit} reached"))
            else:
                events.append(Event("Warning", Reason.STAGE_RETRY.value,
                                    text + f"; retry {v.failures}/{spec.backoff_limit} in "
                                    f"{config.retry_delay(v.failures):.0f}s"))
    progressing = next(c for c in status["conditions"] if c["type"] == ConditionType.PROGRESSING.value)
    was = next((c for c in previous.get("conditions") or [] if c.get("type") == ConditionType.PROGRESSING.value), {})
    if progressing["reason"] in {r.value for r in POD_PROBLEMS} and was.get("reason") != progressing["reason"]:
        events.append(Event("Warning", progressing["reason"], progressing["message"]))
    old_phase, new_phase = previous.get("phase"), status["phase"]
    if old_phase != new_phase:
        progressing = next(c for c in status["conditions"] if c["type"] == ConditionType.PROGRESSING.value)
        if new_phase == Phase.SUCCEEDED.value:
            events.append(Event("Normal", Reason.FINISHED.value, progressing["message"]))
        elif new_phase == Phase.FAILED.value:
            failed = next(c for c in status["conditions"] if c["type"] == ConditionType.FAILED.value)
            events.append(Event("Warning", failed["reason"], failed["message"]))
        elif new_phase == Phase.SUSPENDED.value:
            events.append(Event("Normal", Reason.SUSPENDED.value, progressing["message"]))
        elif old_phase == Phase.SUSPENDED.value:
            events.append(Event("Normal", Reason.RESUMED.value, "spec.suspend was unset; the run continues"))
    return events


# --- runs that cannot start ---------------------------------------------------------------------


def invalid_status(run: RunRef, reason: Reason, problems: list[str], previous: Mapping[str, Any],
                   now: datetime) -> tuple[dict[str, Any], list[Event]]:
    """Status of a run whose spec cannot run (InvalidSpec, SpecChanged): Failed, and no Jobs."""
    message = "; ".join(problems)[:4000]
    status = {
        "phase": Phase.FAILED.value,
        "observedGeneration": run.generation,
        "conditions": merge_conditions(previous.get("conditions"), [
            condition(ConditionType.SPEC_VALID, False, reason, message),
            condition(ConditionType.PROGRESSING, False, reason, message),
            condition(ConditionType.FAILED, True, reason, message),
        ], now, run.generation),
    }
    if run.run_uri:
        status["runUri"] = run.run_uri
    events = []
    old = next((c for c in previous.get("conditions") or [] if c.get("type") == ConditionType.SPEC_VALID.value), {})
    if old.get("status") != "False" or old.get("message") != message:
        events.append(Event("Warning", reason.value, message))
    return status, events



# --- writing it -------------------------------------------------------------------------------

# Every status field this module writes; a field that a new status lacks is removed.
OWNED_FIELDS = (
    "phase", "stage", "iteration", "progress", "runUri", "startTime", "completionTime", "stages", "results",
    "baseline", "bestIteration", "stopReason", "modelUri", "observedGeneration", "nextCheckTime", "conditions",
)


def status_patch(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch from `previous` to `new`: changed fields, and None for fields to remove."""
    patch = {k: v for k, v in new.items() if previous.get(k) != v}
    patch.update({k: None for k in OWNED_FIELDS if k in previous and k not in new})
    return patch
