"""Stage pieces that need no model: data derivation, teacher keep rules, sampling rounds, training mix."""

import pytest

from siked_runtime.spec import validate_spec
from siked_runtime.stages import run_stage
from siked_runtime.graph import StageKey
from siked_runtime.stages.data import eval_sets, train_questions
from siked_runtime.stages.sample import plan_round
from siked_runtime.stages.teacher import keep_correct
from siked_runtime.stages.train import training_rows
from siked_runtime.storage import open_store, read_manifest


def spec_of(**patch):
    patch.setdefault("student", {"model": "builtin:tiny-random"})
    patch.setdefault("datasets", {
        "train": {"name": "train", "source": "synthetic", "synthetic": {"n": 30, "seed": 1}},
        "validationFromTrain": 6,
        "eval": [{"name": "test", "source": "synthetic", "synthetic": {"n": 8, "seed": 2}}],
    })
    return validate_spec(patch)


def test_train_and_validation_are_disjoint_and_stable():
    spec = spec_of()
    train, sets = train_questions(spec), eval_sets(spec)
    assert list(sets) == ["validation", "test"] and len(sets["validation"]) == 6
    held = {r["question"] for rows in sets.values() for r in rows}
    assert not held & {r["question"] for r in train}
    assert [r["id"] for r in train] == [r["id"] for r in train_questions(spec)]


def test_synthetic_families_select_problems():
    spec = spec_of(datasets={
        "train": {"name": "train", "source": "synthetic",
                  "synthetic": {"n": 12, "seed": 1, "families": ["short_story", "big_arithmetic"]}},
        "validationFromTrain": 2,
    })
    assert {r["meta"]["family"] for r in train_questions(spec)} == {"short_story", "big_arithmetic"}


def test_keep_correct_caps_per_question_and_strategy():
    rows = [{"id": "q", "strategy": "cot", "verdict": v} for v in ("wrong", "correct", "correct", "correct")]
    rows += [{"id": "q", "strategy": "pot", "verdict": "correct"}]
    kept = keep_correct(rows, m=2)
    assert [(r["strategy"], r["verdict"]) for r in kept] == [("cot", "correct")] * 2 + [("pot", "correct")]


def test_plan_round_respects_budget_and_caps():
    assert plan_round({"a": 8, "b": 8, "c": 8}, budget_left=5, per_round=2) == {"a": 2, "b": 2, "c": 1}
    assert plan_round({"a": 1, "b": 8}, budget_left=10, per_round=2) == {"a": 1, "b": 2}
    assert plan_round({"a": 4}, budget_left=0, per_round=2) == {}


def test_teacher_stage_publishes_verified_rows(tmp_path):
    spec = spec_of()
    store = open_store(str(tmp_path))
    manifest = run_stage(spec, store, StageKey("teacher"))
    assert manifest["questions"] == 24 and manifest["rows"] == 72
    assert manifest["strategies"]["pot"]["accuracy"] == 1.0
    assert read_manifest(store, "teacher")["rows"] == 72
    assert len(store.read_jsonl("teacher/solutions.jsonl.gz")) == 72
    # a finished stage is a no-op: same manifest back, nothing rewritten
    assert run_stage(spec, store, StageKey("teacher")) == manifest


@pytest.mark.parametrize("policy,expect_teacher", [("all", 72), ("adaptive", 69), ("self", 0)])
def test_training_rows_mix_teacher_and_self(tmp_path, policy, expect_teacher):
    spec = spec_of(mixing={"policy": policy})
    store = open_store(str(tmp_path))
    run_stage(spec, store, StageKey("teacher"))
    q = train_questions(spec)[0]
    own = [{"id": q["id"], "strategy": "pot", "completion": "[pot]\nanswer = 1", "verdict": "correct"}]
    store.write_jsonl("iter-001/sample/correct.jsonl.gz", own)
    rows, mixed = training_rows(spec, store, 1)
    assert (mixed.teacher_rows, mixed.self_rows) == (expect_teacher, 1)
    assert all(r["prompt"].endswith(r["prompt"].split("Question: ")[-1]) for r in rows)
    assert {r["source"] for r in rows} == ({"self"} if policy == "self" else {"teacher", "self"})
    # iteration 0 is always the teacher's data alone
    rows0, mixed0 = training_rows(spec, store, 0)
    assert (mixed0.teacher_rows, mixed0.self_rows) == (72, 0)


@pytest.mark.parametrize("evaluation_dtype, expected", [("auto", "bfloat16"), ("float32", "float32")])
def test_evaluation_loads_the_student_in_its_own_dtype(tmp_path, monkeypatch, evaluation_dtype, expected):
    # bf16 answers change with the batch (benchmarks/batch_invariance.py): evaluation.dtype float32 scores in
    # float32 while the student trains and samples in bf16; `auto` follows student.dtype.
    from siked_runtime import samplers

    loaded = []
    real = samplers.make_sampler

    def recording(*args, **kwargs):
        sampler = real(*args, **kwargs)
        loaded.append(str(sampler.model.dtype).removeprefix("torch."))
        return sampler

    monkeypatch.setattr(samplers, "make_sampler", recording)
    spec = spec_of(student={"model": "builtin:tiny-random", "dtype": "bfloat16"},
                   evaluation={"dtype": evaluation_dtype, "maxNewTokens": 8})
    manifest = run_stage(spec, open_store(str(tmp_path)), StageKey("baseline"))
    assert loaded == [expected]
    assert set(manifest["accuracy"]) == {"validation", "test"}
