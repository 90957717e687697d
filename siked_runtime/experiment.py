"""A grid of DistillationRuns compared at equal training compute: `siked experiment EXPERIMENT.yaml`.

    siked experiment examples/experiment.yaml --budget medium --pilot   # iteration 0 and the pilot only
    siked experiment examples/experiment.yaml --budget medium --dir runs/experiment

An experiment names a base manifest, arms (each a patch of the base spec), seeds and the
total number of optimizer steps every arm gets.

* Per seed, iteration 0 (teacher data, `iteration0Steps` steps) is trained once, in
  `<dir>/iteration0-s<seed>`. Every SIKeD-method arm branches from it: its run directory
  links that run's teacher, train[0] and eval[0] stages, and the arm spends the remaining
  steps evenly over its iterations 1..T. So arms differ only in what happens after
  iteration 0 (combined distillation continued on teacher data — mixing policy
  `teacher` — against SIKeD's mixing policies). Distillation arms (`method: distill`, e.g.
  single-strategy baselines) train once from the base model for all the steps.
* The pilot (`pilot.py`) evaluates the first seed's iteration 0 with each strategy forced,
  per family; the experiment continues only when its gate passes.
* Arms run to their last iteration (no early stopping): the fixed final iteration is the
  primary result, the best-on-validation iteration is reported beside it. Every arm is
  compared with the reference arm on the same test questions: paired bootstrap over seeds ×
  questions (95% interval, p-value), McNemar per seed, the minimum detectable difference.
* The untrained student is evaluated once (first seed's iteration 0 run).

Each (arm, seed) is an ordinary run executed by the local runner: an interrupted
experiment resumes where it stopped and finished runs are not redone. `experiment.json`,
`experiment.md` and plots are rewritten after every run.
"""

from __future__ import annotations

