"""The stage graph: what runs next for every method, stopping rules and best iteration."""

import pytest

from siked_runtime.graph import (
    BASELINE, EVAL, EXPORT, SAMPLE, TEACHER, TEACHER_EVAL, TRAIN, StageKey, plan, score_iterations,
)
from siked_runtime.spec import validate_spec


def spec_of(**patch):
    patch.setdefault("student", {"model": "m"})
    patch.setdefault("evaluation", {"baseline": False})
    return validate_spec(patch)


def eval_manifest(acc):
    return {"accuracy": {"validation": acc, "test": acc / 2}}


def drive(spec, accuracies, limit=100):
    """Run the planner to the end like an executor: always the first runnable stage."""
    done, order = {}, []
    for _ in range(limit):
        p = plan(spec, done)
        if p.finished:
            return order, p
        assert p.runnable, f"stuck with {sorted(done)}"
        key = p.runnable[0]
        order.append(str(key))
        done[key.prefix] = eval_manifest(accuracies[key.iteration]) if key.stage == EVAL else {"ok": True}
    raise AssertionError("did not finish")


def test_stage_key_prefixes_roundtrip():
    keys = [StageKey(TEACHER), StageKey(BASELINE), StageKey(TEACHER_EVAL), StageKey(EXPORT),
            StageKey(SAMPLE, 1), StageKey(TRAIN, 0), StageKey(EVAL, 12)]
    assert [k.prefix for k in keys] == [
        "teacher", "baseline", "teacher-eval", "final", "iter-001/sample", "iter-000/train", "iter-012/eval"]
    assert all(StageKey.from_prefix(k.prefix) == k for k in keys)


@pytest.mark.parametrize("bad", [("train", None), ("teacher", 1), ("nope", None), ("eval", -1)])
def test_stage_key_rejects_bad(bad):
    with pytest.raises(ValueError):
        StageKey(*bad)


def test_from_prefix_rejects_garbage():
    for prefix in ("iter-x/train", "whatever", "iter-001/bogus"):
        with pytest.raises(ValueError):
            StageKey.from_prefix(prefix)


def test_siked_full_order_without_early_stop():
    spec = spec_of(iterations={"max": 2, "earlyStopping": {"patience": None}})
    order, p = drive(spec, [0.1, 0.2, 0.3])
    assert order == ["teacher", "train[0]", "eval[0]", "sample[1]", "train[1]", "eval[1]",
                     "sample[2]", "train[2]", "eval[2]", "export"]
    assert p.best_iteration == 2 and p.last_iteration == 2
    assert p.stop_reason == "reached the last iteration (2)"


def test_distill_is_one_pass():
    spec = spec_of(method="distill", iterations={"max": 5})
    order, p = drive(spec, [0.4])
    assert order == ["teacher", "train[0]", "eval[0]", "export"]
    assert p.best_iteration == 0


def test_skintern_chains_training_without_sampling_and_ignores_early_stop():
    spec = spec_of(method="skintern", internalization={"stages": 3, "reference": False},
                   iterations={"targetAccuracy": 0.1})
    order, p = drive(spec, [0.5, 0.4, 0.3])
    assert order == ["teacher", "train[0]", "eval[0]", "train[1]", "eval[1]", "train[2]", "eval[2]", "export"]
    assert p.best_iteration == 2  # the schedule's last, question-only stage, whatever validation says


def test_max_zero_siked_equals_teacher_only():
    order, _ = drive(spec_of(iterations={"max": 0}), [0.3])
    assert order == ["teacher", "train[0]", "eval[0]", "export"]


def test_baseline_and_teacher_eval_are_runnable_from_the_start_and_gate_export():
    spec = spec_of(iterations={"max": 0}, evaluation={"baseline": True, "teacher": True})
    p = plan(spec, {})
    assert [str(k) for k in p.runnable] == ["teacher", "baseline", "teacher-eval"]
    done = {"teacher": {}, "iter-000/train": {}, "iter-000/eval": eval_manifest(0.5)}
    p = plan(spec, done)
    assert [str(k) for k in p.runnable] == ["baseline", "teacher-eval"]  # export waits for them
    done |= {"baseline": {}, "teacher-eval": {}}
    assert [str(k) for k in plan(spec, done).runnable] == ["export"]


