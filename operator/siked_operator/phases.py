"""Phases, condition types and condition reasons of a DistillationRun.

One place for the words that appear in `status.phase`, `status.conditions[*]`,
Kubernetes events and the CRD's enums (`siked_operator.crd` reads them from here).
"""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    PENDING = "Pending"        # accepted; no stage Job has started yet
    RUNNING = "Running"        # at least one stage started or finished
    SUSPENDED = "Suspended"    # spec.suspend: no new stage Job starts
    SUCCEEDED = "Succeeded"    # the export stage is done
    FAILED = "Failed"          # invalid spec, a stage out of retries, or past the deadline

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(str, Enum):
    SPEC_VALID = "SpecValid"
    PROGRESSING = "Progressing"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"


class Reason(str, Enum):
    # SpecValid
    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    SPEC_CHANGED = "SpecChanged"            # a field that shapes the artifacts changed mid-run
    STORAGE_IN_USE = "StorageInUse"         # the storage holds another run's artifacts (same name, other uid)
    # Progressing / Pending-why
    JOB_PENDING = "JobPending"              # the stage Job exists but has not started (queue, scheduling)
    JOB_QUEUED = "JobQueued"                # the stage Job is suspended: Kueue has not admitted it, or preempted it
    UNSCHEDULABLE = "Unschedulable"         # the stage's pod fits no node (the scheduler's message says why)
    IMAGE_PULL_FAILED = "ImagePullFailed"   # ErrImagePull, ImagePullBackOff, InvalidImageName
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"  # e.g. a Secret the pod needs does not exist
    JOB_CREATE_FAILED = "JobCreateFailed"   # the API server refused the stage Job (message: its answer)
    JOB_CONFLICT = "JobConflict"            # a Job with the stage Job's name belongs to something else
    STAGE_RUNNING = "StageRunning"
    BACKOFF = "BackoffRetry"                # a stage failed and waits before its next attempt
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    # Complete
    FINISHED = "Finished"
    # Failed
    STAGE_FAILED = "StageFailed"            # a stage failed permanently (exit code says retrying cannot help)
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    PENDING_DEADLINE_EXCEEDED = "PendingDeadlineExceeded"  # a stage's pod did not start within the deadline
    # Events only
    STAGE_STARTED = "StageStarted"
    STAGE_SUCCEEDED = "StageSucceeded"
    STAGE_RETRY = "StageRetry"

