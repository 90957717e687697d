"""Stage `sample[t]`: the student (model t-1) solves the training questions itself.

It picks its own strategy (the prompt does not force one). Only verified-correct
samples are kept, at most m distinct ones per question. With `adaptiveBudget`
sampling runs in rounds: a question leaves the pool once it has m correct
samples, and the budget it saved goes to unsolved questions (up to 2k each).
Writes `iter-NNN/sample/correct.jsonl.gz` and `iter-NNN/sample/all.jsonl.gz`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from siked_runtime.graph import SAMPLE, TRAIN, StageKey
from siked_runtime.scoring import strategy_shares
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import local_model, log
from siked_runtime.stages.data import train_questions
from siked_runtime.stages.generation import StudentGenerator
from siked_runtime.stages.verification import verify_rows
from siked_runtime.storage import Store


def plan_round(pending: dict[str, int], budget_left: int, per_round: int) -> dict[str, int]:
    """Samples to draw this round per question: `per_round` each, within what is left."""
    out = {}
    for qid, allowed in pending.items():
        n = min(per_round, allowed, budget_left)
        if n <= 0:
            break
        out[qid] = n
        budget_left -= n
    return out


def run_sample(spec: DistillationSpec, store: Store, iteration: int) -> dict:
    start = time.perf_counter()
    it = spec.iterations
    model = local_model(store, StageKey(TRAIN, iteration - 1).prefix)
    records = {r["id"]: r for r in train_questions(spec)}
    k, m = it.samples_per_question, it.max_correct_per_question
    budget = k * len(records)
    # Without the adaptive budget every question gets exactly k samples in one round.
    per_round = max(1, math.ceil(k / 2)) if it.adaptive_budget else k
    cap = 2 * k if it.adaptive_budget else k
    drawn: dict[str, int] = defaultdict(int)
    correct: dict[str, list[dict]] = defaultdict(list)
    seen: dict[str, set] = defaultdict(set)
    all_rows: list[dict] = []
    rounds = 0
    with StudentGenerator(spec, model, spec.sampling.batch_size) as gen:
        while budget > 0:
            pending = {q: cap - drawn[q] for q in records if len(correct[q]) < m and drawn[q] < cap}
            if not pending:
                break
            round_plan = plan_round(pending, budget, per_round)
            groups: dict[int, list[str]] = defaultdict(list)  # n → questions, so each generate call has one n
            for qid, n in round_plan.items():
                groups[n].append(qid)
            for n, qids in sorted(groups.items()):
                completions = gen.generate(
                    [records[q]["question"] for q in qids], n=n, temperature=it.temperature,
                    max_new_tokens=spec.sampling.max_new_tokens, what=f"sample[{iteration}] round {rounds + 1}",
                    seed=spec.seed * 1000 + iteration * 100 + rounds,
                )
                rows = [{"id": q, "answer": records[q]["answer"], "completion": c}
                        for q, cs in zip(qids, completions) for c in cs]
                for row in verify_rows(rows, f"sample[{iteration}] verify"):
                    row["round"] = rounds
                    all_rows.append(row)
                    key = " ".join(row["completion"].split())
                    if row["verdict"] == "correct" and len(correct[row["id"]]) < m and key not in seen[row["id"]]:
                        seen[row["id"]].add(key)
                        correct[row["id"]].append(row)
                for q in qids:
                    drawn[q] += n
                budget -= n * len(qids)
            rounds += 1
            solved = sum(1 for q in records if correct[q])
            log(f"sample[{iteration}]: round {rounds}, {solved}/{len(records)} questions solved, budget left {budget}")
        tokens = gen.tokens
    kept = [row for q in records for row in correct[q]]
    prefix = StageKey(SAMPLE, iteration).prefix
    store.write_jsonl(f"{prefix}/all.jsonl.gz", all_rows)
    store.write_jsonl(f"{prefix}/correct.jsonl.gz", kept)
    n_correct = sum(r["verdict"] == "correct" for r in all_rows)
    return {
        "iteration": iteration,
        "questions": len(records),
        "samples": len(all_rows),
        "correct_samples": n_correct,
        "rows": len(kept),
        "questions_solved": sum(1 for q in records if correct[q]),
        "sample_accuracy": n_correct / len(all_rows) if all_rows else None,
        "strategy_shares": strategy_shares(all_rows),
        "generated_tokens": tokens,
        "tokens_per_correct": tokens / len(kept) if kept else None,
        "rounds": rounds,
        "solutions": store.url(f"{prefix}/correct.jsonl.gz"),
        "seconds": round(time.perf_counter() - start, 3),
    }
