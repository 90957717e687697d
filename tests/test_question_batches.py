"""Batches by question: every strategy's row of a question in one training batch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from siked_runtime.models import resolve_model
from siked_runtime.question_batches import QuestionGroupedSampler, question_groups
from siked_runtime.spec import StudentSpec, TrainingSpec
from siked_runtime.strategies import build_prompt, format_solution
from siked_runtime.training import build_trainer


def test_groups_follow_the_question_ids_in_order_of_first_row() -> None:
    assert question_groups(["b", "a", "b", 7, "a", "7"]) == [[0, 2], [1, 4], [3, 5]]


def test_the_sampler_yields_every_row_once_with_each_question_contiguous() -> None:
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12]]
    sampler = QuestionGroupedSampler(groups, seed=3)
    epochs = [list(sampler) for _ in range(3)]
    owner = {i: g for g, members in enumerate(groups) for i in members}
    for order in epochs:
        assert sorted(order) == list(range(13)) and len(sampler) == 13
        runs = [owner[i] for i in order]
        # a question's rows form one run: its group id never comes back after another's
        seen = [g for k, g in enumerate(runs) if k == 0 or runs[k - 1] != g]
        assert len(seen) == len(groups)
    assert len({tuple(o) for o in epochs}) == 3            # a new order every epoch
    again = QuestionGroupedSampler(groups, seed=3)
    assert list(again) == epochs[0]                        # seeded: the same first epoch
    assert list(QuestionGroupedSampler(groups, seed=4)) != epochs[0]


def _rows(questions: int) -> list[dict]:
    rows = []
    for q in range(questions):
        a, b = q + 2, 3 * q + 5
        prompt = build_prompt(f"Ann has {a} pens and gets {b} more. How many pens does she have?")
        for strategy, steps in (("cot", f"{a} + {b} = {a + b}."), ("l2m", f"Q: pens? A: {a} + {b} = {a + b}."),
                                ("pot", f"print({a} + {b})")):
            rows.append({"id": f"q{q}", "strategy": strategy, "prompt": prompt,
                         "completion": format_solution(strategy, steps, a + b)})
    return rows


@pytest.mark.parametrize("by_question", [True, False])
def test_the_trainer_batches_whole_questions_only_when_asked(tmp_path: Path, by_question: bool) -> None:
    tiny = resolve_model("builtin:tiny-random", cache_dir=tmp_path / "models")
    rows = _rows(12)
    training = TrainingSpec(max_steps=12, batch_size=3, batch_by_question=by_question)
    trainer = build_trainer(tiny, rows, StudentSpec(model="builtin:tiny-random"), training, seed=0,
                            output_dir=str(tmp_path / "out"))
    tokenizer = trainer.processing_class
    whole = 0
    for batch in trainer.get_train_dataloader():
        texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        questions = Counter(t.split("Question: ")[-1].split("How many pens")[0] for t in texts)
        tags = Counter(t.rsplit("How many pens does she have?", 1)[-1].split()[1] for t in texts)  # after "assistant"
        whole += len(questions) == 1 and tags == Counter({"[cot]": 1, "[l2m]": 1, "[pot]": 1})
    if by_question:
        assert whole == 12        # every batch: one question, in all three strategies
    else:
        assert whole < 6          # length groups put the strategies of a question in different batches
