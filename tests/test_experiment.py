"""`siked experiment`: arms at equal compute, seeds, resume, the comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from siked_runtime.cli import main
from siked_runtime.experiment import arm_runs, load_experiment, merge, run_experiment, shared_run
from siked_runtime.pilot import gate, render_markdown, tabulate
from siked_runtime.storage import list_manifests, open_store

ROOT = Path(__file__).resolve().parents[1]


def _experiment(tmp_path: Path, **spec) -> Path:
    doc = {"apiVersion": "siked.io/v1alpha1", "kind": "Experiment", "metadata": {"name": "tiny"},
           "spec": {"base": str(ROOT / "examples" / "smoke.yaml"), "seeds": [0, 1], "totalTrainSteps": 4,
                    "iteration0Steps": 2, "pilot": {"questions": 6, "required": False},
                    "arms": [{"name": "combined", "patch": {"method": "siked", "mixing": {"policy": "teacher"}}},
                             {"name": "siked-all", "patch": {"method": "siked", "mixing": {"policy": "all"}}},
                             {"name": "pot-only", "patch": {"method": "distill", "strategies": ["pot"]}}],
                    **spec}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_merge_recurses_into_mappings_and_replaces_lists() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge(base, {"a": {"c": [3]}, "e": None}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": None}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # not modified


@pytest.mark.parametrize("budget", [None, "medium", "medium-routing", "medium-fp32", "full"])
def test_every_arm_gets_the_same_training_steps(budget) -> None:
    _, experiment, base = load_experiment(ROOT / "examples" / "experiment.yaml", budget)
    runs = arm_runs(experiment, base)
    assert len(runs) == len(experiment.arms) * len(experiment.seeds)
    for arm, seed, run in runs:
        assert run.spec.seed == seed and run.spec.iterations.early_stopping.patience is None
        assert not run.spec.evaluation.baseline  # scored once, in the first seed's iteration 0
        if run.spec.method == "distill":
            assert run.spec.training.max_steps == experiment.total_train_steps, arm.name
        else:
            first = shared_run(experiment, base, seed)
            assert first.spec.iterations.max == 0
            total = first.spec.training.max_steps + run.spec.training.max_steps * run.spec.iterations.max
            assert experiment.total_train_steps - run.spec.iterations.max < total <= experiment.total_train_steps
    assert {r.spec.mixing.policy for a, _, r in runs if a.name == experiment.reference} == {"teacher"}


def test_the_experiment_counts_steps_itself_whatever_the_base_gives_iteration_0(tmp_path: Path) -> None:
    base_doc = yaml.safe_load((ROOT / "examples" / "smoke.yaml").read_text())
    base_doc["spec"]["training"].update({"iteration0Steps": 3, "maxSteps": 1})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base_doc))
    # The base's own iteration0Steps is the shared iteration 0's when the experiment sets none ...
    _, experiment, base = load_experiment(_experiment(tmp_path, base="base.yaml", iteration0Steps=None,
                                                      totalTrainSteps=7))
    first = shared_run(experiment, base, 0).spec.training
    assert (first.max_steps, first.iteration0_steps) == (3, None)
    steps = {arm.name: (run.spec.training.max_steps, run.spec.training.iteration0_steps)
             for arm, seed, run in arm_runs(experiment, base) if seed == 0}
    assert steps == {"combined": (4, None), "siked-all": (4, None), "pot-only": (7, None)}
    # ... and the experiment's own wins over it.
    _, experiment, base = load_experiment(_experiment(tmp_path, base="base.yaml", totalTrainSteps=7))
    assert shared_run(experiment, base, 0).spec.training.max_steps == 2
    assert {run.spec.training.max_steps for arm, _, run in arm_runs(experiment, base) if arm.name == "combined"} == {5}


@pytest.mark.parametrize("budget", ["medium", "medium-routing", "medium-fp32"])
def test_medium_budget_has_power_and_fits(budget) -> None:
    _, experiment, base = load_experiment(ROOT / "examples" / "experiment.yaml", budget)
    spec = shared_run(experiment, base, 0).spec
    assert len(experiment.seeds) >= 3 and spec.datasets.eval[0].synthetic.n >= 300
    # Only medium-routing goes on past a refusing gate (it asks a question the gate does not guard).
    assert experiment.pilot.required is (budget != "medium-routing")


def test_bad_experiments_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no budget 'huge'"):
        load_experiment(ROOT / "examples" / "experiment.yaml", "huge")
    path = _experiment(tmp_path, arms=[{"name": "a", "patch": {}}, {"name": "a", "patch": {}}])
    with pytest.raises(ValueError, match="arm names must be unique"):
        load_experiment(path)
    with pytest.raises(ValueError, match="reference 'combined' is not an arm"):
        load_experiment(_experiment(tmp_path, arms=[{"name": "a", "patch": {}}, {"name": "b", "patch": {}}]))
    path = _experiment(tmp_path, arms=[{"name": "combined", "patch": {"mixing": {"policy": "sometimes"}}},
                                       {"name": "b", "patch": {}}])
    _, experiment, base = load_experiment(path)
    with pytest.raises(ValueError, match="spec.mixing.policy"):
        arm_runs(experiment, base)
    path = _experiment(tmp_path, arms=[{"name": "combined", "patch": {"mixing": {"policy": "teacher"}}},
                                       {"name": "cot", "patch": {"strategies": ["cot"]}}])
    _, experiment, base = load_experiment(path)
    with pytest.raises(ValueError, match="arm cot changes what iteration 0 is made of \\(strategies\\)"):
        arm_runs(experiment, base)


def cell(correct: int, n: int) -> dict:
    return {"correct": correct, "n": n, "accuracy": correct / n}


def test_pilot_gate_needs_two_families_with_opposite_winners() -> None:
    opposite = {"piecewise": {"cot": cell(30, 50), "l2m": cell(25, 50), "pot": cell(18, 50)},
                "big_arithmetic": {"cot": cell(5, 50), "l2m": cell(4, 50), "pot": cell(35, 50)}}
    result = gate(opposite, 0.15)
    assert result.passed and result.pair == ("big_arithmetic", "piecewise", "pot", "cot")
    assert result.best == {"piecewise": "cot", "big_arithmetic": "pot"}
    assert result.gaps["big_arithmetic"] == pytest.approx(0.62)

    # pot wins everywhere, by a lot: strategy choice cannot matter, refused
    pot_everywhere = {"piecewise": {"cot": cell(10, 50), "pot": cell(30, 50)},
                      "round_up": {"cot": cell(12, 50), "pot": cell(28, 50)},
                      "big_arithmetic": {"cot": cell(2, 50), "pot": cell(40, 50)}}
    refused = gate(pot_everywhere, 0.15)
    assert not refused.passed and "their best strategies: pot" in refused.reason

    # opposite winners, but one family's gap is below the threshold
    narrow = {"piecewise": {"cot": cell(22, 50), "pot": cell(18, 50)},
              "big_arithmetic": {"cot": cell(5, 50), "pot": cell(35, 50)}}
    assert not gate(narrow, 0.15).passed and gate(narrow, 0.05).passed


def test_pilot_tabulates_counts_per_family_and_strategy() -> None:
    rows = [{"family": "a", "forced": "cot", "verdict": v} for v in ("correct", "wrong", "correct")]
    rows += [{"family": "a", "forced": "pot", "verdict": "timeout"}, {"family": "b", "forced": "pot", "verdict": "correct"}]
    table = tabulate(rows)
    assert {f: {s: {k: c[k] for k in ("correct", "n", "accuracy")} for s, c in cells.items()}
            for f, cells in table.items()} == {"a": {"cot": cell(2, 3), "pot": cell(0, 1)}, "b": {"pot": cell(1, 1)}}
    assert table["a"]["cot"]["claims"] == {"arithmetic": 0, "arithmetic_false": 0, "comparisons": 0,
                                           "comparisons_false": 0, "wrong": 1, "wrong_with_false_claim": 0}


def test_pilot_counts_the_false_claims_of_wrong_text_answers() -> None:
    rows = [  # wrong: a false comparison picks the wrong case
        {"family": "piecewise", "forced": "cot", "verdict": "wrong",
         "completion": "[cot]\n3 is more than 5, so the bonus is 7.\nThe total is 4 + 7 = 11.\nAnswer: 11"},
        # wrong, with every written claim true (it combined the wrong quantities)
        {"family": "piecewise", "forced": "cot", "verdict": "wrong",
         "completion": "[cot]\n8 is not more than 9, so the fee is 3.\nThe total is 8 + 2 = 10.\nAnswer: 10"},
        # right: true claims
        {"family": "piecewise", "forced": "cot", "verdict": "correct",
         "completion": "[cot]\n12 is more than 6, so the price is 6.\nThe cost is 12 * 6 = 72.\nAnswer: 72"},
        # wrong: false arithmetic, and a false remainder
        {"family": "round_up", "forced": "cot", "verdict": "wrong",
         "completion": "[cot]\nThe bagels are 5 * 7 = 36.\n36 / 9 = 4 with 1 left over, so 5.\nAnswer: 5"},
        {"family": "round_up", "forced": "pot", "verdict": "wrong", "completion": "[pot]\nanswer = 36 // 9"},
    ]
    table = tabulate(rows)
    assert table["piecewise"]["cot"]["claims"] == {"arithmetic": 3, "arithmetic_false": 0, "comparisons": 3,
                                                   "comparisons_false": 1, "wrong": 2, "wrong_with_false_claim": 1}
    assert table["round_up"]["cot"]["claims"]["arithmetic_false"] == 2
    assert table["round_up"]["cot"]["claims"]["wrong_with_false_claim"] == 1
    shown = render_markdown(table, gate(table), ["cot", "l2m", "pot"], "about")
    assert "| piecewise | cot | 0.00 (0/3) | 0.33 (1/3) | 0.50 (1/2) |" in shown
    assert "| round_up | cot | 1.00 (2/2) | – | 1.00 (1/1) |" in shown
    assert "| round_up | pot |" not in shown  # a program's claims are Python's: nothing written to check


@pytest.mark.slow
def test_tiny_experiment_pilot_branches_from_iteration0_reports_and_resumes(tmp_path: Path) -> None:
    path, out = _experiment(tmp_path), tmp_path / "out"
    # --pilot: the first seed's iteration 0 and the pilot, nothing else
    assert main(["experiment", str(path), "--dir", str(out), "--pilot"]) == 0
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == ["iteration0-s0"]
    pilot = json.loads((out / "pilot.json").read_text())
    assert set(pilot["strategies"]) == {"cot", "l2m", "pot"}
    assert sum(c["n"] for f in pilot["table"].values() for c in f.values()) == 3 * 6
    assert not pilot["gate"]["passed"]  # a random tiny model solves nothing
    # a required gate that refuses stops the grid
    required = tmp_path / "required" / "experiment.yaml"
    required.parent.mkdir()
    required.write_text(_experiment(tmp_path, pilot={"questions": 6, "required": True}).read_text())
    assert main(["experiment", str(required), "--dir", str(out)]) == 3
    stopped = (out / "experiment.md").read_text()
    assert "Stopped: the pilot's gate refused" in stopped and "the arms ran anyway" not in stopped

    path = _experiment(tmp_path)  # not required: the grid runs, reusing iteration 0 and the pilot
    summary = run_experiment(path, out)
    assert set(summary["arms"]) == {"combined", "siked-all", "pot-only"}
    combined, siked, pot = (summary["arms"][a] for a in ("combined", "siked-all", "pot-only"))
    assert combined["runs"] == siked["runs"] == pot["runs"] == 2
    assert (combined["steps_per_stage"], siked["steps_per_stage"], pot["steps_per_stage"]) == (2, 2, 4)
    assert [it["steps"] for it in siked["iterations"]] == [2, 2] and pot["steps"]["mean"] == 4
    assert siked["iterations"][0]["shared"] and not pot["iterations"][0]["shared"]
    # iteration 0 is the same model in every branching arm of a seed: hard links, one file
    model = "iter-000/train/model/model.safetensors"
    assert (out / "combined-s1" / model).stat().st_ino == (out / "siked-all-s1" / model).stat().st_ino \
        == (out / "iteration0-s1" / model).stat().st_ino
    assert combined["iterations"][1]["self_rows"] == 0 and combined["iterations"][1]["alpha"] == 1.0
    # the untrained student is scored once
    assert (out / "iteration0-s0" / "baseline" / "manifest.json").exists()
    assert not any((out / d / "baseline").exists() for d in ("iteration0-s1", "siked-all-s0", "pot-only-s0"))
    # paired statistics against the reference, per seed and per family
    cmp_ = summary["comparisons"]["siked-all"]["synthetic-test"]
    assert cmp_["n_seeds"] == 2 and len(cmp_["mcnemar"]) == 2 and cmp_["ci"][0] <= cmp_["diff"] <= cmp_["ci"][1]
    assert "combined" not in summary["comparisons"]
    assert summary["pilot"]["questions"] == 6 and (out / "pilot.png").exists()
    report = (out / "experiment.md").read_text()
    assert "Primary result: fixed final iteration" in report and "| siked-all | 1 |" in report
    # the same pilot.json, read back, now under an experiment that does not require its gate
    assert "sets `pilot.required: false`, so the arms ran anyway" in report
    assert "## Per seed (fixed final iteration)" in report
    final = summary["runs"][0]["final"]["strategy_shares"]  # from the test predictions, not the validation's
    assert set(final) == {"validation", "synthetic-test"} and sum(final["synthetic-test"].values()) <= 1.0
    assert {(r["arm"], r["seed"], r["first"]["iteration"], r["final"]["iteration"]) for r in summary["runs"]} == {
        (arm, seed, 0, last) for arm, last in (("combined", 1), ("siked-all", 1), ("pot-only", 0)) for seed in (0, 1)}
    for png in ("final.png", "iterations.png", "strategies.png", "routing.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "experiment.json").read_text())["total_train_steps"] == 4

    # Run again: every run is finished, nothing is redone.
    published = {d.name: {k: m["published_at"] for k, m in list_manifests(open_store(str(d))).items()}
                 for d in out.iterdir() if d.is_dir()}
    assert len(published) == 8
    assert main(["experiment", str(path), "--dir", str(out)]) == 0
    again = {d.name: {k: m["published_at"] for k, m in list_manifests(open_store(str(d))).items()}
             for d in out.iterdir() if d.is_dir()}
    assert again == published


def test_arms_that_differ_only_in_mixing_or_training_reuse_one_sample_stage(tmp_path: Path) -> None:
    arms = [{"name": "combined", "patch": {"method": "siked", "mixing": {"policy": "teacher"}}},
            {"name": "siked-all", "patch": {"method": "siked", "mixing": {"policy": "all"}}},
            {"name": "siked-adaptive", "patch": {"method": "siked", "mixing": {"policy": "adaptive"}}},
            {"name": "siked-hot", "patch": {"method": "siked", "mixing": {"policy": "adaptive"},
                                            "iterations": {"temperature": 1.0}}},
            {"name": "siked-slow", "patch": {"method": "siked", "training": {"learningRate": 0.0001}}}]
    out = tmp_path / "out"
    summary = run_experiment(_experiment(tmp_path, seeds=[0], arms=arms), out)
    sample = "iter-001/sample/all.jsonl.gz"
    combined = json.loads((out / "combined-s0" / "iter-001" / "sample" / "manifest.json").read_text())
    assert combined["samples"] == 0  # the teacher policy samples nothing, and lends nothing
    # same model, same draws: one stage, hard-linked; a different temperature draws its own
    assert (out / "siked-adaptive-s0" / sample).stat().st_ino == (out / "siked-all-s0" / sample).stat().st_ino
    assert (out / "siked-hot-s0" / sample).stat().st_ino != (out / "siked-all-s0" / sample).stat().st_ino
    assert summary["arms"]["siked-adaptive"]["sample_from"] == ["siked-all-s0"]
    assert summary["arms"]["siked-slow"]["sample_from"] == ["siked-all-s0"]  # training after iteration 0 only
    assert (out / "siked-slow-s0" / sample).stat().st_ino == (out / "siked-all-s0" / sample).stat().st_ino
    assert summary["arms"]["siked-all"]["sample_from"] == summary["arms"]["siked-hot"]["sample_from"] == []
    # the reused stage feeds the arm's own mixing: its training data is its own
    for arm in ("siked-all", "siked-adaptive"):
        assert (out / f"{arm}-s0" / "iter-001" / "train" / "manifest.json").exists()
    assert "`siked-adaptive` trains on the self-samples of `siked-all-s0`" in (out / "experiment.md").read_text()


def test_per_seed_table_puts_each_seeds_runs_side_by_side() -> None:
    from siked_runtime.experiment_report import _per_seed

    def run(arm, seed, first, final):
        return {"arm": arm, "seed": seed,
                "first": {"iteration": 0, "eval": {"t": first[0]}, "strategy_shares": {"t": first[1]}},
                "final": {"iteration": 1, "eval": {"t": final[0]}, "strategy_shares": {"t": final[1]}}}

    pot, cot = {"cot": 0.0, "l2m": 0.0, "pot": 1.0}, {"cot": 0.9, "l2m": 0.0, "pot": 0.1}
    summary = {"seeds": [0, 1], "test_sets": ["t"],
               "arms": {"combined": {"branches": True}, "siked": {"branches": True}, "pot-only": {"branches": False}},
               "runs": [run("combined", 0, (0.4, pot), (0.7, pot)), run("siked", 0, (0.4, pot), (0.2, cot)),
                        run("pot-only", 0, (0.5, pot), (0.5, pot)), run("combined", 1, (0.3, cot), (0.3, cot))]}
    lines = _per_seed(summary)
    assert lines[4] == "| seed | iteration 0 (shared) | combined | siked | pot-only |"
    assert lines[6] == ("| 0 | 0.400 · 0.00/0.00/1.00 | 0.700 · 0.00/0.00/1.00 | 0.200 · 0.90/0.00/0.10 | "
                        "0.500 · 0.00/0.00/1.00 |")
    assert lines[7] == "| 1 | 0.300 · 0.90/0.00/0.10 | 0.300 · 0.90/0.00/0.10 | – | – |"
    assert _per_seed({**summary, "runs": []}) == []