def test_train0_waits_for_teacher():
    spec = spec_of(evaluation={"baseline": True})
    p = plan(spec, {"baseline": {}})
    assert [str(k) for k in p.runnable] == ["teacher"]


def test_early_stop_after_patience_without_improvement():
    spec = spec_of(iterations={"max": 10, "earlyStopping": {"patience": 2, "minDelta": 0.01}})
    # iteration 2 gains only 0.005 (< minDelta), iteration 3 drops: two stale iterations
    order, p = drive(spec, [0.30, 0.40, 0.405, 0.39, 0.9])
    assert order[-1] == "export" and "eval[3]" in order and "sample[4]" not in order
    assert p.stop_reason.startswith("no validation improvement for 2 iteration(s)")
    assert p.best_iteration == 2 and p.last_iteration == 3


def test_regression_flagged_and_counts_against_patience():
    spec = spec_of(iterations={"max": 10, "regressionTolerance": 0.05, "earlyStopping": {"patience": 1}})
    results = score_iterations(spec, [0.5, 0.6, 0.52])
    assert [r.regressed for r in results] == [False, False, True]
    assert [r.improved for r in results] == [True, True, False]
    order, p = drive(spec, [0.5, 0.6, 0.52, 0.9])
    assert "eval[2]" in order and "sample[3]" not in order
    assert p.best_iteration == 1


def test_small_drop_within_tolerance_is_not_a_regression():
    spec = spec_of(iterations={"regressionTolerance": 0.05})
    assert [r.regressed for r in score_iterations(spec, [0.5, 0.46])] == [False, False]


def test_target_accuracy_ends_run_early():
    spec = spec_of(iterations={"max": 5, "targetAccuracy": 0.6})
    order, p = drive(spec, [0.3, 0.65, 0.9])
    assert order == ["teacher", "train[0]", "eval[0]", "sample[1]", "train[1]", "eval[1]", "export"]
    assert "reached the target 0.6" in p.stop_reason


def test_best_iteration_ties_pick_earliest():
    spec = spec_of(iterations={"max": 2, "earlyStopping": {"patience": None}})
    _, p = drive(spec, [0.5, 0.7, 0.7])
    assert p.best_iteration == 1


def test_resume_from_any_point_gives_same_remaining_order():
    spec = spec_of(iterations={"max": 2, "earlyStopping": {"patience": None}}, evaluation={"baseline": True})
    accs = [0.1, 0.2, 0.3]
    full, _ = drive(spec, accs)
    for cut in range(len(full)):
        done = {}
        for name in full[:cut]:
            key = next(k for k in _keys(name))
            done[key.prefix] = eval_manifest(accs[key.iteration]) if key.stage == EVAL else {}
        p = plan(spec, done)
        assert str(p.runnable[0]) == full[cut]
        assert not p.finished


def _keys(name):
    if "[" in name:
        stage, it = name.rstrip("]").split("[")
        yield StageKey(stage, int(it))
    else:
        yield StageKey(name)


def test_finished_plan_has_nothing_runnable():
    spec = spec_of(iterations={"max": 0})
    done = {"teacher": {}, "iter-000/train": {}, "iter-000/eval": eval_manifest(0.4), "final": {}}
    p = plan(spec, done)
    assert p.finished and p.runnable == () and p.next is None


def test_plan_is_pure():
    spec = spec_of()
    done = {"teacher": {}, "iter-000/train": {}}
    snapshot = dict(done)
    assert plan(spec, done) == plan(spec, done)
    assert done == snapshot


def test_eval_manifest_without_validation_is_an_error():
    spec = spec_of()
    with pytest.raises(ValueError, match="accuracy.validation"):
        plan(spec, {"teacher": {}, "iter-000/train": {}, "iter-000/eval": {"accuracy": {"test": 0.3}}})


def test_gap_in_iterations_resumes_at_first_unevaluated():
    spec = spec_of(iterations={"max": 3, "earlyStopping": {"patience": None}})
    # eval[1] missing although sample[2] exists (e.g. a manifest removed by hand): redo eval[1]
    done = {"teacher": {}, "iter-000/train": {}, "iter-000/eval": eval_manifest(0.1),
            "iter-001/sample": {}, "iter-001/train": {}, "iter-002/sample": {}}
    assert [str(k) for k in plan(spec, done).runnable] == ["eval[1]"]
