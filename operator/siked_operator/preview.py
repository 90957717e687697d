"""The Job manifests the operator would create for a run, without a cluster (`siked jobs RUN.yaml`).

    jobs = preview_jobs(load_manifest("run.yaml"), Config.from_env(), stage="train", iteration=1)

The same pure builder as the operator (`siked_operator.jobs.build_stage_job`), for every stage the
stage graph plans when every iteration runs (no early stop), or for the stages asked for. Users review
them, or check them against their cluster's admission with `kubectl apply --dry-run=server`. A
multi-node train stage's headless Service comes right before its Job, as the operator creates them.
"""

from __future__ import annotations

from typing import Any

from siked_operator.config import Config
from siked_operator.jobs import build_stage_job, build_stage_service
from siked_runtime.graph import StageKey, plan
from siked_runtime.spec import API_VERSION, KIND, DistillationRun, EarlyStoppingSpec, SpecError

# A run that does not exist yet has no uid; its Jobs' ownerReference gets this one.
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def planned_keys(run: DistillationRun) -> list[StageKey]:
    """Every stage of the run in the order the graph starts them, as if no iteration stopped early."""
    iterations = run.spec.iterations.model_copy(update={
        "early_stopping": EarlyStoppingSpec(patience=None), "target_accuracy": None})
    spec = run.spec.model_copy(update={"iterations": iterations})
    done: dict[str, dict[str, Any]] = {}
    order: list[StageKey] = []
    for _ in range(10_000):
        p = plan(spec, done)
        if p.finished or not p.runnable:
            return order
        for key in p.runnable:
            order.append(key)
            # Rising validation accuracy: no iteration regresses (early stopping and the target are off above).
            done[key.prefix] = {"accuracy": {"validation": 0.01 * (1 + (key.iteration or 0))}}
    raise RuntimeError("the stage graph did not finish")  # a bug in the graph, not in the spec


def preview_jobs(run: DistillationRun, config: Config, *, stage: str | None = None, iteration: int | None = None,
                 namespace: str | None = None) -> list[dict[str, Any]]:
    meta = run.metadata
    namespace = namespace or meta.namespace or "default"
    if run.spec.storage.uri:
        uri = run.spec.storage.uri.rstrip("/")
    elif config.storage_uri:
        uri = f"{config.storage_uri.rstrip('/')}/{namespace}/{meta.name}"
    else:
        raise SpecError(["spec.storage.uri: required field is missing (or pass --storage-uri, the operator's "
                         "default)"], "manifest")
    extra = meta.model_extra or {}
    body = {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": meta.name, "namespace": namespace, "uid": extra.get("uid") or PLACEHOLDER_UID,
                         "labels": extra.get("labels") or {}}}
    keys = [k for k in planned_keys(run) if (stage is None or k.stage == stage)
            and (iteration is None or k.iteration == iteration)]
    if not keys:
        raise ValueError(f"the run plans no stage {stage or ''}{f'[{iteration}]' if iteration is not None else ''}")
    out = []
    for key in keys:
        service = build_stage_service(body, key, run.spec, config)
        out += [service] if service is not None else []
        out.append(build_stage_job(body, key, run.spec, config, run_uri=uri))
    return out
