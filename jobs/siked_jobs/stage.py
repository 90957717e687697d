"""One stage of a stored run: the command of every stage Job's container.

    siked stage teacher --run-uri s3://bucket/runs/team-a/gsm8k
    siked stage train   --run-uri s3://bucket/runs/team-a/gsm8k --iteration 1
    siked stage sample  --run-uri s3://bucket/runs/team-a/gsm8k --iteration 2 --part 3
    python -m siked_jobs.stage eval --run-uri file:///data/runs/demo --iteration 0

It reads the resolved spec from `<run-uri>/spec.yaml` (the operator writes it
before the first stage), checks that the stage graph lets this stage run, runs
the stage function (`siked_runtime.stages.run_stage`, which publishes the
stage's manifest last) and leaves a summary: one JSON line on stdout and, when
`SIKED_TERMINATION_LOG` names a file (the Job sets it to the container's
terminationMessagePath), the same JSON there, where the operator and
`kubectl describe pod` find it without downloading any artifact.

A sharded stage (`shards: N`) runs one part per command: `--part I`, or in a pod of
an Indexed Job the pod's JOB_COMPLETION_INDEX. The part that finishes last publishes
the stage's manifest (siked_runtime.stages.shards).

A stage that is already done is a no-op that exits 0, so a retried or duplicated
Job never redoes work. Exit codes (see `siked_jobs`): 0 done, 2 permanent
failure, 75 retryable failure; an unexpected error exits 1 and is retried too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

from siked_jobs import (
    EXIT_OK,
    EXIT_PERMANENT,
    EXIT_RETRYABLE,
    TERMINATION_MESSAGE_LIMIT,
)

SPEC_KEY = "spec.yaml"  # where the operator and the local runner store the resolved manifest


class NotRunnable(ValueError):
    """The stage's inputs are not done yet: the caller asked for it too early."""


# --- the summary ------------------------------------------------------------------------------


def _compact(value: Any) -> Any:
    """Numbers, flags, short strings and flat maps of numbers survive; rows, lists and long text do not."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= 300 else None
    if isinstance(value, dict) and len(value) <= 16:
        kept = {str(k): v for k, v in value.items() if v is None or isinstance(v, (bool, int, float))}
        return kept if len(kept) == len(value) else None
    return None


def summarize(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's compact fields: counts, accuracies, shares, α, URIs (never rows or histories)."""
    out = {}
    for key, value in manifest.items():
        compact = _compact(value)
        if compact is not None or value is None:
            out[key] = compact
    # Per-set maps one level deeper (accuracy, strategy shares per eval set) are what the operator reports.
    for key in ("accuracy", "strategy_shares", "n"):
        value = manifest.get(key)
        if isinstance(value, dict) and key not in out:
            nested = {k: _compact(v) for k, v in value.items()}
            out[key] = {k: v for k, v in nested.items() if v is not None}
    return out


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


def fit(summary: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The summary as one JSON line of at most `limit` bytes: long errors are cut, the bulkiest metrics go first."""
    summary = dict(summary)
    if "error" in summary and len(_dumps(summary).encode()) > limit:
        room = limit - len(_dumps({**summary, "error": ""}).encode()) - 8
        summary["error"] = summary["error"].encode()[: max(room, 0)].decode(errors="ignore") + "…"
    metrics = dict(summary.get("metrics") or {})
    while len(_dumps(summary).encode()) > limit and metrics:
        del metrics[max(metrics, key=lambda k: len(_dumps({k: metrics[k]})))]
        summary["metrics"] = metrics
    if len(_dumps(summary).encode()) > limit:
        summary = {k: summary[k] for k in ("stage", "iteration", "status", "exit_code") if k in summary}
    return _dumps(summary)


def leave_summary(summary: dict[str, Any]) -> None:
    text = fit(summary)
    print(text, flush=True)
    path = os.environ.get("SIKED_TERMINATION_LOG")
    if path:
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:  # the summary is a convenience; the manifest is the record
            print(f"siked stage: cannot write the termination message to {path}: {exc}", file=sys.stderr)


# --- failure classes --------------------------------------------------------------------------


def exit_code_for(exc: BaseException) -> int:
    """Permanent when a retry would meet the same problem; retryable when the world may change."""
    from siked_runtime.storage import StorageError

    if isinstance(exc, FileNotFoundError):  # a dataset, the spec or an input artifact is missing
        return EXIT_PERMANENT
    if isinstance(exc, (StorageError, ConnectionError, TimeoutError, OSError)):
        return EXIT_RETRYABLE
    if isinstance(exc, (ValueError, NotImplementedError, ImportError)):  # SpecError is a ValueError
        return EXIT_PERMANENT
    return 1


# --- running one stage ------------------------------------------------------------------------


def load_spec(store):
    import yaml

    from siked_runtime.spec import SpecError, validate_spec

    if not store.exists(SPEC_KEY):
        raise FileNotFoundError(f"{store.url(SPEC_KEY)} not found: the run's spec is stored before its first stage")
    document = yaml.safe_load(store.get_text(SPEC_KEY))
    if not isinstance(document, dict) or not isinstance(document.get("spec"), dict):
        raise SpecError([f"{store.url(SPEC_KEY)} is not a DistillationRun manifest"], store.url(SPEC_KEY))
    return validate_spec(document["spec"])


def completion_index() -> int | None:
    """The pod's index in an Indexed Job (the Job controller sets JOB_COMPLETION_INDEX), None elsewhere."""
    value = os.environ.get("JOB_COMPLETION_INDEX")
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"JOB_COMPLETION_INDEX must be a whole number, got {value!r}")
    return int(value)


