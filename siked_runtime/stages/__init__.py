"""Stage functions `(spec, store, iteration) -> manifest`, one module per stage.

    teacher       stages/teacher.py
    baseline      stages/evaluate.py  (run_baseline)
    teacher-eval  stages/evaluate.py  (run_teacher_eval)
    reference     stages/reference.py (method skintern: standard distillation beside it)
    sample[t]     stages/sample.py
    train[t]      stages/train.py     (SKIntern prompts: stages/internalize.py)
    eval[t]       stages/evaluate.py  (run_eval)
    export        stages/export.py

`run_stage` is what both executors call: it clears what an interrupted earlier
attempt left behind, runs the stage, and publishes its manifest last.

A stage started by torchrun (a multi-process train stage) runs in every process;
only rank 0 clears and publishes, the other ranks take part in the work.
"""

from __future__ import annotations

import os
import time

from siked_runtime.graph import StageKey
from siked_runtime.spec import DistillationSpec
from siked_runtime.storage import Store, clear_stage, publish, read_manifest


def _function(stage: str):
    # Imported on demand: the operator plans stages without the ML stack.
    from siked_runtime.stages import evaluate, export, reference, sample, teacher, train

    return {
        "teacher": teacher.run_teacher,
        "baseline": evaluate.run_baseline,
        "teacher-eval": evaluate.run_teacher_eval,
        "reference": reference.run_reference,
        "sample": sample.run_sample,
        "train": train.run_train,
        "eval": evaluate.run_eval,
        "export": export.run_export,
    }[stage]


# Stages that run model-written programs in the sandbox.
VERIFYING = frozenset({"teacher", "baseline", "teacher-eval", "sample", "eval"})


def process_rank() -> int:
    """This process's global rank when torchrun started it (its RANK variable), else 0."""
    value = os.environ.get("RANK", "0")
    if not value.isdigit():
        raise ValueError(f"RANK must be a process rank (a whole number), got {value!r}")
    return int(value)


def run_stage(spec: DistillationSpec, store: Store, key: StageKey) -> dict:
    """Run one stage to completion and publish its manifest; a finished stage is a no-op.

    The commands that run stages (`siked run`, `siked stage`) first move the storage and
    teacher keys out of the environment (`credentials.seal`), so no process a stage starts
    inherits them; a library caller decides that for its own process.
    """
    done = read_manifest(store, key.prefix)
    if done is not None:
        return done
    sandbox = None
    if key.stage in VERIFYING:
        from siked_runtime.stages.verification import check_sandbox

        sandbox = check_sandbox(spec.verification)  # refuses to start without a required layer
    leader = process_rank() == 0
    if leader:
        clear_stage(store, key.prefix)
    start = time.perf_counter()
    manifest = _function(key.stage)(spec, store, key.iteration)
    manifest = {"stage": key.stage, "iteration": key.iteration, **manifest,
                **({"sandbox_layers": sandbox} if sandbox is not None else {}),
                "duration_seconds": round(time.perf_counter() - start, 3)}
    return publish(store, key.prefix, manifest) if leader else manifest
