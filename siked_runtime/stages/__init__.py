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

A sharded stage (`shards: N` on teacher, sample or eval; stages/shards.py) runs as N
parts: `run_stage(…, part=i)` runs part i alone (a pod of an Indexed Job, a local
subprocess), publishes the part's manifest, and merges the stage when it finished the
last part; without `part` every part runs here, one after another.
"""

from __future__ import annotations

import time

from siked_runtime.distributed import process_rank
from siked_runtime.graph import StageKey
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages import shards
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


def _sandbox(spec: DistillationSpec, key: StageKey) -> dict | None:
    if key.stage not in VERIFYING:
        return None
    from siked_runtime.stages.verification import check_sandbox

    return check_sandbox(spec.verification)  # refuses to start without a required layer


def _run(spec: DistillationSpec, store: Store, key: StageKey, prefix: str, extra: dict,
         part: shards.Part | None = None) -> dict:
    """Clear what an interrupted attempt left under `prefix`, run the stage (or one part of it), publish."""
    sandbox = _sandbox(spec, key)
    leader = process_rank() == 0
    if leader:
        clear_stage(store, prefix)
    start = time.perf_counter()
    with shards.working_on(part):
        manifest = _function(key.stage)(spec, shards.stage_store(store, key, part) if part else store, key.iteration)
    manifest = {"stage": key.stage, "iteration": key.iteration, **extra, **manifest,
                **({"sandbox_layers": sandbox} if sandbox is not None else {}),
                "duration_seconds": round(time.perf_counter() - start, 3)}
    return publish(store, prefix, manifest) if leader else manifest


def run_part(spec: DistillationSpec, store: Store, key: StageKey, index: int) -> dict:
    """Run part `index` of a sharded stage unless it is done; merge the stage if every part now is.

    Returns the stage's manifest once merged, else the part's.
    """
    part = shards.Part(index, shards.shard_count(spec, key.stage))
    prefix = shards.part_prefix(key.prefix, index)
    manifest = read_manifest(store, prefix)
    if manifest is None:
        manifest = _run(spec, store, key, prefix, {"part": part.index, "parts": part.count}, part)
    return shards.merge_when_complete(spec, store, key) or manifest


def run_stage(spec: DistillationSpec, store: Store, key: StageKey, part: int | None = None) -> dict:
    """Run one stage to completion and publish its manifest; a finished stage is a no-op.

    `part`: run only that part of a sharded stage (see the module docstring).
    The commands that run stages (`siked run`, `siked stage`) first move the storage and
    teacher keys out of the environment (`credentials.seal`), so no process a stage starts
    inherits them; a library caller decides that for its own process.
    """
    done = read_manifest(store, key.prefix)
    if done is not None:
        return done
    count = shards.shard_count(spec, key.stage)
    if part is not None:
        if count == 1:
            raise ValueError(f"{key} is not sharded (its shards setting is 1), so it has no part {part}")
        return run_part(spec, store, key, part)
    if count > 1:
        for index in range(count):
            manifest = run_part(spec, store, key, index)
        return manifest
    return _run(spec, store, key, key.prefix, {})
