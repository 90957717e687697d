"""`siked experiment`: arms at equal compute, seeds, resume, the comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from siked_runtime.cli import main
from siked_runtime.experiment import arm_runs, load_experiment, merge, run_experiment
from siked_runtime.storage import list_manifests, open_store

ROOT = Path(__file__).resolve().parents[1]


def _experiment(tmp_path: Path, **spec) -> Path:
    doc = {"apiVersion": "siked.io/v1alpha1", "kind": "Experiment", "metadata": {"name": "tiny"},
           "spec": {"base": str(ROOT / "examples" / "smoke.yaml"), "seeds": [0, 1], "totalTrainSteps": 4,
                    "arms": [{"name": "combined", "patch": {"method": "distill"}},
                             {"name": "siked-all", "patch": {"method": "siked", "mixing": {"policy": "all"}}}],
                    **spec}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_merge_recurses_into_mappings_and_replaces_lists() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge(base, {"a": {"c": [3]}, "e": None}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": None}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # not modified


def test_every_arm_gets_the_same_training_steps() -> None:
    _, experiment, base = load_experiment(ROOT / "examples" / "experiment.yaml", "full")
    runs = arm_runs(experiment, base)
    assert len(runs) == 7 * 3 and {run.metadata.name for _, _, run in runs} >= {"cot-only-s0", "siked-self-s2"}
    for arm, seed, run in runs:
        stages = 1 if run.spec.method == "distill" else run.spec.iterations.max + 1
        assert run.spec.training.max_steps * stages == experiment.total_train_steps, arm.name
        assert run.spec.seed == seed and run.spec.mixing.max_per_question is None
    assert next(r for a, _, r in runs if a.name == "pot-only").spec.strategies == ["pot"]
    _, small, _ = load_experiment(ROOT / "examples" / "experiment.yaml", "small")
    assert small.seeds == [0, 1] and small.total_train_steps == 40


def test_bad_experiments_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no budget 'huge'"):
        load_experiment(ROOT / "examples" / "experiment.yaml", "huge")
    path = _experiment(tmp_path, arms=[{"name": "a", "patch": {}}, {"name": "a", "patch": {}}])
    with pytest.raises(ValueError, match="arm names must be unique"):
        load_experiment(path)
    path = _experiment(tmp_path, arms=[{"name": "a", "patch": {"mixing": {"policy": "sometimes"}}},
                                       {"name": "b", "patch": {}}])
    _, experiment, base = load_experiment(path)
    with pytest.raises(ValueError, match="spec.mixing.policy"):
        arm_runs(experiment, base)


def test_tiny_experiment_runs_reports_and_resumes(tmp_path: Path) -> None:
    path, out = _experiment(tmp_path), tmp_path / "out"
    summary = run_experiment(path, out)

    assert set(summary["arms"]) == {"combined", "siked-all"}
    combined, siked = summary["arms"]["combined"], summary["arms"]["siked-all"]
    assert combined["runs"] == siked["runs"] == 2
    assert combined["steps_per_stage"] == 4 and siked["steps_per_stage"] == 2  # equal compute
    assert len(combined["iterations"]) == 1 and len(siked["iterations"]) == 2
    for arm in (combined, siked):
        stat = arm["final"]["synthetic-test"]
        assert stat["n"] == 2 and stat["min"] <= stat["mean"] <= stat["max"]
    assert siked["iterations"][1]["alpha"] is not None and combined["iterations"][0]["alpha"] is None
    report = (out / "experiment.md").read_text()
    assert "| combined | 2 | 4 |" in report and "| siked-all | 1 |" in report  # per-iteration rows
    for png in ("final.png", "iterations.png", "strategies.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "experiment.json").read_text())["total_train_steps"] == 4

    # Run again: every run is finished, nothing is redone.
    published = {d.name: {k: m["published_at"] for k, m in list_manifests(open_store(str(d))).items()}
                 for d in out.iterdir() if d.is_dir()}
    assert len(published) == 4
    assert main(["experiment", str(path), "--dir", str(out)]) == 0
    again = {d.name: {k: m["published_at"] for k, m in list_manifests(open_store(str(d))).items()}
             for d in out.iterdir() if d.is_dir()}
    assert again == published
