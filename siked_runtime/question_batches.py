"""Training batches that hold whole questions: every strategy's row of a question in one batch.

The teacher writes each question in every strategy, and the student learns its choice of
strategy from the tag that starts each row. Batches grouped by length (the CPU default,
`training.py`) are nearly one strategy each, since a program is shorter than a
least-to-most decomposition; with a few dozen steps at a LoRA learning rate, the strategies
of the last batches then decide the student's tag, whatever the questions (measured: after
30 such steps on the quickstart's data the mean tag probability was pot 0.64–0.69 in two seeds and
0.46 in a third, the same in every family). With `training.batchByQuestion` the sampler
shuffles questions, not rows, and lays each question's rows next to each other, so a batch
whose size is a multiple of the strategies' number holds the data's own strategy mix in
every step; the only mix the tag can learn beyond that is what the self-generated rows add.

    sampler = QuestionGroupedSampler(question_groups([row["id"] for row in rows]), seed=0)
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler


def question_groups(question_ids: list) -> list[list[int]]:
    """Row indices per question, given each row's question id, in order of each question's first row."""
    groups: dict[str, list[int]] = {}
    for i, qid in enumerate(question_ids):
        groups.setdefault(str(qid), []).append(i)
    return list(groups.values())


class QuestionGroupedSampler(Sampler[int]):
    """Yields row indices question by question, questions in a seeded random order that changes
    every epoch; a question's own rows in random order too."""

    def __init__(self, groups: list[list[int]], seed: int):
        self.groups = [list(g) for g in groups if g]
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        self.epoch += 1
        order = list(range(len(self.groups)))
        rng.shuffle(order)
        for i in order:
            rows = list(self.groups[i])
            rng.shuffle(rows)
            yield from rows