import copy
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from siked_runtime.graph import EVAL, SAMPLE, TEACHER, TRAIN, VALIDATION, StageKey
from siked_runtime.local_runner import run_local
from siked_runtime.spec import DistillationRun, parse_manifest
from siked_runtime.stages.common import log
from siked_runtime.storage import list_manifests, open_store


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Arm(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Short name; runs go to <dir>/<name>-s<seed>.")
    patch: dict[str, Any] = Field(default_factory=dict, description="Merged into the base spec (lists replace).")


class PilotSpec(_Model):
    questions: int = Field(150, ge=3, description="Pilot questions (synthetic: drawn from the train families).")
    seed: int = Field(9, ge=0, description="Generator seed of the pilot set; distinct from every dataset's seed.")
    min_gap: float = Field(0.15, ge=0.0, le=1.0, description="Accuracy gap the gate asks for, each way.")
    required: bool = Field(True, description="Stop the experiment when the gate refuses.")


class ExperimentSpec(_Model):
    base: str = Field(description="DistillationRun manifest every arm starts from, relative to this file.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, description="spec.seed of each run.")
    total_train_steps: int = Field(ge=1, description="Optimizer steps per run, summed over its training stages.")
    iteration0_steps: int | None = Field(
        None, ge=1, description="Steps of the shared iteration 0 (unset: the base's training.iteration0Steps, else "
        "total / (iterations.max + 1)).")
    reference: str = Field("combined", description="The arm every other arm is compared with.")
    pilot: PilotSpec = Field(default_factory=lambda: PilotSpec(), description="The strategy pilot and its gate.")
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
        if self.reference not in {a.name for a in self.arms}:
            raise ValueError(f".reference {self.reference!r} is not an arm; arms: {', '.join(a.name for a in self.arms)}")
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


# --- the runs ----------------------------------------------------------------------------------

# Every run goes to its last iteration: the fixed final iteration is the primary result.
_NO_EARLY_STOP = {"iterations": {"earlyStopping": {"patience": None}, "targetAccuracy": None}}
# What iteration 0 is made of; an arm that changes any of these cannot branch from it.
_ITERATION0_FIELDS = ("teacher", "student", "strategies", "datasets")
ITERATION0_PREFIXES = (StageKey(TEACHER).prefix, StageKey(TRAIN, 0).prefix, StageKey(EVAL, 0).prefix)
SAMPLE1_PREFIX = StageKey(SAMPLE, 1).prefix


def branches(run: DistillationRun) -> bool:
    """SIKeD-method arms branch from the shared iteration 0; distillation arms train on their own."""
    return run.spec.method == "siked"


def iteration0_steps(experiment: ExperimentSpec, base: dict) -> int:
    """The shared iteration 0's steps: the experiment's `iteration0Steps`, else the base spec's
    `training.iteration0Steps`, else an even share of the total over the base's iterations."""
    spec = parse_manifest(base, "the experiment's base").spec
    return (experiment.iteration0_steps or spec.training.iteration0_steps
            or max(experiment.total_train_steps // (spec.iterations.max + 1), 1))


def _steps(steps: int) -> dict:
    """A spec patch that gives every training stage of a run `steps` steps: the experiment counts
    the steps itself, so a base spec's own `iteration0Steps` does not apply."""
    return {"spec": {"training": {"maxSteps": steps, "iteration0Steps": None}}}


def shared_run(experiment: ExperimentSpec, base: dict, seed: int) -> DistillationRun:
    """Iteration 0 of `seed`: teacher data only. Only the first seed scores the untrained student
    (when the base spec asks for it): greedy decoding of the same model gives the same answers."""
    wanted = ((base.get("spec") or {}).get("evaluation") or {}).get("baseline", True)
    manifest = merge(base, {"metadata": {"name": f"iteration0-s{seed}"},
                            "spec": {"method": "siked", "seed": seed, "iterations": {"max": 0},
                                     "evaluation": {"baseline": bool(wanted) and seed == experiment.seeds[0]}}})
    manifest = merge(manifest, {"spec": _NO_EARLY_STOP})
    return parse_manifest(merge(manifest, _steps(iteration0_steps(experiment, base))), "iteration 0")


def arm_runs(experiment: ExperimentSpec, base: dict) -> list[tuple[Arm, int, DistillationRun]]:
    """Every (arm, seed) as a validated run, with its per-stage step budget set.

    A branching arm gets (total − iteration-0 steps) / T steps in each of its iterations 1..T;
    a distillation arm gets all the steps in its one training stage."""
    runs = []
    for arm in experiment.arms:
        for seed in experiment.seeds:
            manifest = merge(base, {"metadata": {"name": f"{arm.name}-s{seed}"},
                                    "spec": {**arm.patch, "seed": seed, "evaluation": {"baseline": False}}})
            manifest = merge(manifest, {"spec": _NO_EARLY_STOP})
            run = parse_manifest(manifest, f"arm {arm.name}")
            if branches(run):
                shared = shared_run(experiment, base, seed)
                changed = [f for f in _ITERATION0_FIELDS if getattr(run.spec, f) != getattr(shared.spec, f)]
                if changed:
                    raise ValueError(f"arm {arm.name} changes what iteration 0 is made of ({', '.join(changed)}), "
                                     "so it cannot branch from the shared iteration 0; make it a distill arm")
                if run.spec.iterations.max < 1:
                    raise ValueError(f"arm {arm.name} branches from iteration 0 but has no iteration after it")
                left = experiment.total_train_steps - shared.spec.training.max_steps
                steps = left // run.spec.iterations.max
            else:
                steps = experiment.total_train_steps // (1 if run.spec.method == "distill" else
                                                         run.spec.last_iteration + 1)
            if steps < 1:
                raise ValueError(f"arm {arm.name}: {experiment.total_train_steps} steps leave none per training stage")
            manifest = merge(manifest, _steps(steps))
            runs.append((arm, seed, parse_manifest(manifest, f"arm {arm.name}")))
    return runs


def link_iteration0(shared_dir: Path, run_dir: Path) -> None:
    """Give a branching arm the shared teacher, train[0] and eval[0] stages (hard links: no copies
    of the model; later stages never write into them)."""
    for prefix in ITERATION0_PREFIXES:
        link_stage(shared_dir, run_dir, prefix)


def sampling_donor(run: DistillationRun, earlier: list[tuple[DistillationRun, Path]]) -> Path | None:
    """The run directory whose sample[1] this branching arm would draw again, if any.

    Branching arms start iteration 1 from the same model; when two of them differ only in how
    they mix (`mixing`) or train after iteration 0 (`training`), their sample[1] stages draw the
    same samples (seeded draws), so the later arm reuses the earlier one's: the comparison between
    them is then paired on the very same self-samples, and each seed samples once. A
    `teacher`-policy arm samples nothing."""
    def samples_after_iteration0(r: DistillationRun) -> bool:
        return branches(r) and r.spec.mixing.policy != "teacher"

    if not samples_after_iteration0(run):
        return None
    for donor, donor_dir in earlier:
        if not samples_after_iteration0(donor):
            continue
        same = donor.spec.model_copy(update={"mixing": run.spec.mixing, "training": run.spec.training}) == run.spec
        if same and (donor_dir / SAMPLE1_PREFIX / "manifest.json").exists():
            return donor_dir
    return None


def link_stage(source_dir: Path, run_dir: Path, prefix: str) -> None:
    """Give a run another run's finished stage under `prefix` (hard links: no copies; stages
    never write into a finished stage). A stage the run already finished is kept."""
    source, target = source_dir / prefix, run_dir / prefix
    if (target / "manifest.json").exists():
        return
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


# --- what a finished run says ------------------------------------------------------------------


def _predictions(store, iteration: int) -> dict[str, dict[str, dict]]:
    """{set: {question id: {"correct", "strategy"}}} of eval[iteration]."""
    manifest = list_manifests(store).get(StageKey(EVAL, iteration).prefix) or {}
    out = {}
    for name in manifest.get("predictions", {}):
        rows = store.read_jsonl(f"{StageKey(EVAL, iteration).prefix}/predictions-{name}.jsonl.gz")
        out[name] = {r["id"]: {"correct": r["verdict"] == "correct", "strategy": r.get("strategy")} for r in rows}
    return out


def collect(run: DistillationRun, run_dir: Path, shared: bool) -> dict:
    """One finished run: per iteration its report row, predictions, steps and seconds."""
    store = open_store(str(run_dir))
    manifests = list_manifests(store)
    report = json_report(run_dir)
    iterations = []
    for it in report.get("iterations", []):
        t = it["iteration"]
        train = manifests.get(StageKey(TRAIN, t).prefix, {})
        sample = manifests.get(StageKey("sample", t).prefix, {})
        stage_seconds = sum((manifests.get(StageKey(stage, t).prefix) or {}).get("duration_seconds") or 0.0
                            for stage in ("sample", TRAIN, EVAL))
        iterations.append({
            **{k: it.get(k) for k in ("alpha", "teacher_rows", "self_rows", "eval", "strategy_shares",
                                       "train_strategy_shares", "sample_accuracy")},
            "iteration": t,
            "reproductions": train.get("reproductions"),
            "steps": (train.get("training") or {}).get("steps"),
            "samples": sample.get("samples"), "questions_solved": sample.get("questions_solved"),
            "seconds": stage_seconds,
            "shared": shared and t == 0,
            "predictions": _predictions(store, t),
        })
    return {
        "iterations": iterations,
        "best_iteration": report.get("best_iteration"),
        "steps": sum(i["steps"] or 0 for i in iterations),
        "seconds": sum(m.get("duration_seconds") or 0.0 for m in manifests.values()),
        "own_seconds": own_seconds(manifests, shared),
    }


def own_seconds(manifests: dict[str, dict], shared: bool = True) -> float:
    """A run's stage seconds, less its iteration 0's when that is shared with the seed's other arms."""
    return sum(m.get("duration_seconds") or 0.0 for k, m in manifests.items()
               if not (shared and k in ITERATION0_PREFIXES))


def untrained(out: Path) -> dict:
    """The untrained student's accuracy per set (scored once, in the first seed's iteration-0 run)."""
    for run_dir in sorted(out.glob("iteration0-s*")):
        baseline = json_report(run_dir).get("baseline")
        if baseline:
            return baseline
    return {}


def json_report(run_dir: Path) -> dict:
    import json

    path = Path(run_dir) / "report.json"
    return json.loads(path.read_text()) if path.exists() else {}


# --- the pilot ---------------------------------------------------------------------------------


def pilot_records(experiment: ExperimentSpec, run: DistillationRun) -> list[dict]:
    """The pilot set: synthetic problems of the train families under the pilot's own seed, or the
    validation split for other datasets."""
    train = run.spec.datasets.train
    if train.source == "synthetic":
        from siked_runtime.synthetic import generate

        return generate(experiment.pilot.questions, experiment.pilot.seed, families=train.synthetic.families)
    from siked_runtime.stages.data import eval_sets

    return eval_sets(run.spec)[VALIDATION][: experiment.pilot.questions]


def run_pilot(experiment: ExperimentSpec, run: DistillationRun, run_dir: Path, out: Path) -> dict:
    """The pilot on the first seed's iteration 0 (kept in pilot.json: a rerun reads it back)."""
    import json

    from siked_runtime import pilot

    saved = out / "pilot.json"
    if saved.exists():
        return json.loads(saved.read_text())
    from siked_runtime.stages.common import local_model

    start = time.perf_counter()
    records = pilot_records(experiment, run)
    model = local_model(open_store(str(run_dir)), StageKey(TRAIN, 0).prefix)
    rows = pilot.forced_rows(run.spec, model, records, list(run.spec.strategies))
    table = pilot.tabulate(rows)
    result = pilot.gate(table, experiment.pilot.min_gap)
    about = (f"Iteration 0 of seed {run.spec.seed} ({run.spec.training.max_steps} steps on the teacher's data), "
             f"greedy, on {len(records)} pilot questions (seed {experiment.pilot.seed}) with each strategy's tag "
             "prefilled; accuracy (correct/n).")
    doc = pilot.write_pilot(out, table, result, list(run.spec.strategies), about,
                            {"questions": len(records), "seed": experiment.pilot.seed,
                             "min_gap": experiment.pilot.min_gap, "model": str(model),
                             "seconds": round(time.perf_counter() - start, 1)})
    log(f"pilot: gate {'passed' if result.passed else 'refused'}: {result.reason}")
    return doc


# --- comparison --------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def per_family(predictions: dict[str, dict], families: dict[str, str], best: dict[str, str]) -> dict[str, dict]:
    """{family: {"accuracy", "n", "strategy_shares", "routing_share"}} over one set's predictions."""
    from siked_runtime.scoring import strategy_shares

    out: dict[str, dict] = {}
    for family in sorted({families.get(q, "all") for q in predictions}):
        rows = [p for q, p in predictions.items() if families.get(q, "all") == family]
        shares = strategy_shares(rows)
        out[family] = {"accuracy": sum(r["correct"] for r in rows) / len(rows), "n": len(rows),
                       "strategy_shares": shares,
                       "routing_share": shares.get(best[family]) if family in best else None}
    return out


def summarize(name: str, experiment: ExperimentSpec, results: list[dict], families: dict[str, dict[str, str]],
              pilot_doc: dict | None, untrained_accuracy: dict | None = None) -> dict:
    """experiment.json: design, pilot, per arm the fixed final and best-on-validation accuracy, per
    iteration and family the accuracy, strategy use and routing share, α, self rows, steps and
    seconds; and every arm against the reference with paired statistics."""
    from siked_runtime.stats import compare

    best = (pilot_doc or {}).get("gate", {}).get("best", {})
    test_sets = sorted({s for r in results for it in r["iterations"] for s in it["predictions"] if s != VALIDATION})
    arms = {}
    for arm in experiment.arms:
        mine = [r for r in results if r["arm"] == arm.name]
        finals = [r["iterations"][-1] for r in mine if r["iterations"]]
        sets = sorted({s for it in finals for s in it["eval"]}, key=lambda s: (s != VALIDATION, s))
        chosen = [next(it for it in r["iterations"] if it["iteration"] == r["best_iteration"])
                  for r in mine if r["best_iteration"] is not None]
        arms[arm.name] = {
            "patch": arm.patch,
            "runs": len(mine),
            "branches": bool(mine) and mine[0]["branches"],
            "steps_per_stage": mine[0]["steps_per_stage"] if mine else None,
            "steps": _spread([r["steps"] for r in mine]),
            "final": {s: _spread([it["eval"][s] for it in finals if s in it["eval"]]) for s in sets},
            "best_on_validation": {s: _spread([it["eval"][s] for it in chosen if s in it["eval"]]) for s in sets},
            "seconds": _spread([r["seconds"] for r in mine]),
            "own_seconds": _spread([r["own_seconds"] for r in mine]),
            "sample_from": sorted({r["sample_from"] for r in mine if r.get("sample_from")}),
            "iterations": _iterations(mine, test_sets, families, best),
        }
    reference = [r for r in results if r["arm"] == experiment.reference]
    comparisons: dict[str, dict] = {}
    for arm in experiment.arms:
        if arm.name == experiment.reference:
            continue
        mine = {r["seed"]: r for r in results if r["arm"] == arm.name}
        pairs = [(mine[r["seed"]], r) for r in reference if r["seed"] in mine]
        for test in test_sets:
            a, b, by_family = _paired(pairs, test, families.get(test, {}))
            if a is None:
                continue
            result = compare(a, b)
            result["seeds"] = [x["seed"] for x, _ in pairs]
            result["per_family"] = {f: {"diff": float(np.mean(a[:, idx]) - np.mean(b[:, idx])), "n": len(idx)}
                                    for f, idx in by_family.items()}
            comparisons.setdefault(arm.name, {})[test] = result
    baseline = untrained_accuracy or {}
    return {"name": name, "seeds": experiment.seeds, "total_train_steps": experiment.total_train_steps,
            "reference": experiment.reference, "test_sets": test_sets, "pilot": pilot_doc, "untrained": baseline,
            "arms": arms, "comparisons": comparisons,
            "runs": [{**{k: v for k, v in r.items() if k != "iterations"}, "first": _run_cell(r, 0),
                      "final": _run_cell(r, -1)} for r in results]}


def _run_cell(run: dict, position: int) -> dict | None:
    """One run's accuracy and strategy shares per set at an iteration (0: the first, -1: the last)."""
    from siked_runtime.scoring import strategy_shares

    if not run["iterations"]:
        return None
    it = run["iterations"][position]
    return {"iteration": it["iteration"], "eval": it["eval"],
            "strategy_shares": {name: strategy_shares(p.values()) for name, p in it["predictions"].items()}}


def _paired(pairs: list[tuple[dict, dict]], test: str, families: dict[str, str]):
    """(a, b) correctness arrays (seeds, questions) at each run's final iteration, and the
    question columns of each family."""
    rows_a, rows_b, questions = [], [], None
    for a, b in pairs:
        pa, pb = a["iterations"][-1]["predictions"].get(test), b["iterations"][-1]["predictions"].get(test)
        if not pa or not pb:
            continue
        questions = questions or sorted(set(pa) & set(pb))
        rows_a.append([pa[q]["correct"] for q in questions])
        rows_b.append([pb[q]["correct"] for q in questions])
    if not rows_a:
        return None, None, {}
    by_family: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_family.setdefault(families.get(q, "all"), []).append(i)
    return np.array(rows_a, dtype=float), np.array(rows_b, dtype=float), by_family


def _iterations(runs: list[dict], test_sets: list[str], families: dict[str, dict[str, str]],
                best: dict[str, str]) -> list[dict]:
    """Per iteration, means over seeds: accuracy per set, per family (test sets), strategy shares,
    routing share, α, rows, steps, seconds."""
    by_t: dict[int, list[dict]] = {}
    for r in runs:
        for it in r["iterations"]:
            by_t.setdefault(it["iteration"], []).append(it)
    out = []
    for t in sorted(by_t):
        its = by_t[t]
        fam = [per_family({q: p for s in test_sets for q, p in it["predictions"].get(s, {}).items()},
                          {q: f for s in test_sets for q, f in families.get(s, {}).items()}, best) for it in its]
        names = sorted({f for x in fam for f in x})
        families_out = {}
        for f in names:
            cells = [x[f] for x in fam if f in x]
            families_out[f] = {
                "accuracy": _mean([c["accuracy"] for c in cells]), "n": cells[0]["n"],
                "strategy_shares": {s: _mean([c["strategy_shares"][s] for c in cells]) for s in cells[0]["strategy_shares"]},
                "routing_share": _mean([c["routing_share"] for c in cells]),
            }
        routed = [sum(x[f]["routing_share"] * x[f]["n"] for f in x if x[f]["routing_share"] is not None)
                  / max(sum(x[f]["n"] for f in x if x[f]["routing_share"] is not None), 1) for x in fam]
        sets = sorted({s for it in its for s in it["eval"]})

        def mean_of(field: str, its=its) -> dict[str, float]:
            keys = sorted({k for it in its for k in (it.get(field) or {})})
            return {k: statistics.fmean([(it.get(field) or {}).get(k, 0.0) for it in its]) for k in keys}

        out.append({
            "iteration": t, "runs": len(its), "shared": all(it["shared"] for it in its),
            "eval": {s: _mean([it["eval"].get(s) for it in its]) for s in sets},
            "families": families_out,
            "routing_share": _mean(routed) if best else None,
            "strategy_shares": mean_of("strategy_shares"),
            "train_strategy_shares": mean_of("train_strategy_shares"),
            "alpha": _mean([it["alpha"] for it in its]),
            **{k: _mean([it[k] for it in its]) for k in ("teacher_rows", "self_rows", "reproductions", "steps",
                                                          "samples", "questions_solved", "sample_accuracy",
                                                          "seconds")},
        })
    return out


def run_experiment(path: str | Path, out_dir: str | Path, budget: str | None = None, pilot_only: bool = False) -> dict:
    """Run every (arm, seed) not finished yet, then write the comparison report into `out_dir`.

    With `pilot_only`, train the first seed's iteration 0, run the pilot and stop. Returns the
    summary; `summary["stopped"]` says why an experiment stopped early."""
    from siked_runtime.experiment_report import write_experiment_report
    from siked_runtime.stages.data import eval_sets

    name, experiment, base = load_experiment(path, budget)
    out = Path(out_dir)
    runs = arm_runs(experiment, base)
    families = {s: {r["id"]: (r.get("meta") or {}).get("family", "all") for r in records}
                for s, records in eval_sets(shared_run(experiment, base, experiment.seeds[0]).spec).items()}
    results: list[dict] = []
    pilot_doc = None
    total = len(runs) + len(experiment.seeds)
    done = 0
    for seed in experiment.seeds:
        shared = shared_run(experiment, base, seed)
        shared_dir = out / shared.metadata.name
        done += 1
        log(f"experiment {name}: run {done}/{total}: iteration 0 of seed {seed} "
            f"({shared.spec.training.max_steps} steps) in {shared_dir}")
        run_local(shared, shared_dir)
        if pilot_doc is None:
            # `required` is this experiment's setting, also when the pilot was read back from an earlier run.
            pilot_doc = {**run_pilot(experiment, shared, shared_dir, out), "required": experiment.pilot.required}
            if pilot_only or (experiment.pilot.required and not pilot_doc["gate"]["passed"]):
                summary = summarize(name, experiment, results, families, pilot_doc, untrained(out))
                summary["stopped"] = ("pilot only" if pilot_only else f"the pilot's gate refused: "
                                      f"{pilot_doc['gate']['reason']}")
                write_experiment_report(summary, out)
                return summary
        earlier: list[tuple[DistillationRun, Path]] = []
        for arm, arm_seed, run in runs:
            if arm_seed != seed:
                continue
            done += 1
            run_dir = out / run.metadata.name
            shares = branches(run)
            log(f"experiment {name}: run {done}/{total}: arm {arm.name}, seed {seed} "
                f"({run.spec.training.max_steps} steps per training stage"
                f"{', from the shared iteration 0' if shares else ''}) in {run_dir}")
            if shares:
                link_iteration0(shared_dir, run_dir)
            donor = sampling_donor(run, earlier)
            if donor is not None:
                log(f"experiment {name}: {run.metadata.name} reuses {donor.name}'s sample[1] (same model, same draws)")
                link_stage(donor, run_dir, SAMPLE1_PREFIX)
            run_local(run, run_dir)
            earlier.append((run, run_dir))
            results.append({"arm": arm.name, "seed": seed, "dir": str(run_dir), "branches": shares,
                            "steps_per_stage": run.spec.training.max_steps,
                            "sample_from": donor.name if donor is not None else None,
                            **collect(run, run_dir, shares)})
            write_experiment_report(summarize(name, experiment, results, families, pilot_doc, untrained(out)), out)
    summary = summarize(name, experiment, results, families, pilot_doc, untrained(out))
    write_experiment_report(summary, out)
    return summary
