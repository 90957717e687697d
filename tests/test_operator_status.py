"""The operator's decisions: status, Jobs to create or delete, events. Pure, no cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from siked_operator.config import Config
from siked_operator.jobs import JobState
from siked_operator.phases import Phase, Reason
from siked_operator.reconcile import Seen, is_quiet
from siked_operator.status import (
    Failure,
    PodWaiting,
    RunRef,
    decide,
    invalid_status,
    jobs_digest,
    status_patch,
    timestamp,
)

from siked_runtime.graph import StageKey
from siked_runtime.spec import validate_spec

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
RUN = RunRef("smoke", "default", 1, "s3://runs/default/smoke")
CONFIG = Config(retry_backoff_seconds=10)


def spec(**overrides):
    base = {"student": {"model": "builtin:tiny-random"}, "iterations": {"max": 1, "earlyStopping": {"patience": None}}}
    return validate_spec({**base, **overrides})


def manifest(stage: str, iteration: int | None = None, acc: float = 0.5) -> dict:
    shares = {"cot": 0.5, "l2m": 0.25, "pot": 0.25}
    body = {"stage": stage, "iteration": iteration, "duration_seconds": 12.5,
            "published_at": "2026-03-01T11:59:00+00:00"}
    if stage in ("eval", "baseline"):
        return body | {"accuracy": {"validation": acc, "gsm8k-test": acc / 2},
                       "strategy_shares": {"validation": shares}}
    if stage == "train":
        return body | {"rows": 10, "teacher_rows": 6, "self_rows": 4 if iteration else 0,
                       "alpha": 0.6 if iteration else 1.0, "model": f"s3://runs/m{iteration}",
                       "strategy_shares": shares, "loss_history": [3.0] * 100, "training": {"train_loss": 1.25}}
    if stage == "sample":
        return body | {"samples": 40, "correct_samples": 9, "sample_accuracy": 0.225}
    if stage == "export":
        return body | {"model": "s3://runs/final/model"}
    return body | {"rows": 30}


def done(*keys: StageKey, acc: dict[int, float] | None = None) -> dict:
    acc = acc or {}
    return {k.prefix: manifest(k.stage, k.iteration, acc.get(k.iteration, 0.5)) for k in keys}


def job(key: StageKey, state: str = "running", attempt: int = 0, finished: datetime | None = None,
        name: str | None = None) -> JobState:
    from siked_operator.jobs import job_name

    return JobState(
        name=name or job_name("smoke", key, attempt), run="smoke", key=key, attempt=attempt,
        started=state != "pending", succeeded=state == "succeeded", failed=state == "failed", deleting=False,
        finished_at=finished or (T0 if state in ("succeeded", "failed") else None),
        reason="BackoffLimitExceeded" if state == "failed" else None,
    )


TEACHER, BASELINE = StageKey("teacher"), StageKey("baseline")
TRAIN0, EVAL0, SAMPLE1, TRAIN1, EVAL1, EXPORT = (StageKey("train", 0), StageKey("eval", 0), StageKey("sample", 1),
                                                  StageKey("train", 1), StageKey("eval", 1), StageKey("export"))
ALL = (TEACHER, BASELINE, TRAIN0, EVAL0, SAMPLE1, TRAIN1, EVAL1, EXPORT)


def stage(status: dict, name: str) -> dict:
    return next(s for s in status["stages"] if s["name"] == name)


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


# --- starting and advancing -----------------------------------------------------------------------


def test_a_new_run_starts_its_first_stages():
    d = decide(RUN, spec(), {}, [], {}, T0, CONFIG)
    assert d.create == [(TEACHER, 0), (BASELINE, 0)]
    assert d.phase == Phase.PENDING
    s = d.status
    assert s["progress"] == "0/8" and s["iteration"] == 0 and s["runUri"] == RUN.run_uri
    assert s["startTime"] == timestamp(T0) and s["observedGeneration"] == 1
    assert stage(s, "teacher")["phase"] == "Pending"
    assert condition(s, "SpecValid")["status"] == "True"
    assert condition(s, "Progressing")["reason"] == Reason.JOB_PENDING.value


def test_nothing_is_created_twice_while_jobs_run():
    d = decide(RUN, spec(), {}, [job(TEACHER), job(BASELINE, "pending")], {}, T0, CONFIG)
    assert d.create == [] and d.delete == []
    assert d.phase == Phase.RUNNING
    assert d.status["stage"] == "teacher,baseline"
    assert stage(d.status, "baseline")["phase"] == "Pending"
    assert condition(d.status, "Progressing")["message"] == "running teacher"


def test_a_job_that_has_not_started_keeps_the_run_pending_and_says_why():
    d = decide(RUN, spec(evaluation={"baseline": False}), {}, [job(TEACHER, "pending")], {}, T0, CONFIG)
    assert d.phase == Phase.PENDING
    progressing = condition(d.status, "Progressing")
    assert progressing["reason"] == "JobPending" and "smoke-teacher" in progressing["message"]


def test_the_chain_follows_the_stage_graph():
    d = decide(RUN, spec(), done(TEACHER), [job(TEACHER, "succeeded"), job(BASELINE)], {}, T0, CONFIG)
    assert d.create == [(TRAIN0, 0)]
    d = decide(RUN, spec(), done(TEACHER, BASELINE, TRAIN0, EVAL0), [], {}, T0, CONFIG)
    assert d.create == [(SAMPLE1, 0)]
    assert d.status["iteration"] == 1 and d.status["progress"] == "4/8"


def test_stage_events_and_results_as_stages_finish():
    before = decide(RUN, spec(), done(TEACHER), [job(BASELINE), job(TRAIN0)], {}, T0, CONFIG).status
    d = decide(RUN, spec(), done(TEACHER, BASELINE, TRAIN0, EVAL0), [], before, T0, CONFIG)
    reasons = [(e.reason, e.message.split(" ")[0]) for e in d.events]
    assert ("StageSucceeded", "baseline") in reasons and ("StageSucceeded", "eval[0]") in reasons
    assert ("StageSucceeded", "teacher") not in reasons  # already reported
    assert {k for k, _ in d.finished_stages} == {BASELINE, TRAIN0, EVAL0}
    [r0] = d.status["results"]
    assert r0["accuracy"] == {"validation": 0.5, "gsm8k-test": 0.25}
    assert r0["teacherRows"] == 6 and r0["modelUri"] == "s3://runs/m0" and r0["trainLoss"] == 1.25
    assert "loss_history" not in str(d.status)  # never rows or histories in status
    assert d.status["baseline"] == {"validation": 0.5, "gsm8k-test": 0.25}
    assert d.status["bestIteration"] == 0


def test_a_finished_run_succeeds_with_its_results():
    d = decide(RUN, spec(), done(*ALL, acc={0: 0.4, 1: 0.6}), [], {"phase": "Running"}, T0, CONFIG)
    assert d.phase == Phase.SUCCEEDED and d.create == []
    s = d.status
    assert s["bestIteration"] == 1 and s["stage"] == "export" and s["progress"] == "8/8"
    assert s["modelUri"] == "s3://runs/final/model" and s["completionTime"] == timestamp(T0)
    r1 = s["results"][1]
    assert r1["alpha"] == 0.6 and r1["samples"] == 40 and r1["correctSamples"] == 9
    assert r1["strategyShares"] == {"cot": 0.5, "l2m": 0.25, "pot": 0.25}
    assert condition(s, "Complete")["status"] == "True"
    assert condition(s, "Progressing")["status"] == "False"
    assert d.events[-1].reason == "Finished" and "best iteration 1" in d.events[-1].message


def test_early_stopping_shortens_the_plan():
    s = spec(iterations={"max": 5, "earlyStopping": {"patience": 1}})
    keys = (TEACHER, BASELINE, TRAIN0, EVAL0, SAMPLE1, TRAIN1, EVAL1)
    d = decide(RUN, s, done(*keys, acc={0: 0.5, 1: 0.4}), [], {}, T0, CONFIG)
    assert d.create == [(EXPORT, 0)]
    assert d.status["progress"] == "7/8" and "stopReason" in d.status


# --- failures and retries -------------------------------------------------------------------------


def test_a_failed_attempt_is_retried_after_a_backoff():
    failed = job(TEACHER, "failed", finished=T0)
    failures = {failed.name: Failure(exit_code=1, message="RuntimeError: CUDA out of memory")}
    d = decide(RUN, spec(), {}, [failed, job(BASELINE)], {}, T0 + timedelta(seconds=3), CONFIG, failures)
    assert d.create == []
    assert condition(d.status, "Progressing")["reason"] == "BackoffRetry"
    assert d.status["nextCheckTime"] == timestamp(T0 + timedelta(seconds=10))
    rec = stage(d.status, "teacher")
    assert rec["failedJobs"] == ["smoke-teacher"] and rec["phase"] == "Failed"
    assert rec["lastFailure"]["exitCode"] == 1 and "out of memory" in rec["lastFailure"]["message"]
    [event] = d.events
    assert event.reason == "StageRetry" and "retry 1/3" in event.message
    assert d.failed_attempts == [TEACHER]

    later = decide(RUN, spec(), {}, [failed, job(BASELINE)], d.status, T0 + timedelta(seconds=11), CONFIG)
    assert later.create == [(TEACHER, 1)]
    assert later.events == []  # the failure was reported once
    assert stage(later.status, "teacher")["attempts"] == 2


def test_backoff_doubles():
    assert [CONFIG.retry_delay(k) for k in (1, 2, 3)] == [10, 20, 40]
    assert Config(retry_backoff_seconds=100, retry_backoff_max_seconds=150).retry_delay(3) == 150


def test_the_run_fails_after_backoff_limit_and_stops_other_jobs():
    s = spec(backoffLimit=1)
    jobs = [job(TEACHER, "failed"), job(TEACHER, "failed", attempt=1), job(BASELINE)]
    d = decide(RUN, s, {}, jobs, {}, T0 + timedelta(hours=1), CONFIG, {})
    assert d.phase == Phase.FAILED and d.create == []
    assert d.delete == [("smoke-baseline", "teacher failed")]
    failed = condition(d.status, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "backoffLimit 1" in failed["message"]
    assert {e.reason for e in d.events} >= {"StageFailed", "BackoffLimitExceeded"}
    # Raising backoffLimit lets the run try again: nothing about the failure is terminal in itself.
    again = decide(RUN, spec(backoffLimit=3), {}, jobs, d.status, T0 + timedelta(hours=1), CONFIG)
    assert again.create == [(TEACHER, 2)] and again.phase != Phase.FAILED


def test_a_permanent_failure_is_not_retried():
    failed = job(TEACHER, "failed")
    d = decide(RUN, spec(), {}, [failed], {}, T0, CONFIG, {failed.name: Failure(2, "SpecError: bad dataset")})
    assert d.phase == Phase.FAILED
    assert condition(d.status, "Failed")["reason"] == "StageFailed"
    assert "bad dataset" in condition(d.status, "Failed")["message"]
    assert stage(d.status, "teacher")["lastFailure"]["permanent"] is True


def test_failed_attempts_are_remembered_when_their_jobs_are_gone():
    failed = job(TEACHER, "failed")
    first = decide(RUN, spec(), {}, [failed, job(BASELINE)], {}, T0, CONFIG, {failed.name: Failure(1, "boom")})
    # The failed Job was cleaned up (ttlSecondsAfterFinished): the status still counts it.
    d = decide(RUN, spec(), {}, [job(BASELINE)], first.status, T0 + timedelta(minutes=5), CONFIG)
    assert d.create == [(TEACHER, 1)]
    assert stage(d.status, "teacher")["failedJobs"] == ["smoke-teacher"]


# --- suspend, deadline, TTL -----------------------------------------------------------------------


def test_suspend_deletes_the_running_stage_which_restarts_on_resume():
    s = spec(suspend=True)
    d = decide(RUN, s, done(TEACHER), [job(BASELINE)], {"phase": "Running"}, T0, CONFIG)
    assert d.phase == Phase.SUSPENDED and d.create == []
    assert d.delete == [("smoke-baseline", "spec.suspend is set")]  # its GPUs go back to the cluster
    assert "stopped baseline" in condition(d.status, "Suspended")["message"]
    assert [e.reason for e in d.events] == ["StageSucceeded", "Suspended"]
    # The deleted Job is not a failure: on resume the stage starts again as attempt 0.
    resumed = decide(RUN, spec(), done(TEACHER), [], d.status, T0, CONFIG)
    assert resumed.create == [(BASELINE, 0), (TRAIN0, 0)]
    assert "failedJobs" not in stage(resumed.status, "baseline")
    assert condition(resumed.status, "Suspended")["status"] == "False"
    assert "Resumed" in [e.reason for e in resumed.events]


def test_a_suspended_new_run_starts_nothing():
    d = decide(RUN, spec(suspend=True), {}, [], {}, T0, CONFIG)
    assert d.create == [] and d.phase == Phase.SUSPENDED


def test_active_deadline():
    s = spec(activeDeadlineSeconds=600)
    d = decide(RUN, s, {}, [], {}, T0, CONFIG)
    assert d.deadline_seconds == 600 and d.status["nextCheckTime"] == timestamp(T0 + timedelta(seconds=600))
    later = decide(RUN, s, done(TEACHER), [job(BASELINE), job(TRAIN0)], d.status, T0 + timedelta(seconds=601),
                   CONFIG)
    assert later.phase == Phase.FAILED and later.create == []
    assert sorted(name for name, _ in later.delete) == ["smoke-baseline", "smoke-it0-train"]
    assert condition(later.status, "Failed")["reason"] == "DeadlineExceeded"
    mid = decide(RUN, s, done(TEACHER), [job(BASELINE)], d.status, T0 + timedelta(seconds=500), CONFIG)
    assert mid.deadline_seconds == 100


def test_finished_jobs_are_deleted_after_their_ttl_once_recorded():
    s = spec(ttlSecondsAfterFinished=60)
    finished = job(TEACHER, "succeeded", finished=T0)
    d = decide(RUN, s, done(TEACHER), [finished, job(BASELINE)], {}, T0 + timedelta(seconds=30), CONFIG)
    assert d.delete == [] and d.status["nextCheckTime"] == timestamp(T0 + timedelta(seconds=60))
    d = decide(RUN, s, done(TEACHER), [finished, job(BASELINE)], {}, T0 + timedelta(seconds=61), CONFIG)
    assert d.delete == [("smoke-teacher", "finished more than ttlSecondsAfterFinished (60s) ago")]
    # A failed Job stays until the status holds its failure.
    failed = job(BASELINE, "failed", finished=T0)
    d = decide(RUN, s, {}, [failed], {}, T0 + timedelta(seconds=61), CONFIG, {})
    assert ("smoke-baseline", "finished more than ttlSecondsAfterFinished (60s) ago") not in d.delete
    d2 = decide(RUN, s, {}, [failed], d.status, T0 + timedelta(seconds=62), CONFIG)
    assert [n for n, _ in d2.delete] == ["smoke-baseline"]


# --- invalid specs, patches, quiet ticks ----------------------------------------------------------


def test_invalid_spec_status():
    status, events = invalid_status(RUN, Reason.INVALID_SPEC, ["spec.student: required field is missing"], {}, T0)
    assert status["phase"] == "Failed"
    valid = condition(status, "SpecValid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec" and "spec.student" in valid["message"]
    assert [e.reason for e in events] == ["InvalidSpec"]
    again, events = invalid_status(RUN, Reason.INVALID_SPEC, ["spec.student: required field is missing"], status,
                                   T0 + timedelta(seconds=5))
    assert events == [] and condition(again, "SpecValid")["lastTransitionTime"] == timestamp(T0)


def test_status_patch_removes_what_the_new_status_lacks():
    before = {"phase": "Running", "nextCheckTime": "x", "stage": "train", "kopf": {"x": 1}}
    patch = status_patch(before, {"phase": "Running", "stage": "eval"})
    assert patch == {"stage": "eval", "nextCheckTime": None}


def test_conditions_keep_their_transition_time():
    first = decide(RUN, spec(), {}, [job(TEACHER), job(BASELINE)], {}, T0, CONFIG).status
    later = decide(RUN, spec(), {}, [job(TEACHER), job(BASELINE)], first, T0 + timedelta(minutes=3), CONFIG).status
    assert condition(later, "Progressing")["lastTransitionTime"] == timestamp(T0)


def test_passes_that_would_find_nothing_new_are_skipped():
    jobs = [job(TEACHER), job(BASELINE)]
    seen = Seen(1, jobs_digest(1, jobs), T0)
    status = {"observedGeneration": 1, "phase": "Running"}
    assert is_quiet(seen, status, 1, jobs, T0 + timedelta(seconds=5), CONFIG)
    assert not is_quiet(None, status, 1, jobs, T0, CONFIG)                        # a fresh driver looks
    assert not is_quiet(seen, status, 2, jobs, T0, CONFIG)                        # the spec changed
    assert not is_quiet(seen, status, 1, [job(TEACHER, "succeeded"), jobs[1]], T0, CONFIG)  # a Job changed
    assert not is_quiet(seen, status, 1, jobs, T0 + timedelta(seconds=CONFIG.resync_seconds + 1), CONFIG)
    due = {**status, "nextCheckTime": timestamp(T0 + timedelta(seconds=2))}      # a retry or deadline
    assert is_quiet(seen, due, 1, jobs, T0 + timedelta(seconds=1), CONFIG)
    assert not is_quiet(seen, due, 1, jobs, T0 + timedelta(seconds=3), CONFIG)
    done = {**status, "phase": "Succeeded"}
    assert is_quiet(seen, done, 1, jobs, T0 + timedelta(days=1), CONFIG)


def test_config_from_environment():
    config = Config.from_env({"SIKED_OPERATOR_STORAGE_URI": "s3://b/runs", "SIKED_OPERATOR_POLL_INTERVAL": "0.5",
                              "SIKED_OPERATOR_STAGE_COMMAND": "python -m siked_jobs.stage"})
    assert config.storage_uri == "s3://b/runs" and config.poll_interval == 0.5
    assert config.stage_command == ("python", "-m", "siked_jobs.stage")
    assert Config.from_env({}).storage_uri is None


@pytest.mark.parametrize("phase", [p.value for p in Phase])
def test_every_phase_is_in_the_crd(phase):
    from siked_operator.crd import status_schema

    assert phase in status_schema()["properties"]["phase"]["enum"]


# --- pods that do not start, Kueue ----------------------------------------------------------------


def pending(key: StageKey, created: datetime = T0, **changes) -> JobState:
    import dataclasses

    return dataclasses.replace(job(key, "pending"), created_at=created, **changes)


@pytest.mark.parametrize("kubelet_reason, reason", [
    ("Unschedulable", Reason.UNSCHEDULABLE), ("ErrImagePull", Reason.IMAGE_PULL_FAILED),
    ("ImagePullBackOff", Reason.IMAGE_PULL_FAILED), ("CreateContainerConfigError", Reason.CONTAINER_CONFIG_ERROR)])
def test_a_pod_that_cannot_start_says_why_once(kubelet_reason, reason):
    why = PodWaiting(kubelet_reason, "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    d = decide(RUN, spec(), {}, [pending(TEACHER), pending(BASELINE)], {}, T0, CONFIG,
               waiting={"smoke-teacher": why})
    progressing = condition(d.status, "Progressing")
    assert progressing["reason"] == reason.value
    assert "teacher (Job smoke-teacher) cannot start" in progressing["message"]
    assert kubelet_reason in progressing["message"] and "Insufficient nvidia.com/gpu" in progressing["message"]
    assert [e.reason for e in d.events] == [reason.value]
    # Its pods are looked at again soon (pod changes do not show in the Job).
    assert d.status["nextCheckTime"] == timestamp(T0 + timedelta(seconds=CONFIG.pending_check_seconds))
    again = decide(RUN, spec(), {}, [pending(TEACHER), pending(BASELINE)], d.status, T0 + timedelta(seconds=10),
                   CONFIG, waiting={"smoke-teacher": why})
    assert again.events == [] and again.phase == Phase.PENDING  # one event per problem, not per pass


def test_pending_deadline_fails_the_run_with_the_pods_reason():
    s = spec(pendingDeadlineSeconds=60)
    why = {"smoke-teacher": PodWaiting("ImagePullBackOff", 'Back-off pulling image "ghcr.io/x:typo"')}
    early = decide(RUN, s, {}, [pending(TEACHER)], {}, T0 + timedelta(seconds=30), CONFIG, waiting=why)
    assert early.phase == Phase.PENDING and early.delete == []
    d = decide(RUN, s, {}, [pending(TEACHER)], early.status, T0 + timedelta(seconds=61), CONFIG, waiting=why)
    assert d.phase == Phase.FAILED and ("smoke-teacher", "pendingDeadlineSeconds exceeded") in d.delete
    failed = condition(d.status, "Failed")
    assert failed["reason"] == "PendingDeadlineExceeded" and "ImagePullBackOff" in failed["message"]
    assert stage(d.status, "teacher")["failedJobs"] == ["smoke-teacher"]
    # The Job is gone on the next pass; the run stays failed and starts nothing.
    later = decide(RUN, s, {}, [], d.status, T0 + timedelta(seconds=70), CONFIG)
    assert later.phase == Phase.FAILED and later.create == []


def test_the_pending_clock_starts_when_kueue_admits_the_job():
    s = spec(pendingDeadlineSeconds=60)
    queued = pending(TEACHER, suspended=True)
    d = decide(RUN, s, {}, [queued], {}, T0 + timedelta(hours=3), CONFIG)
    assert d.phase == Phase.PENDING and d.delete == []
    assert condition(d.status, "Progressing")["reason"] == "JobQueued"
    admitted = pending(TEACHER, start_time=T0 + timedelta(hours=3))
    assert decide(RUN, s, {}, [admitted], d.status, T0 + timedelta(hours=3, seconds=30), CONFIG).delete == []


def test_a_kueue_suspension_is_no_failure():
    running = decide(RUN, spec(), done(TEACHER), [job(BASELINE), job(TRAIN0)], {}, T0, CONFIG)
    requeued = decide(RUN, spec(), done(TEACHER), [job(BASELINE), pending(TRAIN0, suspended=True)], running.status,
                      T0, CONFIG)
    assert requeued.delete == [] and requeued.create == []
    assert condition(requeued.status, "Progressing")["reason"] == "StageRunning"
    requeued = decide(RUN, spec(), done(TEACHER, BASELINE), [pending(TRAIN0, suspended=True)], running.status,
                      T0, CONFIG)
    assert condition(requeued.status, "Progressing")["reason"] == "JobQueued"
    assert "failedJobs" not in stage(requeued.status, "train[0]") and requeued.phase == Phase.RUNNING


# --- sharded stages -------------------------------------------------------------------------------


def test_a_sharded_stage_shows_its_parts_and_fails_the_run_once_a_part_used_up_its_retries():
    import dataclasses

    s = spec(sampling={"shards": 3}, evaluation={"baseline": False})
    before = done(TEACHER, TRAIN0, EVAL0)
    running = dataclasses.replace(job(SAMPLE1), completions=3, completed_indexes="0,2", per_index=True)
    d = decide(RUN, s, before, [running], {}, T0, CONFIG)
    assert d.create == [] and condition(d.status, "Progressing")["message"] == "running sample[1] (2/3 parts done)"
    failed = dataclasses.replace(job(SAMPLE1, "failed"), completions=3, completed_indexes="0,2", failed_indexes="1",
                                 per_index=True, reason="FailedIndexes")
    d = decide(RUN, s, before, [failed], {}, T0, CONFIG, {failed.name: Failure(75, "ConnectionError: reset")})
    assert d.create == [] and d.phase == Phase.FAILED  # the Job retried part 1 backoffLimit times already
    rec = stage(d.status, "sample[1]")["lastFailure"]
    assert rec["permanent"] is True and rec["message"] == "failed parts 1 of 3: ConnectionError: reset"