def which_part(spec, stage: str, part: int | None) -> int | None:
    """The part to run: `--part`, else the completion index when the stage is sharded (a multi-node train
    stage's pods have an index too, and run the whole stage)."""
    from siked_runtime.stages.shards import shard_count

    if part is None and shard_count(spec, stage) > 1:
        return completion_index()
    return part


def run(stage: str, run_uri: str, iteration: int | None, part: int | None = None) -> dict[str, Any]:
    """Run the stage (or one part of it) unless it is done; returns the summary of its manifest."""
    from siked_runtime import credentials
    from siked_runtime.graph import StageKey, plan
    from siked_runtime.stages import run_stage
    from siked_runtime.storage import list_manifests, open_store, read_manifest

    key = StageKey(stage, iteration)
    store = open_store(run_uri)
    spec = load_spec(store)
    credentials.seal([spec.teacher.api_key_env])  # no process the stage starts inherits the teacher's key
    manifest = read_manifest(store, key.prefix)
    already = manifest is not None
    if not already:
        runnable = plan(spec, list_manifests(store)).runnable
        if key not in runnable:
            waiting = ", ".join(str(k) for k in runnable) or "nothing"
            raise NotRunnable(f"{key} cannot run yet: its inputs are not done (runnable now: {waiting})")
        part = which_part(spec, stage, part)
        manifest = run_stage(spec, store, key, part=part)
    merged = already or "part" not in manifest
    prefix = key.prefix if merged else f"{key.prefix}/parts/{manifest['part']}"
    return {
        "stage": stage,
        "iteration": iteration,
        **({"part": part} if part is not None else {}),
        "status": "succeeded",
        "already_done": already,
        "manifest": store.url(f"{prefix}/manifest.json"),
        "metrics": summarize(manifest),
    }


def run_stage_command(stage: str, run_uri: str, iteration: int | None, part: int | None = None) -> int:
    """`siked stage …`: run, leave the summary, and exit with a code that says whether to retry."""
    start = time.perf_counter()
    try:
        summary = run(stage, run_uri, iteration, part)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a summary and an exit code
        traceback.print_exc()
        code = exit_code_for(exc)
        leave_summary({
            "stage": stage,
            "iteration": iteration,
            **({"part": part} if part is not None else {}),
            "status": "failed",
            "retryable": code != EXIT_PERMANENT,
            "exit_code": code,
            "error": f"{type(exc).__name__}: {exc}",
            "seconds": round(time.perf_counter() - start, 3),
        })
        return code
    summary["seconds"] = round(time.perf_counter() - start, 3)
    leave_summary(summary)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siked stage", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", help="teacher, baseline, teacher-eval, reference, sample, train, eval or export")
    parser.add_argument("--run-uri", required=True, help="the run's prefix: s3://bucket/prefix or file:///path")
    parser.add_argument("--iteration", type=int, help="iteration of sample, train and eval")
    parser.add_argument("--part", type=int, help="run only this part of a sharded stage (default: the pod's "
                        "JOB_COMPLETION_INDEX when the stage is sharded)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_stage_command(args.stage, args.run_uri, args.iteration, args.part)


if __name__ == "__main__":
    sys.exit(main())
