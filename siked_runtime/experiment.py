"""A grid of DistillationRuns compared at equal training compute: `siked experiment EXPERIMENT.yaml`.

    siked experiment examples/experiment.yaml --budget small --dir runs/experiment

An experiment names a base manifest, arms (each a patch of the base spec), seeds and the
total number of optimizer steps every arm gets. An arm that trains in k stages (a
distillation arm: 1; SIKeD with iterations.max = T: T + 1) gets total / k steps per
stage, with the same batch size, so all arms see the same number of training sequences.
Each (arm, seed) is an ordinary run in `<dir>/<arm>-s<seed>`, executed by the local
runner: an interrupted experiment resumes where it stopped and finished runs are not
redone. `experiment.json`, `experiment.md` and plots are written after every run.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from siked_runtime.graph import VALIDATION
from siked_runtime.local_runner import run_local
from siked_runtime.spec import DistillationRun, parse_manifest
from siked_runtime.stages.common import log
from siked_runtime.storage import list_manifests, open_store


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Arm(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Short name; runs go to <dir>/<name>-s<seed>.")
    patch: dict[str, Any] = Field(default_factory=dict, description="Merged into the base spec (lists replace).")


class ExperimentSpec(_Model):
    base: str = Field(description="DistillationRun manifest every arm starts from, relative to this file.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, description="spec.seed of each run.")
    total_train_steps: int = Field(ge=1, description="Optimizer steps per run, summed over its training stages.")
    arms: list[Arm] = Field(min_length=2)
    budgets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Named patches of every arm's spec and of this experiment (`experiment`)."
    )

    @field_validator("arms")
    @classmethod
    def _unique(cls, arms: list[Arm]) -> list[Arm]:
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        return arms

    @model_validator(mode="after")
    def _seeds(self) -> ExperimentSpec:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f".seeds must be distinct, got {self.seeds}")
        return self


def merge(base: dict, patch: dict) -> dict:
    """`base` with `patch` merged in: mappings recursively, everything else (lists too) replaced."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def training_stages(run: DistillationRun) -> int:
    """How many training stages the run has when it goes to its last iteration."""
    return 1 if run.spec.method == "distill" else run.spec.last_iteration + 1


def load_experiment(path: str | Path, budget: str | None = None) -> tuple[str, ExperimentSpec, dict]:
    """(name, experiment, base manifest) with the budget's patches applied."""
    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or doc.get("kind") != "Experiment":
        raise ValueError(f"{path}: not an Experiment manifest (kind: Experiment)")
    raw = doc.get("spec") or {}
    budgets = raw.get("budgets") or {}
    if budget is not None:
        if budget not in budgets:
            raise ValueError(f"{path}: no budget {budget!r}; it defines {', '.join(budgets) or 'none'}")
        raw = merge(raw, budgets[budget].get("experiment", {}))
    experiment = ExperimentSpec.model_validate(raw)
    base = yaml.safe_load((path.parent / experiment.base).read_text())
    if budget is not None:
        base = merge(base, {"spec": budgets[budget].get("spec", {})})
    return (doc.get("metadata") or {}).get("name", path.stem), experiment, base


def arm_runs(experiment: ExperimentSpec, base: dict) -> list[tuple[Arm, int, DistillationRun]]:
    """Every (arm, seed) as a validated run, with its per-stage step budget set."""
    runs = []
    for arm in experiment.arms:
        for seed in experiment.seeds:
            manifest = merge(base, {"metadata": {"name": f"{arm.name}-s{seed}"}, "spec": {**arm.patch, "seed": seed}})
            run = parse_manifest(manifest, f"arm {arm.name}")
            steps = experiment.total_train_steps // training_stages(run)
            manifest = merge(manifest, {"spec": {"training": {"maxSteps": max(steps, 1)}}})
            runs.append((arm, seed, parse_manifest(manifest, f"arm {arm.name}")))
    return runs


def _wall_seconds(run_dir: Path) -> float:
    return sum(m.get("duration_seconds") or 0.0 for m in list_manifests(open_store(str(run_dir))).values())


def _final(report: dict) -> dict[str, float]:
    """Accuracy per set of the run's final (best-on-validation) iteration."""
    best = report.get("best_iteration")
    for it in report.get("iterations", []):
        if it["iteration"] == best:
            return dict(it["eval"])
    return {}


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarize(name: str, experiment: ExperimentSpec, results: list[dict]) -> dict:
    """experiment.json: per arm, the final accuracy per set over seeds, iteration curves, wall time."""
    arms = {}
    for arm in experiment.arms:
        mine = [r for r in results if r["arm"] == arm.name]
        sets = sorted({s for r in mine for s in r["final"]}, key=lambda s: (s != VALIDATION, s))
        arms[arm.name] = {
            "patch": arm.patch,
            "runs": len(mine),
            "steps_per_stage": mine[0]["steps_per_stage"] if mine else None,
            "final": {s: _spread([r["final"][s] for r in mine if s in r["final"]]) for s in sets},
            "untrained": {s: _spread([r["baseline"][s] for r in mine if s in r["baseline"]]) for s in sets
                          if any(s in r["baseline"] for r in mine)},
            "wall_seconds": _spread([r["wall_seconds"] for r in mine]) if mine else None,
            "iterations": _mean_iterations([r["report"] for r in mine]),
        }
    return {"name": name, "seeds": experiment.seeds, "total_train_steps": experiment.total_train_steps,
            "arms": arms, "runs": [{k: v for k, v in r.items() if k != "report"} for r in results]}


def _mean_iterations(reports: list[dict]) -> list[dict]:
    """Per iteration, the mean over seeds of accuracy per set, strategy shares (train, student) and α."""
    by_it: dict[int, list[dict]] = {}
    for report in reports:
        for it in report.get("iterations", []):
            by_it.setdefault(it["iteration"], []).append(it)
    out = []
    for t in sorted(by_it):
        its = by_it[t]

        def mean_of(field: str, its=its) -> dict[str, float]:
            keys = sorted({k for it in its for k in (it.get(field) or {})})
            return {k: statistics.fmean([(it.get(field) or {}).get(k, 0.0) for it in its]) for k in keys}

        alphas = [it["alpha"] for it in its if it.get("alpha") is not None]
        out.append({"iteration": t, "runs": len(its), "eval": mean_of("eval"),
                    "train_strategy_shares": mean_of("train_strategy_shares"),
                    "strategy_shares": mean_of("strategy_shares"),
                    "alpha": statistics.fmean(alphas) if alphas else None})
    return out


def run_experiment(path: str | Path, out_dir: str | Path, budget: str | None = None) -> dict:
    """Run every (arm, seed) not finished yet, then write the comparison report into `out_dir`."""
    from siked_runtime.experiment_report import write_experiment_report

    name, experiment, base = load_experiment(path, budget)
    out = Path(out_dir)
    runs = arm_runs(experiment, base)
    results: list[dict] = []
    for k, (arm, seed, run) in enumerate(runs, 1):
        run_dir = out / run.metadata.name
        log(f"experiment {name}: run {k}/{len(runs)}: arm {arm.name}, seed {seed} "
            f"({run.spec.training.max_steps} steps per training stage) in {run_dir}")
        report = run_local(run, run_dir)
        results.append({"arm": arm.name, "seed": seed, "dir": str(run_dir), "final": _final(report),
                        "baseline": report.get("baseline", {}), "best_iteration": report.get("best_iteration"),
                        "steps_per_stage": run.spec.training.max_steps, "wall_seconds": _wall_seconds(run_dir),
                        "report": report})
        summary = summarize(name, experiment, results)
        write_experiment_report(summary, out)
    return summary
