"""Stage `train[t]`: mix the iteration's data and fine-tune the student.

t = 0 trains on teacher rows only, from the base model; t ≥ 1 mixes teacher rows
with sample[t]'s correct self-samples (mixing policy, realised α recorded) and
continues from model t-1. The prompt is always the multi-strategy instruction and
the question; the completion starts with its strategy tag, so the student learns
to choose. Writes `iter-NNN/train/data.jsonl.gz` and the merged model under
`iter-NNN/train/model/` (safetensors) with the resolved spec beside it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml

from siked_runtime.graph import SAMPLE, TRAIN, StageKey
from siked_runtime.mixing import mix
from siked_runtime.scoring import strategy_shares
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import MODEL_DIR, local_model, log
from siked_runtime.stages.data import train_questions
from siked_runtime.storage import LocalStore, Store
from siked_runtime.strategies import build_prompt

ROW_FIELDS = ("id", "strategy", "completion", "source")


def training_rows(spec: DistillationSpec, store: Store, iteration: int):
    """(rows, Mix) for the iteration: teacher rows at t = 0, the mixing policy after."""
    teacher = [{k: r[k] for k in ("id", "strategy", "completion")} for r in store.read_jsonl("teacher/solutions.jsonl.gz")]
    own = []
    if iteration >= 1 and spec.method == "siked":
        own = [{k: r[k] for k in ("id", "strategy", "completion")}
               for r in store.read_jsonl(f"{StageKey(SAMPLE, iteration).prefix}/correct.jsonl.gz")]
        policy = spec.mixing.policy
    else:
        policy = "all"
    mixed = mix(teacher, own, policy, alpha=spec.alpha_for(iteration), dedup=spec.mixing.dedupe,
                max_per_question=spec.mixing.max_per_question, seed=spec.seed + iteration)
    questions = {r["id"]: r["question"] for r in train_questions(spec)}
    rows = [{**r, "prompt": build_prompt(questions[r["id"]])} for r in mixed.rows if r["id"] in questions]
    return rows, mixed


def base_model(spec: DistillationSpec, store: Store, iteration: int) -> Path | str:
    if iteration >= 1 and spec.training.continue_from_previous:
        return local_model(store, StageKey(TRAIN, iteration - 1).prefix)
    from siked_runtime.models import resolve_model

    return resolve_model(spec.student.model)


def run_train(spec: DistillationSpec, store: Store, iteration: int) -> dict:
    from siked_runtime.training import train_sft

    start = time.perf_counter()
    prefix = StageKey(TRAIN, iteration).prefix
    rows, mixed = training_rows(spec, store, iteration)
    if not rows:
        raise ValueError(f"{prefix}: no training rows (teacher kept none, and no correct self-samples)")
    store.write_jsonl(f"{prefix}/data.jsonl.gz", rows)
    base = base_model(spec, store, iteration)
    log(f"{prefix}: {len(rows)} rows ({mixed.teacher_rows} teacher, {mixed.self_rows} self, "
        f"α={mixed.alpha:.2f}) from {base}")
    with tempfile.TemporaryDirectory(prefix="siked-train-") as tmp:
        # Local runs write the model in place; remote stores get it uploaded after training.
        out = store.root / prefix / MODEL_DIR if isinstance(store, LocalStore) else Path(tmp) / MODEL_DIR
        summary = train_sft(str(base), [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows],
                            out, spec.student, spec.training, seed=spec.seed + iteration)
        (out / "siked-spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True)))
        if not isinstance(store, LocalStore):
            store.upload_dir(f"{prefix}/{MODEL_DIR}", out)
    return {
        "iteration": iteration,
        "rows": len(rows),
        "teacher_rows": mixed.teacher_rows,
        "self_rows": mixed.self_rows,
        "alpha": mixed.alpha,
        "scheduled_alpha": spec.alpha_for(iteration),
        "strategy_shares": strategy_shares(rows),
        "base_model": str(base),
        "model": store.url(f"{prefix}/{MODEL_DIR}"),
        "training": {k: v for k, v in summary.items() if k != "loss_history"},
        "loss_history": summary.get("loss_history", []),
        "seconds": round(time.perf_counter() - start, 3),
    }
