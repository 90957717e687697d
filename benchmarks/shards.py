"""Sharded sampling: the sample stage's wall time in 2 parts side by side vs in 1 part, and what
seeding samples per question (which makes the parts draw what one part draws, in float32) costs.

    python -c "from benchmarks.shards import run; print(run(quick=True))"

Both sides run sample[1] of the quickstart's spec (SmolLM2-135M as iteration 0's model, a
fixed budget of k samples per question) as `siked stage` processes, as `siked run` does:

* ours: `sampling.shards: 2`, the parts side by side (`local_runner.run_parts`), merge included;
* baseline: the same stage unsharded, one process.

Wall time counts everything a user waits for: process start, model load, sampling,
verification, writing and (ours) merging. On a machine with few cores the parts compete for
them; what a second part can win is the time a single process leaves a core idle (loading,
verifying, writing).

The second measurement is the price of determinism, in generated tokens/s: `StudentGenerator`
seeds each question's samples (a generator per sequence, `seeds=`) against one unseeded call
for the same questions; both fill batches of `sampling.batchSize` sequences.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import Measurement, ratio_met
from benchmarks.student import quickstart_spec
from siked_runtime.graph import StageKey
from siked_runtime.local_runner import run_parts, stored_run
from siked_runtime.models import resolve_model
from siked_runtime.spec import DistillationSpec, load_manifest
from siked_runtime.storage import open_store, publish, read_manifest

GOAL = "<=0.8"
SEEDING_GOAL = ">=0.8"
SAMPLE = StageKey("sample", 1)


def _spec(quick: bool, shards: int) -> DistillationSpec:
    spec = quickstart_spec()
    n = 4 if quick else 32
    train = spec.datasets.train.model_copy(update={"limit": n + int(spec.datasets.validation_from_train)})
    datasets = spec.datasets.model_copy(update={"train": train, "eval": []})
    return spec.model_copy(update={
        "datasets": datasets,
        "iterations": spec.iterations.model_copy(update={"adaptive_budget": False}),
        "sampling": spec.sampling.model_copy(update={"shards": shards, "max_new_tokens": 48 if quick else 128}),
    })


def _prepared(root: Path, spec: DistillationSpec):
    """A stored run whose iteration 0 is done, with the untrained student as its model."""
    run = load_manifest(Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml")
    store = open_store(str(root))
    stored_run(store, run.model_copy(update={"spec": spec}))
    for prefix, manifest in (("teacher", {"rows": 1}), ("iter-000/train", {"rows": 1}),
                             ("iter-000/eval", {"accuracy": {"validation": 0.0}})):
        publish(store, prefix, manifest)
    (root / "iter-000" / "train").mkdir(parents=True, exist_ok=True)
    os.symlink(resolve_model(spec.student.model), root / "iter-000" / "train" / "model")
    return store


def _one_part(store) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "siked_runtime.cli", "stage", "sample", "--run-uri", store.uri,
                    "--iteration", "1"], check=True, capture_output=True)
    return time.perf_counter() - start


def _two_parts(store, spec: DistillationSpec) -> float:
    start = time.perf_counter()
    run_parts(spec, store, SAMPLE)
    return time.perf_counter() - start


def seeding_cost(spec: DistillationSpec) -> Measurement:
    """Generated tokens/s: per-question seeds vs one unseeded call, same questions and batches."""
    from siked_runtime.stages.data import train_questions
    from siked_runtime.stages.generation import StudentGenerator

    questions = [r["question"] for r in train_questions(spec)]
    it, sampling = spec.iterations, spec.sampling
    with StudentGenerator(spec, resolve_model(spec.student.model), sampling.batch_size) as gen:
        start = time.perf_counter()
        gen.generate(questions, n=it.samples_per_question, temperature=it.temperature,
                     max_new_tokens=sampling.max_new_tokens, what="seeded per question")
        ours = gen.tokens / (time.perf_counter() - start)
        gen.sampler.on_batch = None  # the generator's progress line is closed
        before, start = gen.sampler.stats["new_tokens"], time.perf_counter()
        gen.sampler.generate([gen._format(q) for q in questions], n=it.samples_per_question,
                             temperature=it.temperature, max_new_tokens=sampling.max_new_tokens,
                             top_p=sampling.top_p, seed=0)
        baseline = (gen.sampler.stats["new_tokens"] - before) / (time.perf_counter() - start)
    context = {"questions": len(questions), "k": it.samples_per_question, "batch_size": sampling.batch_size,
               "load_average_1m": round(os.getloadavg()[0], 2)}
    m = Measurement("P7-seeds", "sampling tokens/s, seeded per question vs unseeded",
                    ours, baseline, "tokens/s", SEEDING_GOAL, False, context)
    m.met = ratio_met(m.ratio, SEEDING_GOAL)
    return m


def run(quick: bool) -> list[Measurement]:
    with tempfile.TemporaryDirectory(prefix="siked-bench-shards-") as scratch:
        one, two = _spec(quick, 1), _spec(quick, 2)
        resolve_model(one.student.model)  # the dequantised weights are cached before either side is timed
        baseline = _one_part(_prepared(Path(scratch, "one"), one))
        sharded_store = _prepared(Path(scratch, "two"), two)
        ours = _two_parts(sharded_store, two)
        merged = read_manifest(sharded_store, SAMPLE.prefix)
        single = read_manifest(open_store(str(Path(scratch, "one"))), SAMPLE.prefix)
    context = {"model": "SmolLM2-135M-Instruct (untrained)", "questions": merged["questions"],
               "k": merged["k"], "max_new_tokens": two.sampling.max_new_tokens, "cpus": os.cpu_count(),
               "load_average_1m": round(os.getloadavg()[0], 2),
               "samples": {"ours": merged["samples"], "baseline": single["samples"]},
               "same_rows": merged["samples"] == single["samples"] and merged["rows"] == single["rows"]}
    m = Measurement("P7", "sample stage wall time, 2 parts side by side vs 1 part", ours, baseline, "s", GOAL,
                    False, context)
    m.met = ratio_met(m.ratio, GOAL)
    return [m, seeding_cost(one)]
