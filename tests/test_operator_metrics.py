"""The operator's Prometheus metrics: set from the run's status, counted as Jobs are created, dropped with the run."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from prometheus_client import REGISTRY
from siked_operator.config import Config
from siked_operator.jobs import JobState
from siked_operator.metrics import forget_run, observe_run
from siked_operator.reconcile import reconcile_run

from siked_runtime.graph import StageKey

sys.path.insert(0, str(Path(__file__).parent))
from test_operator_reconcile import LOG, T0, RecordingKube, run_body

STATUS = {
    "phase": "Running", "iteration": 1, "bestIteration": 0,
    "results": [
        {"iteration": 0, "accuracy": {"validation": 0.25}, "strategyShares": {"cot": 1.0}},
        {"iteration": 1, "alpha": 0.667, "samples": 24, "correctSamples": 6, "sampleAccuracy": 0.25,
         "accuracy": {"validation": 0.5, "gsm8k-test": 0.4}, "strategyShares": {"cot": 0.5, "pot": 0.5}},
    ],
}


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_run_gauges_follow_the_status():
    observe_run("metrics-a", "r", STATUS)
    run = {"namespace": "metrics-a", "run": "r"}
    assert value("siked_run_phase", **run, phase="Running") == 1.0
    assert value("siked_run_phase", **run, phase="Pending") == 0.0
    assert value("siked_run_iteration", **run) == 1 and value("siked_run_best_iteration", **run) == 0
    assert value("siked_run_accuracy", **run, dataset="gsm8k-test", iteration="1") == 0.4
    assert value("siked_run_strategy_share", **run, iteration="1", strategy="pot") == 0.5
    assert value("siked_run_alpha", **run, iteration="1") == 0.667
    assert value("siked_run_alpha", **run, iteration="0") is None  # iteration 0 trains on teacher data only
    assert value("siked_run_samples", **run, iteration="1") == 24
    assert value("siked_run_correct_samples", **run, iteration="1") == 6
    assert value("siked_run_sample_accuracy", **run, iteration="1") == 0.25
    running = value("siked_runs", phase="Running")
    observe_run("metrics-a", "r", {**STATUS, "phase": "Succeeded"})
    assert value("siked_runs", phase="Running") == running - 1


def test_a_deleted_run_leaves_no_series():
    observe_run("metrics-b", "r", STATUS)
    forget_run("metrics-b", "r")
    run = {"namespace": "metrics-b", "run": "r"}
    assert value("siked_run_phase", **run, phase="Running") is None
    assert value("siked_run_sample_accuracy", **run, iteration="1") is None
    assert value("siked_run_accuracy", **run, dataset="validation", iteration="0") is None


def test_a_retried_stage_counts_a_retry_and_a_new_job(tmp_path):
    run = run_body(tmp_path)
    run["metadata"]["namespace"] = "metrics-c"
    created = value("siked_stage_jobs_created_total", stage="teacher") or 0
    failed = JobState("smoke-teacher", "smoke", StageKey("teacher"), 0, True, False, True, False, finished_at=T0)
    kube = RecordingKube()
    reconcile_run(run, [failed], Config(storage_uri=(tmp_path / "runs").as_uri()), kube, T0 + timedelta(hours=1),
                  LOG)
    assert "smoke-teacher-r1" in kube.created
    assert value("siked_stage_retries_total", namespace="metrics-c", run="smoke", stage="teacher") == 1
    assert value("siked_stage_retries_total", namespace="metrics-c", run="smoke", stage="baseline") is None
    assert value("siked_stage_jobs_created_total", stage="teacher") == created + 1
