"""kopf handlers for DistillationRuns: thin wrappers around `siked_operator.reconcile`.

    siked-operator --all-namespaces                  (flags: siked_operator.main)
    kopf run -m siked_operator.handlers --all-namespaces   (settings from SIKED_OPERATOR_* variables)

Each run has one driver, an asyncio task started on the run's first watch event
and cancelled on its DELETED event. It re-derives the run from the API and
storage whenever one of its Jobs changes, its spec changes, or `poll_interval`
seconds pass, and is the only writer of the run's status. A pass that finds the
spec and the Jobs as the previous pass saw them costs nothing; a restarted
driver has no previous pass and looks again. While storage or the API fails,
the driver backs off exponentially. Creation, resumption and spec edits
validate at once (an invalid spec fails its handler with a PermanentError; the
driver writes the InvalidSpec condition).

The drivers are tasks of our own, not kopf daemons, because kopf puts a
finalizer on every object a daemon runs for: with the operator down,
`kubectl delete dr` (and deleting the namespace) would hang. Only a run with
`spec.storage.deleteOnRunDeletion` gets a finalizer (its delete handler removes
the artifacts); the Jobs of every run go with it through their ownerReference.

The run's Jobs come from `siked_operator.watch.StageJobs`, a cache kept from a
watch with a server-side label selector. Nothing here remembers progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from siked_operator import metrics
from siked_operator.config import Config
from siked_operator.kube import Kube, api_client
from siked_operator.reconcile import Result, Seen, cleanup_run, is_quiet, reconcile_run, spec_problems
from siked_operator.watch import StageJobs

RUNS = ("siked.io", "v1alpha1", "distillationruns")
DEBOUNCE = 0.05  # seconds a woken driver waits for more of the same burst of changes


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
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
    if "config" not in memo:  # started with `kopf run`, not siked-operator
        memo.config = Config.from_env()
    # Every API request of kopf's own has a deadline too, like ours.
    settings.networking.request_timeout = memo.config.request_timeout
    settings.networking.connect_timeout = 10
    # One active replica is a Lease's job (siked_operator.leader, taken before kopf starts), not peering's.
    settings.peering.standalone = True

    client = api_client()
    if "kube" not in memo:
        memo.kube = Kube(client, timeout=memo.config.request_timeout)
    memo.drivers = {}  # (namespace, run) -> its Driver: a task and its wake-up signal, never progress
    loop = asyncio.get_running_loop()
    memo.jobs = StageJobs(client, memo.get("namespaces") or None,
                          lambda namespace, run: loop.call_soon_threadsafe(_wake, memo, namespace, run),
                          request_timeout=memo.config.request_timeout)
    memo.jobs.start()
    if memo.get("metrics_port"):
        metrics.serve(memo.metrics_port)
        logger.info(f"metrics on :{memo.metrics_port}/metrics")


@kopf.on.cleanup()
def stop_watching(memo: kopf.Memo, **_: Any) -> None:
    if "jobs" in memo:
        memo.jobs.stop()


@dataclass
class Driver:
    task: asyncio.Task | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    body: dict[str, Any] = field(default_factory=dict)  # the run as its latest watch event showed it
    updated: asyncio.Event = field(default_factory=asyncio.Event)  # set by each new version of `body`


def _wake(memo: kopf.Memo, namespace: str, name: str) -> None:
    driver = memo.drivers.get((namespace, name))
    if driver is not None:
        driver.wakeup.set()


def _plain(body: Any) -> dict[str, Any]:
    """A deep copy the worker thread can read (JSON: faster than deepcopy)."""
    return json.loads(json.dumps({key: body[key] for key in body}))


@kopf.on.event(*RUNS)
async def track(event: kopf.RawEvent, namespace: str, name: str, memo: kopf.Memo, logger: logging.Logger,
                **_: Any) -> None:
    """Start the run's driver on its first event, hand it every newer version, stop it when the run is gone."""
    key = (namespace, name)
    if event["type"] == "DELETED":
        driver = memo.drivers.pop(key, None)
        if driver is not None and driver.task is not None:
            driver.task.cancel()
        metrics.forget_run(namespace, name)
        return
    driver = memo.drivers.get(key)
    if driver is None:
        driver = memo.drivers[key] = Driver()
    driver.body = event["object"]
    driver.updated.set()
    if driver.task is None or driver.task.done():
        driver.task = asyncio.create_task(drive(key, memo, logger), name=f"drive {namespace}/{name}")
    driver.wakeup.set()


