"""The sample stage's adaptive budget: which questions stay open, and for how many more samples."""

from __future__ import annotations

from collections import defaultdict

from siked_runtime.spec import IterationsSpec
from siked_runtime.stages.sample import open_questions, plan_round


def test_open_questions_stop_at_m_give_up_after_k_and_extend_partial_ones():
    it = IterationsSpec(samples_per_question=4, max_correct_per_question=2)
    drawn = defaultdict(int, {"done": 3, "hopeless": 4, "partial": 4, "fresh": 0, "trying": 2})
    correct = defaultdict(int, {"done": 2, "partial": 1, "trying": 0})
    out = open_questions(it, drawn, correct, ["done", "hopeless", "partial", "fresh", "trying"])
    # partial (one correct of m = 2) first and up to 2k; then by samples drawn; hopeless gave up at k
    assert out == {"partial": 4, "fresh": 4, "trying": 2}
    assert list(out) == ["partial", "fresh", "trying"]
    eager = IterationsSpec(samples_per_question=4, max_correct_per_question=2, give_up_after=2)
    assert open_questions(eager, drawn, correct, ["fresh", "trying"]) == {"fresh": 2}


def test_plan_round_spends_within_the_budget():
    assert plan_round({"a": 4, "b": 1, "c": 3}, budget_left=4, per_round=2) == {"a": 2, "b": 1, "c": 1}
    assert plan_round({"a": 4}, budget_left=0, per_round=1) == {}
