"""Stage `sample[t]`: the student (model t-1) solves the training questions itself.

It picks its own strategy (the prompt does not force one). Only verified-correct samples
that carry a strategy tag are kept, at most m distinct ones per question. Without
`adaptiveBudget` every question gets exactly k samples in one round. With it, sampling
runs in rounds of one sample per question still open:

* a question closes once it has m correct samples (the budget it did not use is saved);
* a question with no correct sample after `giveUpAfter` samples (default k) is given up;
* a question with some, but fewer than m, correct samples — where another correct one is
  likely — may go on to 2k samples while the saved budget lasts.

The total never exceeds k × questions. A question's j-th sample has the same seed in both
modes (its own seed and sample index, not the round's), so in float32 rounds of one sample
are fixed k's samples cut short: the adaptive budget solves every question fixed k solves
within the first `giveUpAfter` samples. In bf16 the questions batched beside a sample can
change one of its tokens, and so the rest of the draw. Writes `iter-NNN/sample/correct.jsonl.gz` and
`iter-NNN/sample/all.jsonl.gz`; the manifest records k, m, temperature and top-p. Under
the `teacher` mixing policy (a baseline) nothing is sampled. A sharded stage
(`sampling.shards`) samples each part's questions apart (stages/shards.py); the
adaptive budget's savings then stay within a part.
"""

from __future__ import annotations

import time
from collections import defaultdict

from siked_runtime.graph import SAMPLE, TRAIN, StageKey
from siked_runtime.scoring import strategy_shares
from siked_runtime.spec import DistillationSpec, IterationsSpec
from siked_runtime.stages.common import local_model, log
from siked_runtime.stages.data import train_questions
from siked_runtime.stages.generation import StudentGenerator
from siked_runtime.stages.shards import output_prefix
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


def open_questions(it: IterationsSpec, drawn: dict[str, int], correct: dict[str, int],
                   questions: list[str]) -> dict[str, int]:
    """{question: samples it may still draw} for the adaptive budget (see the module docstring).
    Questions with a correct sample come first: the saved budget goes where success is likely."""
    k, m = it.samples_per_question, it.max_correct_per_question
    give_up = it.give_up_after or k
    out = {}
    for q in sorted(questions, key=lambda q: (correct[q] == 0, drawn[q])):
        if correct[q] >= m:
            continue
        limit = 2 * k if correct[q] else give_up
        if drawn[q] < limit:
            out[q] = limit - drawn[q]
    return out


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def run_sample(spec: DistillationSpec, store: Store, iteration: int) -> dict:
    start = time.perf_counter()
    it = spec.iterations
    model = local_model(store, StageKey(TRAIN, iteration - 1).prefix)
    records = {r["id"]: r for r in train_questions(spec)}
    k, m = it.samples_per_question, it.max_correct_per_question
    budget = k * len(records) if spec.mixing.policy != "teacher" else 0
    per_round = 1 if it.adaptive_budget else k
    drawn: dict[str, int] = defaultdict(int)
    correct: dict[str, list[dict]] = defaultdict(list)
    seen: dict[str, set] = defaultdict(set)
    all_rows: list[dict] = []
    rounds, tokens = 0, 0
    if budget == 0:
        log(f"sample[{iteration}]: mixing policy {spec.mixing.policy}, nothing to sample")
    with StudentGenerator(spec, model, spec.sampling.batch_size) if budget else _Nothing() as gen:
        while budget > 0:
            if it.adaptive_budget:
                pending = open_questions(it, drawn, {q: len(correct[q]) for q in records}, list(records))
            else:
                pending = {q: k - drawn[q] for q in records if drawn[q] < k}
            if not pending:
                break
            round_plan = plan_round(pending, budget, per_round)
            groups: dict[int, list[str]] = defaultdict(list)  # n → questions, so each generate call has one n
            for qid, n in round_plan.items():
                groups[n].append(qid)
            for n, qids in sorted(groups.items()):
                # A question's j-th sample has the same seed in every round plan: rounds of one sample draw
                # the first samples that fixed k draws at once (exactly in float32; see the docstring on bf16).
                completions = gen.generate(
                    [records[q]["question"] for q in qids], n=n, temperature=it.temperature,
                    max_new_tokens=spec.sampling.max_new_tokens, what=f"sample[{iteration}] round {rounds + 1}",
                    seed=spec.seed * 1000 + iteration * 100, first_sample=[drawn[q] for q in qids],
                )
                rows = [{"id": q, "answer": records[q]["answer"], "completion": c}
                        for q, cs in zip(qids, completions) for c in cs]
                for row in verify_rows(rows, f"sample[{iteration}] verify"):
                    row["round"] = rounds
                    all_rows.append(row)
                    key = " ".join(row["completion"].split())
                    # An untagged completion graded by its last number is never a training row.
                    if (row["verdict"] == "correct" and row.get("strategy") and len(correct[row["id"]]) < m
                            and key not in seen[row["id"]]):
                        seen[row["id"]].add(key)
                        correct[row["id"]].append(row)
                for q in qids:
                    drawn[q] += n
                budget -= n * len(qids)
            rounds += 1
            solved = sum(1 for q in records if correct[q])
            log(f"sample[{iteration}]: round {rounds}, {solved}/{len(records)} questions solved, budget left {budget}")
        tokens = gen.tokens if gen is not None else 0
    kept = [row for q in records for row in correct[q]]
    prefix = output_prefix(StageKey(SAMPLE, iteration).prefix)
    store.write_jsonl(f"{prefix}/all.jsonl.gz", all_rows)
    store.write_jsonl(f"{prefix}/correct.jsonl.gz", kept)
    manifest = sample_manifest(spec, store, iteration, questions=len(records), all_rows=all_rows, kept=kept,
                               tokens=tokens, rounds=rounds, prefix=prefix)
    return manifest | {"seconds": round(time.perf_counter() - start, 3)}


def sample_manifest(spec: DistillationSpec, store: Store, iteration: int, *, questions: int, all_rows: list[dict],
                    kept: list[dict], tokens: int, rounds: int, prefix: str | None = None) -> dict:
    """The stage's numbers from its rows: what a sharded stage's merge (stages/shards.py) computes again."""
    it = spec.iterations
    k, m = it.samples_per_question, it.max_correct_per_question
    prefix = prefix or StageKey(SAMPLE, iteration).prefix
    n_correct = sum(r["verdict"] == "correct" for r in all_rows)
    return {
        "iteration": iteration,
        "k": k, "m": m, "temperature": it.temperature, "top_p": spec.sampling.top_p,
        "adaptive_budget": it.adaptive_budget, "give_up_after": (it.give_up_after or k) if it.adaptive_budget else None,
        "questions": questions,
        "samples": len(all_rows),
        "correct_samples": n_correct,
        "untagged_correct": sum(r["verdict"] == "correct" and not r.get("strategy") for r in all_rows),
        "rows": len(kept),
        "questions_solved": len({r["id"] for r in kept}),
        "sample_accuracy": n_correct / len(all_rows) if all_rows else None,
        "strategy_shares": strategy_shares(all_rows),
        "generated_tokens": tokens,
        "tokens_per_correct": tokens / len(kept) if kept else None,
        "rounds": rounds,
        "solutions": store.url(f"{prefix}/correct.jsonl.gz"),
    }
