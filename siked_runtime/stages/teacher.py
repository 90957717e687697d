"""Stage `teacher`: verified teacher solutions per question × strategy.

Writes `teacher/solutions.jsonl.gz` (kept rows: at most m correct per question
and strategy) and `teacher/all.jsonl.gz` (every raw row with its verdict). Runs that
follow a SKIntern schedule also get `teacher/knowledge.jsonl.gz` (`stages/internalize.py`).

An `openai` teacher journals every reply under `teacher/journal/` as it arrives
(`teachers/journal.py`), so a rerun of an interrupted stage pays only for what is
missing; a question × strategy whose request fails for good is counted, not fatal,
up to `teacher.maxFailureShare`. Its manifest has the token `usage`, the `cost` when
the spec gives prices, the `failures` and the `finish_reasons`.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict

from siked_runtime.spec import DistillationSpec, TeacherPricing
from siked_runtime.stages.common import Rate, log
from siked_runtime.stages.data import train_questions
from siked_runtime.stages.verification import verify_rows
from siked_runtime.storage import JOURNAL, Store
from siked_runtime.strategies import STRATEGIES

TEACHER = "teacher"


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

    return solve_local(teacher, records, strategies, spec.sampling, seed=spec.seed,
                       gpus=spec.resources.for_stage("teacher").gpus)


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


# --- the openai teacher: journaled, failures counted, usage and cost ---------------------------


def failure_limit(share: float, asks: int) -> int:
    """How many question × strategy requests may fail (with a hair of slack: 0.29 × 100 is 28.999… in floats)."""
    return math.floor(share * asks + 1e-9)


def failure_summary(failures: dict[tuple[str, str], str], asks: int, share: float) -> dict:
    """Count, share, limit, the most common errors and a few examples, for the manifest."""
    errors = Counter(failures.values()).most_common(5)
    return {"count": len(failures), "share": round(len(failures) / asks, 4) if asks else 0.0, "limit": share,
            "errors": [{"error": e, "count": c} for e, c in errors],
            "examples": [{"id": i, "strategy": s, "error": e} for (i, s), e in list(failures.items())[:10]]}


def failure_reason(summary: dict, asks: int, allowed: int, unsent: bool) -> str:
    error, count = summary["errors"][0]["error"], summary["errors"][0]["count"]
    return (f"teacher: {summary['count']} of {asks} question × strategy requests failed ({summary['share']:.1%}), "
            f"more than teacher.maxFailureShare {summary['limit']:.1%} allows ({allowed})"
            + ("; the remaining requests were not sent" if unsent else "")
            + f"; most common error ({count}×): {error}")


def _tokens(entry: dict, name: str) -> int:
    usage = entry.get("usage")
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_summary(batch, entries: list[dict]) -> dict:
    """Tokens of every reply the stage uses (journaled ones included: what its data cost) and this attempt's
    requests, retries and failures."""
    firsts = [e for e in entries if e.get("choice", 0) == 0]  # one per reply: a reply's usage is on its first choice
    return {**{name: sum(_tokens(e, name) for e in firsts)
               for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
            "requests": batch.stats.requests, "retries": batch.stats.retries, "failures": len(batch.failures),
            "replies": len(entries), "reused_replies": batch.reused,
            "replies_without_usage": sum(not isinstance(e.get("usage"), dict) for e in firsts)}


def cost(usage: dict, pricing: TeacherPricing) -> dict:
    inp = usage["prompt_tokens"] * pricing.input_per_million / 1e6
    out = usage["completion_tokens"] * pricing.output_per_million / 1e6
    return {"input": round(inp, 6), "output": round(out, 6), "total": round(inp + out, 6),
            "currency": pricing.currency}


def api_solutions(spec: DistillationSpec, store: Store, records: list[dict]) -> tuple[list[dict], dict]:
    """Raw rows from the `openai` teacher, journaled under `teacher/journal/`, and the manifest's usage,
    cost and failure counts; raises TeacherAPIError past `teacher.maxFailureShare`."""
    from siked_runtime.teachers.fewshot import teacher_messages
    from siked_runtime.teachers.journal import Journal
    from siked_runtime.teachers.openai_api import Ask, ChatClient, TeacherAPIError, collect

    teacher = spec.teacher
    asks = [Ask(r["id"], s, teacher_messages(r["question"], s)) for r in records for s in spec.strategies]
    allowed = failure_limit(teacher.max_failure_share, len(asks))
    rate = Rate("teacher requests", len(asks), unit="request")
    batch = collect(ChatClient.from_spec(teacher), asks, teacher.samples_per_strategy,
                    Journal(store, f"{TEACHER}/{JOURNAL}"), max_failures=allowed, on_done=rate.update)
    failures = failure_summary(batch.failures, len(asks), teacher.max_failure_share)
    if len(batch.failures) > allowed:
        raise TeacherAPIError(failure_reason(failures, len(asks), allowed, batch.stopped))
    answers = {r["id"]: r["answer"] for r in records}
    entries = [e for a in asks for e in batch.entries[a.id, a.strategy]]
    rows = [{"id": e["id"], "answer": answers[e["id"]], "strategy": e["strategy"], "completion": e["text"],
             "finish_reason": e.get("finish_reason")} for e in entries]
    usage = usage_summary(batch, entries)
    log(f"teacher: {usage['total_tokens']} tokens in {usage['replies']} replies ({batch.reused} from the journal), "
        f"{usage['requests']} requests sent, {usage['retries']} retries, {usage['failures']} failed")
    return rows, {
        "usage": usage,
        **({"cost": cost(usage, teacher.pricing)} if teacher.pricing else {}),
        "failures": failures,
        "finish_reasons": dict(Counter(str(e.get("finish_reason")) for e in entries)),
        "journal": {"chunks": batch.journal.chunks, "entries": len(batch.journal.entries),
                    "skipped_lines": batch.journal.skipped_lines, "skipped_chunks": batch.journal.skipped_chunks},
    }


def teacher_output(spec: DistillationSpec, store: Store, records: list[dict]) -> tuple[list[dict], dict]:
    """Raw rows and what the manifest says about how they were got (the openai teacher's usage)."""
    if spec.teacher.kind == "openai":
        return api_solutions(spec, store, records)
    return raw_solutions(spec, records), {}


def run_teacher(spec: DistillationSpec, store: Store, iteration: int | None = None) -> dict:
    """The stage. A part of a sharded stage gets a store that maps `teacher/…` into its part
    (`shards.stage_store`), so its journal is the part's own."""
    start = time.perf_counter()
    records = train_questions(spec)
    log(f"teacher ({spec.teacher.kind}): {len(records)} questions × {len(spec.strategies)} strategies")
    raw, api = teacher_output(spec, store, records)
    # A row's strategy is what it was asked for; the verifier's parse may disagree
    # (a teacher that ignored the requested tag), and such rows are not kept.
    verified = verify_rows(raw, "teacher verify", spec.verification)
    for asked, row in zip(raw, verified):
        if row["strategy"] != asked["strategy"]:
            row["verdict"], row["reason"] = "wrong", f"asked for {asked['strategy']}, wrote {row['strategy']}"
            row["strategy"] = asked["strategy"]
    kept = keep_correct(verified, spec.teacher.max_correct_per_strategy)
    store.write_jsonl(f"{TEACHER}/all.jsonl.gz", verified)
    store.write_jsonl(f"{TEACHER}/solutions.jsonl.gz", kept)
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
        "solutions": store.url(f"{TEACHER}/solutions.jsonl.gz"),
        **api,
        **({"knowledge": knowledge} if knowledge else {}),
        "seconds": round(time.perf_counter() - start, 3),
    }
