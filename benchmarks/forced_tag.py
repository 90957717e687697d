"""Is a student's loss its strategy choice or its solutions? Test accuracy with the tag forced.

    python -m benchmarks.forced_tag runs/experiment/siked-all-s0 --iteration 1 --strategies pot

For a run's iteration-t student, this answers the first test questions of each family
greedily with each given strategy's tag prefilled (as the pilot does for iteration 0) and
prints, per family, the accuracy with each forced tag beside the accuracy of the student's
own choice on the same questions (from eval[t]'s predictions). When a forced tag recovers
what another arm scores, the arm lost on routing, not on what it learnt to write. Below
each run, the forced text answers' false arithmetic and comparisons (`siked_runtime/claims.py`).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from siked_runtime.graph import EVAL, TRAIN, StageKey
from siked_runtime.local_runner import saved_run
from siked_runtime.pilot import claims_markdown, family_of, forced_rows, tabulate
from siked_runtime.stages.common import local_model
from siked_runtime.stages.data import eval_sets
from siked_runtime.storage import open_store


def first_per_family(records: list[dict], per_family: int) -> list[dict]:
    """The first `per_family` records of each family, in their order."""
    taken: dict[str, int] = defaultdict(int)
    out = []
    for r in records:
        if taken[family_of(r)] < per_family:
            taken[family_of(r)] += 1
            out.append(r)
    return out


def own_choice(predictions: dict[str, dict], records: list[dict]) -> dict[str, dict]:
    """{family: {"correct", "n", "accuracy"}} of the student's own greedy answers."""
    rows = [{"family": family_of(r), "forced": "own", "verdict": predictions[r["id"]]["verdict"],
             "completion": predictions[r["id"]].get("completion")} for r in records]
    return {family: cells["own"] for family, cells in tabulate(rows).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.forced_tag", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--strategies", nargs="+", default=["cot", "l2m", "pot"])
    parser.add_argument("--per-family", type=int, default=30)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    results = {}
    print("| run | family | n | own choice | " + " | ".join(f"[{s}] forced" for s in args.strategies) + " |")
    print("|---|---|---|---|" + "---|" * len(args.strategies))
    for run in args.runs:
        store = open_store(run)
        spec = saved_run(store).spec
        name = spec.datasets.eval[0].name
        records = first_per_family(eval_sets(spec)[name], args.per_family)
        predictions = {r["id"]: r for r in store.read_jsonl(
            f"{StageKey(EVAL, args.iteration).prefix}/predictions-{name}.jsonl.gz")}
        model = local_model(store, StageKey(TRAIN, args.iteration).prefix)
        forced = tabulate(forced_rows(spec, model, records, args.strategies))
        own = own_choice(predictions, records)
        results[Path(run).name] = {"iteration": args.iteration, "own": own, "forced": forced}
        for family in sorted(own):
            cells = " | ".join(f"{forced[family][s]['accuracy']:.3f} ({forced[family][s]['correct']}/"
                               f"{forced[family][s]['n']})" for s in args.strategies)
            print(f"| {Path(run).name} it {args.iteration} | {family} | {own[family]['n']} | "
                  f"{own[family]['accuracy']:.3f} | {cells} |", flush=True)
        print("\n".join(["", *claims_markdown(forced, args.strategies)]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
