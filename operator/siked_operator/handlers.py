"""kopf handlers for DistillationRuns: thin wrappers around `siked_operator.reconcile`.

    siked-operator --all-namespaces                  (flags: siked_operator.main)
    kopf run -m siked_operator.handlers --all-namespaces   (settings from SIKED_OPERATOR_* variables)

Each run has one driver, a kopf daemon, which re-derives the run from the API
and storage whenever one of its Jobs changes, its spec changes, or
`poll_interval` seconds pass, and is the only writer of the run's status. A pass
that finds the spec and the Jobs as the previous pass saw them costs nothing; a
restarted driver has no previous pass and looks again. Creation, resumption
and spec edits validate at once (an invalid spec fails its handler with a
PermanentError; the driver writes the InvalidSpec condition). The run's Jobs come
from a kopf index, kept from kopf's watch on Jobs and rebuilt on start before any
handler runs: a cache of the API, not state. Nothing here remembers progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from siked_operator import metrics
from siked_operator.config import Config
from siked_operator.jobs import RUN_LABEL, JobState
from siked_operator.kube import Kube, api_client
from siked_operator.reconcile import (
    Result,
    Seen,
    cleanup_run,
    is_quiet,
    reconcile_run,
    spec_problems,
)

RUNS = ("siked.io", "v1alpha1", "distillationruns")
DEBOUNCE = 0.05  # seconds a woken driver waits for more of the same burst of changes


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    settings.persistence.finalizer = "siked.io/finalizer"
    # kopf's own bookkeeping goes to annotations: the status belongs to the run's users.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="siked.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="siked.io", key="last-handled-configuration")
    # Stage and phase changes are posted as explicit events; of the log lines, warnings and
    # errors become events too, so `kubectl describe dr` shows what went wrong.
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    # Restart watches every 5 minutes: a watch that a proxy silently dropped would stall the runs.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A single replica (Deployment strategy Recreate): no peering needed.
    settings.peering.standalone = True

    if "config" not in memo:  # started with `kopf run`, not siked-operator
        memo.config = Config.from_env()
    if "kube" not in memo:
        memo.kube = Kube(api_client())
    # (namespace, run) -> the wake-up signal of the run's driver (a signal only; it holds no progress).
    memo.wakeups = {}
    if memo.get("metrics_port"):
        metrics.serve(memo.metrics_port)
        logger.info(f"metrics on :{memo.metrics_port}/metrics")


# A coroutine on purpose: kopf runs plain functions in a thread pool, and this one sees every event
# of every stage Job.
@kopf.index("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
async def stage_jobs(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> dict | None:
    """(namespace, run) -> the states of the run's stage Jobs; a changed Job wakes its run's driver.

    kopf stores the returned entry before this task yields, so the woken driver finds it.
    """
    state = JobState.from_body(body)
    if state is None:
        return None
    _wake(memo, namespace, state.run)
    return {(namespace, state.run): state}


def _wake(memo: kopf.Memo, namespace: str, name: str) -> None:
    signal = memo.wakeups.get((namespace, name))
    if signal is not None:
        signal.set()


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A deep copy the worker thread can read while kopf updates the live body (JSON: faster than deepcopy)."""
    return json.loads(json.dumps({key: body[key] for key in body}))


@kopf.on.resume(*RUNS)
@kopf.on.create(*RUNS)
@kopf.on.update(*RUNS, field="spec")
async def check(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, name)
    problems = spec_problems(body, memo.config)
    if problems:
        raise kopf.PermanentError("invalid spec: " + "; ".join(problems))


async def _pass(body: kopf.Body, memo: kopf.Memo, stage_jobs: kopf.Index, logger: logging.Logger,
                seen: Seen | None) -> Seen | None:
    """One reconcile of one run, unless nothing can have changed since the pass that saw `seen`."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    jobs = list(stage_jobs.get((namespace, name), []))  # snapshot, on the event loop
    now = datetime.now(UTC)
    if is_quiet(seen, body.get("status") or {}, meta.get("generation"), jobs, now, memo.config):
        return seen
    before = meta.get("resourceVersion")
    result = await asyncio.to_thread(_reconcile_and_patch, _plain(body), jobs, memo, now, logger)
    if result.patch:
        # The next pass must start from this status: wait for its watch event (kopf updates `body`).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_changed(body, before), timeout=2)
    for event in result.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    return result.seen


def _reconcile_and_patch(run: dict[str, Any], jobs: list[JobState], memo: kopf.Memo, now: datetime,
                         logger: logging.Logger) -> Result:
    result = reconcile_run(run, jobs, memo.config, memo.kube, now, logger)
    if result.patch:
        memo.kube.patch_run_status(run["metadata"]["namespace"], run["metadata"]["name"], result.patch)
    return result


async def _changed(body: kopf.Body, version: str | None) -> None:
    while body["metadata"].get("resourceVersion") == version:
        await asyncio.sleep(0.01)


@kopf.daemon(*RUNS, cancellation_timeout=10)
async def drive(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, stage_jobs: kopf.Index,
                stopped: kopf.DaemonStopped, logger: logging.Logger, **_: Any) -> None:
    """The run's driver: a pass now, then one per wake-up or poll interval, until the run goes."""
    key = (namespace, name)
    signal = memo.wakeups[key] = asyncio.Event()
    config: Config = memo.config
    seen: Seen | None = None
    try:
        while not stopped:
            signal.clear()
            try:
                seen = await _pass(body, memo, stage_jobs, logger, seen)
            except Exception:  # an API or storage hiccup: log it, keep driving
                logger.exception(f"reconciling {namespace}/{name} failed")
                await stopped.wait(config.poll_interval * 5)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(signal.wait(), timeout=config.poll_interval)
                # A Job's changes come in bursts (created, started, finished): take them in one pass.
                await asyncio.sleep(DEBOUNCE)
    finally:
        if memo.wakeups.get(key) is signal:
            del memo.wakeups[key]


@kopf.on.delete(*RUNS)
async def delete(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The run's Jobs go (and its artifacts, when asked); the finalizer holds the run until they did."""
    try:
        await asyncio.to_thread(cleanup_run, _plain(body), memo.config, memo.kube, logger)
    except (ApiException, OSError) as exc:  # StorageError is an OSError
        raise kopf.TemporaryError(f"cleaning up failed, retrying: {exc}", delay=30) from exc