@kopf.on.resume(*RUNS)
@kopf.on.create(*RUNS)
@kopf.on.update(*RUNS, field="spec")
async def check(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, name)
    problems = spec_problems(body, memo.config)
    if problems:
        raise kopf.PermanentError("invalid spec: " + "; ".join(problems))


async def _pass(driver: Driver, memo: kopf.Memo, logger: logging.Logger, seen: Seen | None) -> Result | None:
    """One reconcile of one run, unless nothing can have changed since the pass that saw `seen` (then None)."""
    body = driver.body
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    jobs = memo.jobs.of(namespace, name)
    now = datetime.now(UTC)
    if is_quiet(seen, body.get("status") or {}, meta.get("generation"), jobs, now, memo.config):
        return None
    before = meta.get("resourceVersion")
    result = await asyncio.to_thread(_reconcile_and_patch, _plain(body), jobs, memo, now, logger)
    if result.patch:
        # The next pass must start from this status: wait for its watch event.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_changed(driver, before), timeout=2)
    for event in result.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    return result


def _reconcile_and_patch(run: dict[str, Any], jobs: list, memo: kopf.Memo, now: datetime,
                         logger: logging.Logger) -> Result:
    result = reconcile_run(run, jobs, memo.config, memo.kube, now, logger)
    if result.patch:
        memo.kube.patch_run_status(run["metadata"]["namespace"], run["metadata"]["name"], result.patch)
    return result


async def _changed(driver: Driver, version: str | None) -> None:
    # Woken by each watch event of the run (no polling: a thousand drivers waiting would spin the loop).
    while driver.body["metadata"].get("resourceVersion") == version:
        driver.updated.clear()
        await driver.updated.wait()


async def drive(key: tuple[str, str], memo: kopf.Memo, logger: logging.Logger) -> None:
    """The run's driver: a pass now, then one per wake-up or poll interval, until the run goes.

    While passes fail (storage or the API down), the next one waits twice as long as the last, up to
    `outage_backoff_max_seconds`, and wake-ups do not cut the wait short.
    """
    config: Config = memo.config
    seen: Seen | None = None
    troubles = 0
    while not memo.jobs.ready.is_set():  # a pass before the first listing would not see existing Jobs
        await asyncio.sleep(0.05)
    while (driver := memo.drivers.get(key)) is not None:
        driver.wakeup.clear()
        try:
            result = await _pass(driver, memo, logger, seen)
            if result is not None:
                seen = result.seen
                troubles = troubles + 1 if result.trouble else 0
        except Exception:  # an API hiccup or a bug: log it (one event per failed pass, spaced by the backoff)
            logger.exception(f"reconciling {key[0]}/{key[1]} failed")
            metrics.RECONCILE_ERRORS.labels("unexpected").inc()
            troubles += 1
        if troubles:
            await asyncio.sleep(config.outage_delay(troubles))
            continue
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(driver.wakeup.wait(), timeout=config.poll_interval)
            # A Job's changes come in bursts (created, started, finished): take them in one pass.
            await asyncio.sleep(DEBOUNCE)


def _deletes_artifacts(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("storage") or {}).get("deleteOnRunDeletion"))


@kopf.on.delete(*RUNS, when=_deletes_artifacts)
async def delete(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The run's artifacts go (spec.storage.deleteOnRunDeletion); the finalizer holds the run until they did."""
    try:
        await asyncio.to_thread(cleanup_run, _plain(body), memo.config, memo.kube, logger)
    except (ApiException, OSError) as exc:  # StorageError is an OSError
        raise kopf.TemporaryError(f"cleaning up failed, retrying: {exc}", delay=30) from exc


def identity() -> str:
    """This replica's name in the Lease: the pod's name (HOSTNAME), and the process."""
    return f"{os.environ.get('HOSTNAME', 'siked-operator')}-{os.getpid()}"
