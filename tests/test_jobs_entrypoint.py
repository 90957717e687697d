"""`siked stage …`: what a stage Job's container runs, as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from siked_jobs import EXIT_PERMANENT, EXIT_RETRYABLE, TERMINATION_MESSAGE_LIMIT
from siked_jobs.stage import exit_code_for, fit, summarize

from siked_runtime.spec import SpecError, load_manifest
from siked_runtime.storage import StorageError, open_store, read_manifest

REPO = Path(__file__).resolve().parents[1]
SIKED = str(Path(sys.executable).parent / "siked")


def store_run(uri: str, **spec_changes) -> None:
    run = load_manifest(REPO / "examples" / "smoke.yaml")
    manifest = run.to_manifest()
    manifest["spec"].update(spec_changes)
    open_store(uri).put_text("spec.yaml", yaml.safe_dump(manifest, sort_keys=False))


def stage(*args: str, env: dict[str, str] | None = None, tmp: Path) -> tuple[int, dict, str]:
    log = tmp / "termination-log"
    log.unlink(missing_ok=True)
    result = subprocess.run([SIKED, "stage", *args], capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "SIKED_TERMINATION_LOG": str(log), **(env or {})})
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert log.read_text() == json.dumps(summary, separators=(",", ":"), ensure_ascii=False)
    return result.returncode, summary, result.stderr


def test_a_stage_runs_publishes_and_summarizes(tmp_path):
    uri = (tmp_path / "run").as_uri()
    store_run(uri)
    code, summary, _ = stage("teacher", "--run-uri", uri, tmp=tmp_path)
    assert code == 0
    assert summary["status"] == "succeeded" and summary["stage"] == "teacher" and not summary["already_done"]
    manifest = read_manifest(open_store(uri), "teacher")
    assert manifest is not None and summary["metrics"]["rows"] == manifest["rows"] > 0
    assert summary["manifest"] == f"{uri}/teacher/manifest.json"

    # A finished stage is a no-op: a retried or duplicated Job redoes nothing.
    code, again, _ = stage("teacher", "--run-uri", uri, tmp=tmp_path)
    assert code == 0 and again["already_done"]
    assert read_manifest(open_store(uri), "teacher")["published_at"] == manifest["published_at"]


def test_a_pod_of_an_indexed_job_runs_its_part_and_the_last_part_publishes_the_stage(tmp_path):
    uri = (tmp_path / "run").as_uri()
    store_run(uri, teacher={"kind": "oracle", "shards": 2})
    code, summary, _ = stage("teacher", "--run-uri", uri, env={"JOB_COMPLETION_INDEX": "1"}, tmp=tmp_path)
    assert code == 0 and summary["part"] == 1
    assert summary["manifest"] == f"{uri}/teacher/parts/1/manifest.json"
    assert read_manifest(open_store(uri), "teacher") is None  # part 0 is not done yet
    code, summary, _ = stage("teacher", "--run-uri", uri, "--part", "0", tmp=tmp_path)
    assert code == 0 and summary["manifest"] == f"{uri}/teacher/manifest.json"
    assert summary["metrics"]["parts"] == 2 and summary["metrics"]["questions"] == 8
    code, summary, _ = stage("teacher", "--run-uri", uri, "--part", "7", tmp=tmp_path)
    assert code == 0 and summary["already_done"]  # a finished stage: any part of it is a no-op


def test_a_part_out_of_range_is_permanent(tmp_path):
    uri = (tmp_path / "run").as_uri()
    store_run(uri, teacher={"kind": "oracle", "shards": 2})
    code, summary, _ = stage("teacher", "--run-uri", uri, "--part", "2", tmp=tmp_path)
    assert code == EXIT_PERMANENT and "part must be in 0…1" in summary["error"]


def test_a_stage_whose_inputs_are_not_done_is_a_permanent_failure(tmp_path):
    uri = (tmp_path / "run").as_uri()
    store_run(uri)
    code, summary, _ = stage("train", "--run-uri", uri, "--iteration", "0", tmp=tmp_path)
    assert code == EXIT_PERMANENT
    assert summary["status"] == "failed" and summary["retryable"] is False
    assert "train[0] cannot run yet" in summary["error"] and "teacher" in summary["error"]


@pytest.mark.parametrize("args, expected", [
    (["bogus"], "unknown stage 'bogus'"),
    (["train"], "stage 'train' needs iteration"),
])
def test_bad_arguments_are_permanent(tmp_path, args, expected):
    uri = (tmp_path / "run").as_uri()
    store_run(uri)
    code, summary, _ = stage(*args, "--run-uri", uri, tmp=tmp_path)
    assert code == EXIT_PERMANENT and expected in summary["error"]


def test_a_run_without_a_stored_spec_is_a_permanent_failure(tmp_path):
    code, summary, _ = stage("teacher", "--run-uri", (tmp_path / "nothing").as_uri(), tmp=tmp_path)
    assert code == EXIT_PERMANENT and "spec.yaml not found" in summary["error"]


def test_an_invalid_stored_spec_is_a_permanent_failure(tmp_path):
    uri = (tmp_path / "run").as_uri()
    store_run(uri, method="magic")
    code, summary, _ = stage("teacher", "--run-uri", uri, tmp=tmp_path)
    assert code == EXIT_PERMANENT and "spec.method" in summary["error"]


def test_unreachable_storage_is_retryable(tmp_path):
    env = {"SIKED_S3_ENDPOINT": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    code, summary, _ = stage("teacher", "--run-uri", "s3://nowhere/run", env=env, tmp=tmp_path)
    assert code == EXIT_RETRYABLE and summary["retryable"] is True


@pytest.mark.integration
def test_a_stage_against_s3(tmp_path, s3_bucket):
    store_run(s3_bucket.uri)
    code, summary, _ = stage("teacher", "--run-uri", s3_bucket.uri, tmp=tmp_path)
    assert code == 0 and summary["manifest"] == f"{s3_bucket.uri}/teacher/manifest.json"
    assert read_manifest(open_store(s3_bucket.uri), "teacher")["rows"] > 0


# --- the summary and the exit codes ---------------------------------------------------------------


def test_summary_keeps_numbers_and_drops_rows():
    manifest = {"rows": 10, "alpha": 0.4, "model": "s3://m", "loss_history": [1.0] * 500,
                "accuracy": {"validation": 0.5, "test": 0.25}, "training": {"train_loss": 1.2},
                "strategy_shares": {"validation": {"cot": 1.0}}, "predictions": {"validation": "s3://p"}}
    summary = summarize(manifest)
    assert summary["rows"] == 10 and summary["alpha"] == 0.4 and summary["model"] == "s3://m"
    assert summary["accuracy"] == {"validation": 0.5, "test": 0.25}
    assert summary["strategy_shares"] == {"validation": {"cot": 1.0}}
    assert "loss_history" not in summary and "predictions" not in summary


def test_summary_fits_in_a_termination_message():
    long_error = {"stage": "train", "status": "failed", "exit_code": 1, "error": "x" * 10_000}
    assert len(fit(long_error).encode()) <= TERMINATION_MESSAGE_LIMIT
    assert json.loads(fit(long_error))["error"].startswith("xxx")
    many = {"stage": "eval", "status": "succeeded", "metrics": {f"m{i}": "y" * 200 for i in range(50)}}
    kept = json.loads(fit(many))
    assert len(fit(many).encode()) <= TERMINATION_MESSAGE_LIMIT and kept["stage"] == "eval" and kept["metrics"]


@pytest.mark.parametrize("exc, code", [
    (SpecError(["spec.x: bad"]), EXIT_PERMANENT),
    (FileNotFoundError("s3://data/missing.jsonl"), EXIT_PERMANENT),
    (ValueError("unknown stage"), EXIT_PERMANENT),
    (StorageError("S3 unreachable"), EXIT_RETRYABLE),
    (ConnectionError("reset"), EXIT_RETRYABLE),
    (TimeoutError("slow"), EXIT_RETRYABLE),
    (RuntimeError("CUDA out of memory"), 1),
])
def test_exit_codes(exc, code):
    assert exit_code_for(exc) == code


def test_the_cli_has_the_stage_command():
    from siked_runtime.cli import build_parser

    args = build_parser().parse_args(["stage", "eval", "--run-uri", "s3://b/r", "--iteration", "2"])
    assert (args.stage, args.run_uri, args.iteration) == ("eval", "s3://b/r", 2)
