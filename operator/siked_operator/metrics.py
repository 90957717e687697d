"""Prometheus metrics of the operator (scraped from `--metrics-port`, default 9090).

Per-run gauges are set from the run's status after every reconcile, so they are
right again one tick after a restart; counters and histograms count what this
process observed.

    siked_runs{phase}                                          runs by phase
    siked_run_phase{namespace,run,phase}                       1 for the run's phase
    siked_run_iteration{namespace,run}                         current iteration
    siked_run_best_iteration{namespace,run}
    siked_run_accuracy{namespace,run,dataset,iteration}        accuracy per eval set (validation included)
    siked_run_strategy_share{namespace,run,iteration,strategy} the student's strategy mix on validation
    siked_run_alpha{namespace,run,iteration}                   teacher rows / all training rows
    siked_run_samples{namespace,run,iteration}                 student samples drawn
    siked_run_correct_samples{namespace,run,iteration}         … of them verified correct
    siked_run_sample_accuracy{namespace,run,iteration}         correct samples / samples
    siked_stage_duration_seconds{stage}                        histogram of finished stages
    siked_stage_jobs_created_total{stage}
    siked_stage_job_failures_total{namespace,run,stage}
    siked_stage_retries_total{namespace,run,stage}             Jobs created to retry a failed stage
    siked_reconcile_duration_seconds                           histogram of full reconciles
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from siked_operator.phases import Phase

RUN = ["namespace", "run"]

RUN_PHASE = Gauge("siked_run_phase", "1 for the run's current phase, 0 for the others", RUN + ["phase"])
RUN_ITERATION = Gauge("siked_run_iteration", "Iteration the run is in", RUN)
BEST_ITERATION = Gauge("siked_run_best_iteration", "Best iteration by validation accuracy", RUN)
ACCURACY = Gauge("siked_run_accuracy", "Accuracy per evaluation set and iteration", RUN + ["dataset", "iteration"])
STRATEGY_SHARE = Gauge("siked_run_strategy_share", "Share of the student's validation solutions per strategy",
                       RUN + ["iteration", "strategy"])
ALPHA = Gauge("siked_run_alpha", "Teacher rows / all training rows of the iteration", RUN + ["iteration"])
SAMPLES = Gauge("siked_run_samples", "Student samples drawn in the iteration", RUN + ["iteration"])
CORRECT_SAMPLES = Gauge("siked_run_correct_samples", "Student samples verified correct", RUN + ["iteration"])
SAMPLE_ACCURACY = Gauge("siked_run_sample_accuracy", "Student samples verified correct / samples drawn",
                        RUN + ["iteration"])
STAGE_DURATION = Histogram(
    "siked_stage_duration_seconds", "Run time of finished stages", ["stage"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
)
JOBS_CREATED = Counter("siked_stage_jobs_created_total", "Stage Jobs created", ["stage"])
JOB_FAILURES = Counter("siked_stage_job_failures_total", "Stage Jobs that failed", RUN + ["stage"])
RETRIES = Counter("siked_stage_retries_total", "Stage Jobs created to retry a failed attempt", RUN + ["stage"])
RECONCILE_ERRORS = Counter("siked_reconcile_errors_total",
                           "Passes that failed: storage unreadable, a Job the API refused, an unexpected error",
                           ["kind"])
STORAGE_UNAVAILABLE = Gauge("siked_run_storage_unavailable", "1 while the run's storage cannot be read", RUN)
PENDING_SECONDS = Gauge("siked_run_pending_seconds",
                        "How long the run's oldest waiting stage Job has been admitted without its pod running "
                        "(0: none waits)", RUN)
RECONCILE_SECONDS = Histogram("siked_reconcile_duration_seconds", "Time of a full reconcile of one run",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

# Per-run series and their label names, to drop them when the run goes.
_PER_RUN = (
    (RUN_PHASE, RUN + ["phase"]), (RUN_ITERATION, RUN), (BEST_ITERATION, RUN),
    (ACCURACY, RUN + ["dataset", "iteration"]), (STRATEGY_SHARE, RUN + ["iteration", "strategy"]),
    (ALPHA, RUN + ["iteration"]), (SAMPLES, RUN + ["iteration"]), (CORRECT_SAMPLES, RUN + ["iteration"]),
    (SAMPLE_ACCURACY, RUN + ["iteration"]), (JOB_FAILURES, RUN + ["stage"]), (RETRIES, RUN + ["stage"]),
    (STORAGE_UNAVAILABLE, RUN), (PENDING_SECONDS, RUN),
)


class RunsByPhase(Collector):
    """`siked_runs{phase}`, summed at scrape time from the per-run phase gauge."""

    def collect(self):
        counts = {p.value: 0.0 for p in Phase}
        for family in RUN_PHASE.collect():
            for sample in family.samples:
                counts[sample.labels["phase"]] = counts.get(sample.labels["phase"], 0.0) + sample.value
        family = GaugeMetricFamily("siked_runs", "DistillationRuns by phase", labels=["phase"])
        for phase, n in counts.items():
            family.add_metric([phase], n)
        yield family


REGISTRY.register(RunsByPhase())


def serve(port: int) -> None:
    start_http_server(port)


def observe_run(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Set the run's gauges from its status."""
    phase = status.get("phase")
    for p in Phase:
        RUN_PHASE.labels(namespace, name, p.value).set(1.0 if p.value == phase else 0.0)
    if isinstance(status.get("iteration"), int):
        RUN_ITERATION.labels(namespace, name).set(status["iteration"])
    if isinstance(status.get("bestIteration"), int):
        BEST_ITERATION.labels(namespace, name).set(status["bestIteration"])
    for result in status.get("results") or []:
        t = str(result["iteration"])
        for dataset, acc in (result.get("accuracy") or {}).items():
            ACCURACY.labels(namespace, name, dataset, t).set(acc)
        for strategy, share in (result.get("strategyShares") or {}).items():
            STRATEGY_SHARE.labels(namespace, name, t, strategy).set(share)
        if result.get("alpha") is not None:
            ALPHA.labels(namespace, name, t).set(result["alpha"])
        if result.get("samples") is not None:
            SAMPLES.labels(namespace, name, t).set(result["samples"])
        if result.get("correctSamples") is not None:
            CORRECT_SAMPLES.labels(namespace, name, t).set(result["correctSamples"])
        if result.get("sampleAccuracy") is not None:
            SAMPLE_ACCURACY.labels(namespace, name, t).set(result["sampleAccuracy"])


def forget_run(namespace: str, name: str) -> None:
    """Drop every series of a deleted run."""
    for metric, labelnames in _PER_RUN:
        seen = set()
        for family in metric.collect():
            for sample in family.samples:
                labels = sample.labels
                if labels.get("namespace") == namespace and labels.get("run") == name:
                    seen.add(tuple(labels[n] for n in labelnames))
        for values in seen:
            metric.remove(*values)
