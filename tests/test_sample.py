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


def test_rounds_of_one_sample_draw_what_fixed_k_draws(tmp_path):
    """With no correct sample to stop on (a random student), the adaptive budget draws each question's
    k samples over k rounds, and they are fixed k's samples: the two modes are paired draw by draw."""
    import shutil

    from siked_runtime.graph import StageKey
    from siked_runtime.models import resolve_model
    from siked_runtime.spec import validate_spec
    from siked_runtime.stages import run_stage
    from siked_runtime.storage import open_store

    drawn = {}
    for adaptive in (False, True):
        spec = validate_spec({
            "student": {"model": "builtin:tiny-random", "dtype": "float32"},
            "datasets": {"train": {"name": "train", "source": "synthetic", "synthetic": {"n": 7, "seed": 1}},
                         "validationFromTrain": 2, "eval": []},
            "iterations": {"samplesPerQuestion": 3, "maxCorrectPerQuestion": 1, "temperature": 1.0,
                           "adaptiveBudget": adaptive},
            "sampling": {"batchSize": 16, "maxNewTokens": 10}})
        store = open_store(str(tmp_path / str(adaptive)))
        shutil.copytree(resolve_model("builtin:tiny-random"), store.root / "iter-000" / "train" / "model")
        manifest = run_stage(spec, store, StageKey("sample", 1))
        assert manifest["rounds"] == (3 if adaptive else 1) and manifest["rows"] == 0
        rows = store.read_jsonl("iter-001/sample/all.jsonl.gz")
        per_question = defaultdict(list)
        for row in sorted(rows, key=lambda r: r["round"]):  # stable: a round's samples stay in order
            per_question[row["id"]].append(row["completion"])
        drawn[adaptive] = dict(per_question)
    assert drawn[True] == drawn[False] and len(drawn[True]) == 5
    assert all(len(samples) == 3 for samples in drawn[True].values())
    assert len({c for samples in drawn[True].values() for c in samples}) > 5  # samples, not one repeated
