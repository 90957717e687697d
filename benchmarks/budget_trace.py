"""What a lower `giveUpAfter` would have cost and saved, read from a sample stage's own trace.

    python -m benchmarks.budget_trace runs/experiment/siked-all-s0 --iteration 1

A sample stage with `adaptiveBudget` writes every draw to `iter-NNN/sample/all.jsonl.gz`, in
order: a question's draws stop at its first correct sample (m = 1) or at `giveUpAfter`. Any
give-up rule that looks only at a question's earlier draws is therefore replayed exactly from
that trace: a question is lost when its first correct draw comes after the rule stops it.
This prints, for each `giveUpAfter` from 1 to the trace's own:

* questions solved and samples drawn, and the generated tokens (the completions re-tokenized
  with the run's student tokenizer), with tokens per correct sample;
* the hazard: of the questions still unsolved after j draws, the share solved at draw j + 1,
  which is where a further sample is worth its tokens;
* whether a question's first failures predict that it stays unsolved (the kind of failure,
  and two wrong draws that agree on an answer), the signals an earlier give-up would need.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from siked_runtime.graph import SAMPLE, TRAIN, StageKey
from siked_runtime.stages.common import local_model
from siked_runtime.storage import open_store


def traces(rows: list[dict]) -> dict[str, list[dict]]:
    """{question: its draws in order}, up to and including the first correct one."""
    out: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        out[row["id"]].append(row)
    for q, draws in out.items():
        draws.sort(key=lambda r: int(r.get("round", 0)))
        hit = next((i for i, r in enumerate(draws) if r["verdict"] == "correct"), None)
        out[q] = draws if hit is None else draws[: hit + 1]
    return dict(out)


def replay(by_question: dict[str, list[dict]], give_up: int, tokens) -> dict:
    """The trace cut at `give_up` draws per unsolved question: what that setting would have done."""
    solved = samples = spent = 0
    for draws in by_question.values():
        taken = draws[:give_up]
        samples += len(taken)
        spent += sum(tokens(r) for r in taken)
        solved += any(r["verdict"] == "correct" for r in taken)
    return {"give_up_after": give_up, "questions_solved": solved, "samples": samples, "tokens": spent,
            "tokens_per_correct": spent / solved if solved else None}


def hazard(by_question: dict[str, list[dict]], depth: int) -> list[dict]:
    """Per draw j (1-based): questions still unsolved before it that drew it, and how many it solved."""
    out = []
    for j in range(depth):
        reached = [d for d in by_question.values() if len(d) > j]
        hits = sum(d[j]["verdict"] == "correct" for d in reached)
        out.append({"draw": j + 1, "open": len(reached), "solved": hits,
                    "rate": hits / len(reached) if reached else None})
    return out


def first_failure_signals(by_question: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """{signal: {"solved later": n, "never solved": n}} over questions whose first draw failed."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"solved later": 0, "never solved": 0})
    for draws in by_question.values():
        if draws[0]["verdict"] == "correct":
            continue
        fate = "solved later" if draws[-1]["verdict"] == "correct" else "never solved"
        out[f"first draw {draws[0]['verdict']}"][fate] += 1
        if len(draws) >= 2 and draws[1]["verdict"] != "correct":
            same = draws[0].get("predicted") is not None and draws[0].get("predicted") == draws[1].get("predicted")
            out["first two wrong, same answer" if same else "first two wrong, different answers"][fate] += 1
    return dict(out)


def render(run: str, iteration: int, manifest: dict, rows: list[dict], hz: list[dict],
           signals: dict[str, dict[str, int]]) -> str:
    full = rows[-1]
    lines = [f"# Sample trace of {run}, iteration {iteration}", "",
             f"k = {manifest.get('k')}, m = {manifest.get('m')}, giveUpAfter = {manifest.get('give_up_after')}, "
             f"{manifest.get('questions')} questions, temperature {manifest.get('temperature')}.", "",
             "| giveUpAfter | solved | samples | tokens | tokens/correct | vs the trace's own |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        per = r["tokens_per_correct"]
        ratio = per / full["tokens_per_correct"] if per and full["tokens_per_correct"] else None
        lines.append(f"| {r['give_up_after']} | {r['questions_solved']} | {r['samples']} | {r['tokens']} | "
                     f"{per:.1f} | {ratio:.3f}× |" if per else f"| {r['give_up_after']} | 0 | {r['samples']} | "
                     f"{r['tokens']} | – | – |")
    lines += ["", "| draw | questions still open | solved by it | rate |", "|---|---|---|---|"]
    lines += [f"| {h['draw']} | {h['open']} | {h['solved']} | "
              f"{'–' if h['rate'] is None else format(h['rate'], '.2f')} |" for h in hz]
    lines += ["", "| after a failed first draw | solved later | never solved |", "|---|---|---|"]
    lines += [f"| {name} | {v['solved later']} | {v['never solved']} |" for name, v in sorted(signals.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budget_trace", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory or store URL")
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    store = open_store(args.run)
    prefix = StageKey(SAMPLE, args.iteration).prefix
    manifest = store.get_json(f"{prefix}/manifest.json")
    tokenizer = AutoTokenizer.from_pretrained(local_model(store, StageKey(TRAIN, args.iteration - 1).prefix))
    by_question = traces(store.read_jsonl(f"{prefix}/all.jsonl.gz"))
    depth = max(len(d) for d in by_question.values())

    def tokens(row: dict) -> int:
        return len(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])

    rows = [replay(by_question, g, tokens) for g in range(1, depth + 1)]
    hz, signals = hazard(by_question, depth), first_failure_signals(by_question)
    print(render(args.run, args.iteration, manifest, rows, hz, signals))
    if args.out:
        args.out.write_text(json.dumps({"run": args.run, "iteration": args.iteration, "replay": rows,
                                        "hazard": hz, "signals": signals}, indent=1) + "\n")


if __name__ == "__main__":
    main()
