"""Stage `train[t]`: mix the iteration's data and fine-tune the student.

t = 0 trains on teacher rows only, from the base model; t ≥ 1 mixes teacher rows
with sample[t]'s correct self-samples (mixing policy, realised α recorded) and
continues from model t-1. The prompt is always the multi-strategy instruction and
the question; the completion starts with its strategy tag, so the student learns
to choose. Writes `iter-NNN/train/data.jsonl.gz` and the merged model under
`iter-NNN/train/model/` (safetensors) with the resolved spec beside it.

Started by torchrun (`siked_runtime.distributed`), every process runs this function and
trains; rank 0 alone writes, the others train from the same rows and write nothing.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from siked_runtime.graph import SAMPLE, TRAIN, StageKey
from siked_runtime.mixing import mix
from siked_runtime.scoring import strategy_shares
from siked_runtime.spec import DistillationSpec, Method
from siked_runtime.stages.common import MODEL_DIR, local_model, log, model_output
from siked_runtime.stages.data import train_questions
from siked_runtime.storage import Store
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
                max_per_question=spec.mixing.max_per_question, seed=spec.seed + iteration,
                priority=spec.mixing.priority)
    questions = {r["id"]: r["question"] for r in train_questions(spec)}
    rows = [{**r, "prompt": build_prompt(questions[r["id"]])} for r in mixed.rows if r["id"] in questions]
    return rows, mixed


def base_model(spec: DistillationSpec, store: Store, iteration: int) -> Path | str:
    # SKIntern's stages are one schedule on the same weights.
    if iteration >= 1 and (spec.training.continue_from_previous or spec.method == Method.skintern):
        return local_model(store, StageKey(TRAIN, iteration - 1).prefix)
    from siked_runtime.models import resolve_model

    return resolve_model(spec.student.model)


@contextmanager
def stage_model_output(store: Store, prefix: str) -> Iterator[Path]:
    """`model_output` in the process that writes (rank 0); a discarded directory in the others."""
    from siked_runtime.training import is_leader

    if is_leader():
        with model_output(store, prefix) as out:
            yield out
        return
    with tempfile.TemporaryDirectory(prefix="siked-rank-") as tmp:
        yield Path(tmp) / "model"


def run_train(spec: DistillationSpec, store: Store, iteration: int) -> dict:
    from siked_runtime.models import default_device
    from siked_runtime.training import check_hardware, is_leader, train_sft

    check_hardware(spec.student, default_device())  # refuse before any work (qlora without a GPU)
    start = time.perf_counter()
    prefix = StageKey(TRAIN, iteration).prefix
    leader = is_leader()
    rows, mixed = training_rows(spec, store, iteration)
    if not rows:
        raise ValueError(f"{prefix}: no training rows (teacher kept none, and no correct self-samples)")
    if leader:
        store.write_jsonl(f"{prefix}/data.jsonl.gz", rows)
    base = base_model(spec, store, iteration)
    log(f"{prefix}: {len(rows)} rows ({mixed.teacher_rows} teacher, {mixed.self_rows} self, "
        f"α={mixed.alpha:.2f}) from {base}")
    schedule = None
    with stage_model_output(store, prefix) as out, tempfile.TemporaryDirectory(prefix="siked-train-") as scratch:
        if spec.internalizes:
            summary, schedule = train_internalized(spec, store, iteration, rows, base, out, Path(scratch))
        else:
            summary = train_sft(str(base), rows, out, spec.student, spec.training.for_iteration(iteration),
                                seed=spec.seed + iteration, label=prefix)
        if leader:
            (out / "siked-spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True)))
    return {
        "iteration": iteration,
        "rows": len(rows),
        "teacher_rows": mixed.teacher_rows,
        "self_rows": mixed.self_rows,
        "reproductions": mixed.reproductions,
        "untagged_dropped": mixed.untagged,
        "alpha": mixed.alpha,
        "scheduled_alpha": spec.alpha_for(iteration),
        "strategy_shares": strategy_shares(rows),
        "base_model": str(base),
        "model": store.url(f"{prefix}/{MODEL_DIR}"),
        "training": {k: v for k, v in summary.items() if k not in ("loss_history", "packing", "distributed")},
        "packing": summary.get("packing"),
        "distributed": summary.get("distributed"),
        "loss_history": summary.get("loss_history", []),
        **({"internalization": schedule} if schedule is not None else {}),
        "seconds": round(time.perf_counter() - start, 3),
    }


def train_internalized(spec: DistillationSpec, store: Store, iteration: int, rows: list[dict], base, out: Path,
                       scratch: Path) -> tuple[dict, list[dict]]:
    """Train on `rows` under the SKIntern schedule: stage t's share for method skintern, every
    share in turn (each from the last one's weights) for SIKeD with `internalization`.
    Each share trains `epochsPerStage` epochs. Returns the last summary and one entry per share.
    Under torchrun each process keeps its own copy of the intermediate weights it trains on next."""
    from siked_runtime.internalization import shares
    from siked_runtime.stages.internalize import PromptBuilder
    from siked_runtime.training import is_leader, train_sft

    builder = PromptBuilder(spec, store)
    schedule = shares(spec.skintern)
    phases = [schedule[iteration]] if spec.method == Method.skintern else schedule
    training = spec.training.model_copy(update={"epochs": spec.skintern.epochs_per_stage, "max_steps": None})
    current, entries, summary, written = str(base), [], {}, []
    for k, share in enumerate(phases):
        staged, stats = builder.rows(rows, share)
        written += [{**r, "share": round(share, 4)} for r in staged]
        last = k == len(phases) - 1
        target = out if last else scratch / f"share-{k}"
        log(f"{StageKey(TRAIN, iteration).prefix}: knowledge share {share:.2f} ({stats['knowledge_kept']} of its "
            f"tokens kept), {stats['examples']} examples, {stats['prompt_tokens_per_example']} prompt tokens per row")
        summary = train_sft(current, staged, target, spec.student, training, seed=spec.seed + iteration,
                            every_rank_saves=not last)
        entries.append({**stats, "steps": summary["steps"], "train_loss": summary["train_loss"],
                        "seconds": summary["seconds"]})
        current = str(target)
    if is_leader():
        store.write_jsonl(f"{StageKey(TRAIN, iteration).prefix}/data.jsonl.gz", written)  # the prompts as trained
    return summary, entries
