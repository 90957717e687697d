"""Stage `reference` (method skintern): what SKIntern is compared with, measured in the same run.

1. Standard distillation: the base student trained on the teacher's solutions with the ordinary
   prompt for as many epochs as the whole SKIntern schedule (T × epochsPerStage), then scored
   like every eval stage (question-only prompts). Writes `reference/model/`.
2. Inference cost: the mean prompt tokens per eval question with the ordinary prompt (what a
   SKIntern student reads) and with the teacher's full knowledge and K similar examples in the
   prompt (what a knowledge-augmented student keeps reading at inference).

Started by torchrun, every process trains; rank 0 alone writes, evaluates and measures.
"""

from __future__ import annotations

from siked_runtime.graph import REFERENCE, StageKey
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import MODEL_DIR, log
from siked_runtime.stages.data import eval_sets
from siked_runtime.storage import Store


def inference_prompt_tokens(spec: DistillationSpec, store: Store) -> dict:
    """Mean prompt tokens per eval question, question only vs knowledge-augmented, over all eval sets."""
    from siked_runtime.internalization import internalized_prompt
    from siked_runtime.knowledge import knowledge_text
    from siked_runtime.retrieval import similar_examples
    from siked_runtime.stages.internalize import PromptBuilder, teacher_knowledge
    from siked_runtime.storage import JOURNAL
    from siked_runtime.strategies import build_prompt
    from siked_runtime.teachers.journal import Journal

    builder = PromptBuilder(spec, store)
    records = [r for rows in eval_sets(spec).values() for r in rows]
    # At inference the teacher sees the question only; its replies are journaled in this stage.
    journal = Journal(store, f"{StageKey(REFERENCE).prefix}/{JOURNAL}")
    knowledge = teacher_knowledge(spec, records, {}, journal)
    pool = builder.pool
    nearest = similar_examples(spec.skintern.retriever, [r["question"] for r in records], spec.skintern.examples,
                               pool=[builder.questions[i] for i in pool])
    plain = augmented = 0
    for record, row, near in zip(records, knowledge, nearest, strict=True):
        examples = [builder.example(pool[j], "cot") for j in near]
        plain += builder.prompt_tokens(build_prompt(record["question"]))
        augmented += builder.prompt_tokens(internalized_prompt(record["question"], knowledge_text(row), examples))
    n = max(len(records), 1)
    return {"questions": len(records), "question_only": round(plain / n, 1),
            "knowledge_augmented": round(augmented / n, 1), "ratio": round(augmented / max(plain, 1), 2)}


def run_reference(spec: DistillationSpec, store: Store, iteration: int | None = None) -> dict:
    from siked_runtime.models import default_device, resolve_model
    from siked_runtime.stages.evaluate import evaluate_model
    from siked_runtime.stages.train import stage_model_output, training_rows
    from siked_runtime.training import check_hardware, is_leader, train_sft

    check_hardware(spec.student, default_device())
    prefix = StageKey(REFERENCE).prefix
    rows, _ = training_rows(spec, store, 0)
    epochs = spec.skintern.epochs_per_stage * spec.skintern.stages
    training = spec.training.model_copy(update={"epochs": epochs, "max_steps": None})
    log(f"{prefix}: standard distillation, {len(rows)} rows × {epochs:g} epochs from {spec.student.model}")
    with stage_model_output(store, prefix) as out:
        summary = train_sft(resolve_model(spec.student.model), rows, out, spec.student, training, seed=spec.seed)
        if not is_leader():
            return {"training": {k: v for k, v in summary.items() if k != "loss_history"}}
        manifest = evaluate_model(spec, store, out, prefix)
    tokens = inference_prompt_tokens(spec, store)
    log(f"{prefix}: inference prompt tokens {tokens['question_only']} (question only) vs "
        f"{tokens['knowledge_augmented']} (knowledge-augmented), {tokens['ratio']}×")
    return {**manifest, "model": store.url(f"{prefix}/{MODEL_DIR}"), "epochs": epochs,
            "training": {k: v for k, v in summary.items() if k != "loss_history"},
            "inference_prompt_tokens": tokens}
