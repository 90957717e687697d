"""What a training stage actually trained on: the strategy mix of the rows its steps saw.

    python -m benchmarks.batch_mix runs/experiment/siked-all-s0 runs/experiment/combined-s0 --iteration 1

A stage's `data.jsonl.gz` is what mixing wrote; with `maxSteps` below an epoch the trainer
sees a subset of it, in length-grouped batches (`train_sampling_strategy="group_by_length"`
without packing), so its strategy mix can differ from the file's. This rebuilds the stage's
own trainer (`training.build_trainer`: same base model, rows, seed and configuration), runs its
loop with every step's forward and backward replaced by a recorder, and reads which rows each
step drew and at what learning rate. The first epoch's order is drawn before any step; later
epochs' orders are the same only when the steps draw no random numbers (no dropout, as in the
shipped examples). The replay is checked against the stage: its batches' tokens must add up
to the manifest's `training.tokens`, or it refuses.

Per run it prints the strategy shares in the data file, in the rows seen, and weighted by
each step's learning rate, the self rows seen, and the strategy the trained student chose
on the test set (greedy, from the stage's evaluation).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from siked_runtime.graph import EVAL, TRAIN, StageKey
from siked_runtime.local_runner import saved_run
from siked_runtime.pilot import family_of
from siked_runtime.stages.data import eval_sets, train_questions
from siked_runtime.storage import open_store
from siked_runtime.strategies import STRATEGIES


def replay_batches(base_model: str, rows: list[dict], student, training, seed: int) -> list[dict]:
    """[{rows: [index into rows], tokens, learning_rate}] per optimizer step, without training."""
    import torch

    from transformers import PrinterCallback

    from siked_runtime.training import build_trainer

    steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="siked-batch-mix-") as scratch:
        trainer = build_trainer(base_model, rows, student, training, seed, scratch)
        dataset = trainer.train_dataset
        # The tokenized dataset keeps the rows' order but drops any example left with nothing to
        # learn, so walk both in step to map each example back to its row.
        eos = trainer.processing_class.eos_token or ""
        row_of, j = [], 0
        for example in dataset:
            while example["completion"] not in (rows[j]["completion"], rows[j]["completion"] + eos):
                j += 1
            row_of.append(j)
            j += 1
        index = {tuple(example["input_ids"]): i for i, example in enumerate(dataset)}

        def record(model, inputs, num_items_in_batch=None):  # noqa: ANN001 - Trainer.training_step's signature
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            seen = [row_of[index[tuple(ids[r][mask[r].bool()].tolist())]] for r in range(ids.shape[0])]
            steps.append({"rows": seen, "tokens": int(mask.sum()),
                          "learning_rate": float(trainer.lr_scheduler.get_last_lr()[0])})
            return torch.zeros((), device=ids.device)

        trainer.training_step = record
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return steps


def shares(counts: Counter) -> dict[str, float]:
    total = sum(counts.values()) or 1
    return {s: round(counts.get(s, 0) / total, 3) for s in STRATEGIES}


def summarise(rows: list[dict], steps: list[dict], family: dict[str, str] | None = None) -> dict:
    """Strategy shares of the file, of the rows seen (also per family of the row's question), and
    weighted by learning rate; self rows seen."""
    seen, weighted, sources = Counter(), Counter(), Counter()
    per_family: dict[str, Counter] = defaultdict(Counter)
    for step in steps:
        for i in step["rows"]:
            seen[rows[i]["strategy"]] += 1
            weighted[rows[i]["strategy"]] += step["learning_rate"]
            sources[rows[i].get("source", "teacher")] += 1
            per_family[(family or {}).get(rows[i]["id"], "all")][rows[i]["strategy"]] += 1
    return {"file": shares(Counter(r["strategy"] for r in rows)), "file_rows": len(rows),
            "seen": shares(seen), "seen_rows": sum(seen.values()), "distinct_seen": len({i for s in steps
                                                                                       for i in s["rows"]}),
            "lr_weighted": shares(weighted), "self_seen": sources.get("self", 0),
            "tokens": sum(s["tokens"] for s in steps),
            "families": {f: {"seen_rows": sum(c.values()), "seen": shares(c)} for f, c in sorted(per_family.items())}}


def chosen(predictions: list[dict], family: dict[str, str]) -> dict[str, dict]:
    """The student's strategy shares on a test set, overall ("all") and per family."""
    groups: dict[str, Counter] = defaultdict(Counter)
    for p in predictions:
        groups["all"][p.get("strategy")] += 1
        if family.get(p["id"], "all") != "all":
            groups[family[p["id"]]][p.get("strategy")] += 1
    return {f: {"n": sum(c.values()), **shares(c)} for f, c in groups.items()}


def measure(run_dir: Path, iteration: int) -> dict:
    store = open_store(str(run_dir))
    run = saved_run(store)
    prefix = StageKey(TRAIN, iteration).prefix
    manifest = store.get_json(f"{prefix}/manifest.json")
    rows = store.read_jsonl(f"{prefix}/data.jsonl.gz")
    steps = replay_batches(manifest["base_model"], rows, run.spec.student, run.spec.training, run.spec.seed + iteration)
    out = summarise(rows, steps, {r["id"]: family_of(r) for r in train_questions(run.spec)})
    expected = manifest["training"]["tokens"]
    if out["tokens"] != expected:
        raise RuntimeError(f"{run_dir}: the replay drew {out['tokens']} tokens, the stage trained on {expected}: "
                           "not the same batches (another library version or configuration?)")
    test = run.spec.datasets.eval[0].name
    records = eval_sets(run.spec)[test]
    predictions = store.read_jsonl(f"{StageKey(EVAL, iteration).prefix}/predictions-{test}.jsonl.gz")
    return {"run": run_dir.name, "iteration": iteration, **out, "steps": len(steps),
            "chosen": chosen(predictions, {r["id"]: family_of(r) for r in records})}


def render(results: list[dict]) -> str:
    def mix(d: dict) -> str:
        return " / ".join(f"{d[s]:.2f}" for s in STRATEGIES)

    lines = ["| run | rows in file | file cot / l2m / pot | rows seen (distinct texts) | seen cot / l2m / pot | "
             "LR-weighted | self rows seen | test choice cot / l2m / pot |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['file_rows']} | {mix(r['file'])} | {r['seen_rows']} ({r['distinct_seen']}) "
                     f"| {mix(r['seen'])} | {mix(r['lr_weighted'])} | {r['self_seen']} | {mix(r['chosen']['all'])} |")
    lines += ["", "Per family: the rows seen (by the family of their question) and the student's choice on the "
              "test questions of that family.", "",
              "| run | family | rows seen | seen cot / l2m / pot | test questions | test choice cot / l2m / pot |",
              "|---|---|---|---|---|---|"]
    for r in results:
        for f, fam in r["families"].items():
            choice = r["chosen"].get(f)
            lines.append(f"| {r['run']} | {f} | {fam['seen_rows']} | {mix(fam['seen'])} | "
                         f"{choice['n'] if choice else 0} | {mix(choice) if choice else '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    results = [measure(run_dir, args.iteration) for run_dir in args.runs]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(render(results))


if __name__ == "__main__":
    main()
