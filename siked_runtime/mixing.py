"""Mixing teacher and self-generated data into one iteration's training set.

Pure functions. Rows are dicts with at least `id` (question), `strategy`,
`completion` and `source` ("teacher" or "self"). Policies (ARCHITECTURE §2):

    all       teacher ∪ self
    adaptive  self ∪ the teacher rows of questions the student did not solve
    self      self only
    alpha     teacher rows subsampled (or self rows, when teacher rows run out) so
              that teacher rows / all rows ≈ α_t
    teacher   teacher rows only (combined distillation continued: a baseline)

α (teacher rows / all rows) is recorded for every policy: over iterations it shows
the training data moving from the teacher's distribution towards the student's.
Subsampling is deterministic: rows are ordered by a hash of (seed, id, completion).

A self row identical to a teacher row (a *reproduction*) is kept beside it and
counted: the student's verbatim reproductions are what shift the mix towards its
own choice of strategy. Rows without a strategy tag are never trained on.

`priority` is the SIKeD authors' lineage: one row per question, the first strategy
of the order that has one ("if both CoT and PoT are sampled correctly, our biased
strategy choice is PoT"), applied to teacher data and after every mixing; within a
strategy the student's own row wins.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

POLICIES = ("all", "adaptive", "self", "alpha", "teacher")


@dataclass(frozen=True)
class Mix:
    rows: list[dict]
    teacher_rows: int
    self_rows: int
    reproductions: int = 0   # self rows kept that repeat a teacher row of the same question
    untagged: int = 0        # rows dropped for having no strategy tag

    @property
    def alpha(self) -> float | None:
        """Realised α: teacher rows / all rows (None for an empty mix)."""
        total = self.teacher_rows + self.self_rows
        return self.teacher_rows / total if total else None


def _rank(row: dict, seed: int) -> str:
    key = f"{seed}\x00{row['id']}\x00{row['completion']}".encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def _normalise(text: str) -> str:
    return " ".join(text.split())


def dedupe(rows: Iterable[dict]) -> list[dict]:
    """Drop rows whose (question, completion) repeats, ignoring whitespace; the first one stays."""
    seen, out = set(), []
    for row in rows:
        key = (row["id"], _normalise(row["completion"]))
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def cap_per_question(rows: list[dict], cap: int, seed: int) -> list[dict]:
    """At most `cap` rows per question, taken round-robin over strategies so the mix stays diverse."""
    by_question: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    # The student's own rows go first: they are what a self-guided iteration adds.
    for row in sorted(rows, key=lambda r: (r.get("source") != "self", _rank(r, seed))):
        by_question[row["id"]][row.get("strategy") or ""].append(row)
    keep = set()
    for qid, strategies in by_question.items():
        # Strategies with own rows first; otherwise the order varies per question, so a cap
        # below the number of strategies still keeps every strategy in the mix overall.
        order = sorted(strategies, key=lambda s: (strategies[s][0].get("source") != "self",
                                                  hashlib.blake2b(f"{seed}\x00{qid}\x00{s}".encode()).digest()))
        queues = [strategies[s] for s in order]
        taken = 0
        while taken < cap and any(queues):
            for q in queues:
                if q and taken < cap:
                    keep.add(id(q.pop(0)))
                    taken += 1
    return [r for r in rows if id(r) in keep]


def by_priority(rows: list[dict], order: list[str], seed: int = 0) -> list[dict]:
    """One row per question: the first strategy of `order` it has (strategies not listed come
    after, in the order given by STRATEGIES' position in `rows`), the student's own row first
    within a strategy, then a hash of (seed, id, completion). Row order is kept."""
    rank = {s: i for i, s in enumerate(order)}

    def key(row: dict):
        return (rank.get(row.get("strategy"), len(rank)), row.get("source") != "self", _rank(row, seed))

    best: dict[str, dict] = {}
    for row in rows:
        current = best.get(row["id"])
        if current is None or key(row) < key(current):
            best[row["id"]] = row
    keep = {id(r) for r in best.values()}
    return [r for r in rows if id(r) in keep]


def _subsample(rows: list[dict], n: int, seed: int) -> list[dict]:
    if n >= len(rows):
        return list(rows)
    chosen = {id(r) for r in sorted(rows, key=lambda r: _rank(r, seed))[:n]}
    return [r for r in rows if id(r) in chosen]


def alpha_counts(teacher: int, own: int, alpha: float) -> tuple[int, int]:
    """(teacher rows, self rows) to keep so that teacher / total ≈ alpha, using as much data as possible."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha >= 1.0 or own == 0:
        return teacher, 0
    if alpha <= 0.0:
        return 0, own
    want_teacher = round(alpha * own / (1 - alpha))
    if want_teacher <= teacher:
        return want_teacher, own
    # Not enough teacher rows: keep them all and shrink the self rows instead.
    return teacher, min(own, round(teacher * (1 - alpha) / alpha))


def mix(
    teacher: list[dict],
    own: list[dict],
    policy: str,
    alpha: float | None = None,
    dedup: bool = True,
    max_per_question: int | None = None,
    seed: int = 0,
    priority: list[str] | None = None,
) -> Mix:
    """One iteration's training rows from teacher rows and the student's own correct rows."""
    if policy not in POLICIES:
        raise ValueError(f"unknown mixing policy {policy!r}; expected one of {', '.join(POLICIES)}")
    tagged_teacher = [r for r in teacher if r.get("strategy")]
    tagged_own = [r for r in own if r.get("strategy")]
    untagged = len(teacher) + len(own) - len(tagged_teacher) - len(tagged_own)
    teacher, own = tagged_teacher, tagged_own
    if dedup:
        teacher, own = dedupe(teacher), dedupe(own)
    if policy == "all":
        chosen_teacher, chosen_self = teacher, own
    elif policy == "teacher":
        chosen_teacher, chosen_self = teacher, []
    elif policy == "adaptive":
        solved = {r["id"] for r in own}
        chosen_teacher, chosen_self = [r for r in teacher if r["id"] not in solved], own
    elif policy == "self":
        chosen_teacher, chosen_self = [], own
    else:
        if alpha is None:
            raise ValueError("the alpha policy needs alpha")
        n_teacher, n_self = alpha_counts(len(teacher), len(own), alpha)
        chosen_teacher, chosen_self = _subsample(teacher, n_teacher, seed), _subsample(own, n_self, seed + 1)
    rows = [{**r, "source": "teacher"} for r in chosen_teacher] + [{**r, "source": "self"} for r in chosen_self]
    if priority:
        rows = by_priority(rows, priority, seed)
    if max_per_question is not None:
        rows = cap_per_question(rows, max_per_question, seed)
    n_teacher = sum(r["source"] == "teacher" for r in rows)
    teacher_keys = {(r["id"], _normalise(r["completion"])) for r in rows if r["source"] == "teacher"}
    reproductions = sum(r["source"] == "self" and (r["id"], _normalise(r["completion"])) in teacher_keys for r in rows)
    return Mix(rows=rows, teacher_rows=n_teacher, self_rows=len(rows) - n_teacher, reproductions=reproductions,
               untagged=untagged)
