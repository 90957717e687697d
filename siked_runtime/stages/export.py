"""Stage `export`: the best iteration's model becomes the run's final model (`final/model/`)."""

from __future__ import annotations

from siked_runtime.graph import TRAIN, StageKey, plan
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import MODEL_DIR, local_model, log
from siked_runtime.storage import Store, list_manifests


def run_export(spec: DistillationSpec, store: Store, iteration: int | None = None) -> dict:
    p = plan(spec, list_manifests(store))
    best = p.best_iteration
    source = local_model(store, StageKey(TRAIN, best).prefix)
    store.upload_dir(f"final/{MODEL_DIR}", source)
    log(f"export: iteration {best} (validation {p.iterations[best].validation:.3f}) is the final model")
    return {
        "best_iteration": best,
        "validation_accuracy": p.iterations[best].validation,
        "stop_reason": p.stop_reason,
        "last_iteration": p.last_iteration,
        "model": store.url(f"final/{MODEL_DIR}"),
    }
