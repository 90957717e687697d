"""Stage `teacher`: verified teacher solutions per question × strategy.

Writes `teacher/solutions.jsonl.gz` (kept rows: at most m correct per question
and strategy) and `teacher/all.jsonl.gz` (every raw row with its verdict). Runs that
follow a SKIntern schedule also get `teacher/knowledge.jsonl.gz` (`stages/internalize.py`).
"""

from __future__ import annotations

import time
from collections import defaultdict

from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import log
from siked_runtime.stages.data import train_questions
from siked_runtime.stages.verification import verify_rows
from siked_runtime.storage import Store
from siked_runtime.strategies import STRATEGIES


def raw_solutions(spec: DistillationSpec, records: list[dict]) -> list[dict]:
    """Unverified teacher rows `{id, answer, strategy, completion}` from the spec's teacher."""
    teacher, strategies = spec.teacher, spec.strategies
    if teacher.kind in ("oracle", "gold"):
        from siked_runtime.teachers import gold, oracle

        return list({"oracle": oracle.teach, "gold": gold.teach}[teacher.kind](records, strategies))
    if teacher.kind == "openai":
        from siked_runtime.teachers.openai_api import ChatClient, solve

        return solve(ChatClient.from_spec(teacher), records, strategies, n=teacher.samples_per_strategy)
    from siked_runtime.teachers.local import solve_local

    return solve_local(teacher, records, strategies, spec.sampling, seed=spec.seed)


def keep_correct(rows: list[dict], m: int) -> list[dict]:
    """At most `m` correct rows per (question, strategy), first ones first."""
    counts: dict[tuple, int] = defaultdict(int)
    kept = []
    for row in rows:
        key = (row["id"], row["strategy"])
        if row["verdict"] == "correct" and counts[key] < m:
            counts[key] += 1
            kept.append(row)
    return kept


def per_strategy(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for s in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == s]
        if mine:
            correct = sum(r["verdict"] == "correct" for r in mine)
            out[s] = {"rows": len(mine), "correct": correct, "accuracy": correct / len(mine)}
    return out


def run_teacher(spec: DistillationSpec, store: Store, iteration: int | None = None) -> dict:
    start = time.perf_counter()
    records = train_questions(spec)
    log(f"teacher ({spec.teacher.kind}): {len(records)} questions × {len(spec.strategies)} strategies")
    raw = raw_solutions(spec, records)
    # A row's strategy is what it was asked for; the verifier's parse may disagree
    # (a teacher that ignored the requested tag), and such rows are not kept.
    verified = verify_rows(raw, "teacher verify", spec.verification)
    for asked, row in zip(raw, verified):
        if row["strategy"] != asked["strategy"]:
            row["verdict"], row["reason"] = "wrong", f"asked for {asked['strategy']}, wrote {row['strategy']}"
            row["strategy"] = asked["strategy"]
    kept = keep_correct(verified, spec.teacher.max_correct_per_strategy)
    store.write_jsonl("teacher/all.jsonl.gz", verified)
    store.write_jsonl("teacher/solutions.jsonl.gz", kept)
    solved = len({r["id"] for r in kept})
    log(f"teacher: kept {len(kept)} of {len(raw)} solutions; {solved}/{len(records)} questions solved")
    knowledge = None
    if spec.internalizes:
        from siked_runtime.stages.internalize import write_knowledge

        knowledge = write_knowledge(spec, store, records, kept)
    return {
        "questions": len(records),
        "raw_rows": len(raw),
        "rows": len(kept),
        "questions_solved": solved,
        "strategies": per_strategy(verified),
        "solutions": store.url("teacher/solutions.jsonl.gz"),
        **({"knowledge": knowledge} if knowledge else {}),
        "seconds": round(time.perf_counter() - start, 3),
    }
