"""Stages `eval[t]`, `baseline` and `teacher-eval`: greedy accuracy on the validation split and eval sets.

Writes `predictions-<set>.jsonl.gz` per set. The manifest's `accuracy.validation`
is what the stage graph selects on; test sets are only reported. It also records
the student's strategy shares, the written claims of its text answers checked
(`claims.py`: false arithmetic and comparisons, and the wrong answers that hold one),
and, for eval[t], the KL divergence between the strategy distribution of iteration t's
training data and the student's own.
With `evaluation.shards` > 1 each part scores its slice of every set and the
merge (stages/shards.py) scores the sets whole again.
"""

from __future__ import annotations

import time

from siked_runtime.claims import tally
from siked_runtime.graph import BASELINE, EVAL, TEACHER_EVAL, TRAIN, VALIDATION, StageKey
from siked_runtime.scoring import accuracy, accuracy_by_strategy, kl_divergence, strategy_shares
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import local_model, log
from siked_runtime.stages.data import eval_sets
from siked_runtime.stages.generation import StudentGenerator, evaluation_dtype
from siked_runtime.stages.shards import output_prefix
from siked_runtime.stages.verification import verify_rows
from siked_runtime.storage import Store, read_manifest


def score(rows: list[dict]) -> dict:
    """A set's accuracy, strategy use, and the written claims of its text (non-pot) answers (`claims.tally`)."""
    return {"accuracy": accuracy(rows), "strategy_shares": strategy_shares(rows),
            "accuracy_by_strategy": accuracy_by_strategy(rows), "n": len(rows),
            "claims": tally([r for r in rows if r.get("strategy") != "pot"])}


def publish_sets(store: Store, prefix: str, scored: dict[str, list[dict]]) -> dict:
    """Write each set's predictions under `prefix` and score them: the manifest's per-set maps."""
    manifest = {"accuracy": {}, "strategy_shares": {}, "accuracy_by_strategy": {}, "n": {}, "claims": {},
                "predictions": {}}
    for name, rows in scored.items():
        key = f"{prefix}/predictions-{name}.jsonl.gz"
        store.write_jsonl(key, rows)
        s = score(rows)
        for field in ("accuracy", "strategy_shares", "accuracy_by_strategy", "n", "claims"):
            manifest[field][name] = s[field]
        manifest["predictions"][name] = store.url(key)
        log(f"{prefix}: {name} accuracy {s['accuracy']:.3f} on {s['n']} questions")
    return manifest


def evaluate_model(spec: DistillationSpec, store: Store, model_path, prefix: str) -> dict:
    start = time.perf_counter()
    scored = {}
    with StudentGenerator(spec, model_path, spec.evaluation.batch_size, dtype=evaluation_dtype(spec)) as gen:
        for name, records in eval_sets(spec).items():
            completions = gen.generate([r["question"] for r in records], n=1, temperature=0.0,
                                       max_new_tokens=spec.evaluation.max_new_tokens, what=f"{prefix} {name}")
            rows = [{"id": r["id"], "answer": r["answer"], "completion": c[0]} for r, c in zip(records, completions)]
            scored[name] = verify_rows(rows, f"{prefix} verify {name}", spec.verification)
        tokens = gen.tokens
    manifest = publish_sets(store, output_prefix(prefix), scored)
    manifest |= {"model": str(model_path), "generated_tokens": tokens,
                 "seconds": round(time.perf_counter() - start, 3)}
    return manifest


def with_kl(spec: DistillationSpec, store: Store, iteration: int, manifest: dict) -> dict:
    """eval[t]'s manifest with the KL divergence from train[t]'s strategy shares to the student's own."""
    train = read_manifest(store, StageKey(TRAIN, iteration).prefix) or {}
    manifest = dict(manifest)
    if train.get("strategy_shares"):
        manifest["kl_train_to_student"] = kl_divergence(train["strategy_shares"],
                                                        manifest["strategy_shares"][VALIDATION])
    manifest["iteration"] = iteration
    return manifest


def run_eval(spec: DistillationSpec, store: Store, iteration: int) -> dict:
    model = local_model(store, StageKey(TRAIN, iteration).prefix)
    return with_kl(spec, store, iteration, evaluate_model(spec, store, model, StageKey(EVAL, iteration).prefix))


def run_baseline(spec: DistillationSpec, store: Store, iteration: int | None = None) -> dict:
    from siked_runtime.models import resolve_model

    return evaluate_model(spec, store, resolve_model(spec.student.model), StageKey(BASELINE).prefix)


def run_teacher_eval(spec: DistillationSpec, store: Store, iteration: int | None = None) -> dict:
    """The teacher's own accuracy on the same sets: every strategy it writes, scored together."""
    from siked_runtime.stages.teacher import raw_solutions

    prefix = StageKey(TEACHER_EVAL).prefix
    scored = {name: verify_rows(raw_solutions(spec, records), f"{prefix} verify {name}", spec.verification)
              for name, records in eval_sets(spec).items()}
    return publish_sets(store, output_prefix(prefix), scored)
