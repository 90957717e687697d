"""How firmly a student chooses its strategy: the probability of each strategy tag, per family.

    python -m benchmarks.tag_margin runs/experiment/siked-all-s0 --iterations 0 1 --per-family 30

A student picks its strategy with the first token after `[` (`cot`, `l` of `l2m`, `pot`).
For each test question this reads that token's distribution once (a single forward pass
over the prompt and `[`), renormalised over the three tags, for each iteration's model.
Per family it prints the mean probability of each tag, the share of questions whose greedy
tag is each strategy, and the share whose two likeliest tags are within 0.2 of each other:
a student on that knife-edge flips its whole routing with a few batches of training, so
its strategy use says little about what it learnt.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from benchmarks.forced_tag import first_per_family
from siked_runtime.graph import TRAIN, StageKey
from siked_runtime.local_runner import saved_run
from siked_runtime.models import chat_prompt, load_student
from siked_runtime.pilot import family_of
from siked_runtime.stages.common import local_model
from siked_runtime.stages.data import eval_sets
from siked_runtime.storage import open_store
from siked_runtime.strategies import STRATEGIES, build_prompt

KNIFE_EDGE = 0.2


def tag_probabilities(model, tokenizer, questions: list[str], batch_size: int = 16) -> list[dict[str, float]]:
    """[{strategy: P(tag | prompt)}] with the three tags' first distinct tokens renormalised."""
    import torch

    first = {s: tokenizer(f"[{s}]", add_special_tokens=False)["input_ids"][1] for s in STRATEGIES}
    if len(set(first.values())) != len(STRATEGIES):
        raise ValueError(f"the tags' second tokens are not distinct for this tokenizer: {first}")
    out = []
    for i in range(0, len(questions), batch_size):
        prompts = [chat_prompt(tokenizer, build_prompt(q)) + "[" for q in questions[i:i + batch_size]]
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**batch, logits_to_keep=1).logits[:, -1, :]
        picked = torch.softmax(logits[:, [first[s] for s in STRATEGIES]].float(), dim=-1)
        out += [dict(zip(STRATEGIES, row.tolist())) for row in picked]
    return out


def summarise(probs: list[dict[str, float]], families: list[str]) -> dict[str, dict]:
    """{family: {"n", "mean": {s: p}, "greedy": {s: share}, "knife_edge": share}}, and "all"."""
    groups = defaultdict(list)
    for p, family in zip(probs, families):
        groups[family].append(p)
        groups["all"].append(p)
    out = {}
    for family, ps in sorted(groups.items()):
        top = [sorted(p.values(), reverse=True) for p in ps]
        out[family] = {
            "n": len(ps),
            "mean": {s: sum(p[s] for p in ps) / len(ps) for s in STRATEGIES},
            "greedy": {s: sum(max(p, key=p.get) == s for p in ps) / len(ps) for s in STRATEGIES},
            "knife_edge": sum(t[0] - t[1] < KNIFE_EDGE for t in top) / len(ps),
        }
    return out


def render(results: dict[str, dict]) -> str:
    lines = ["| model | family | n | mean P cot/l2m/pot | greedy cot/l2m/pot | top two within 0.2 |",
             "|---|---|---|---|---|---|"]
    for label, table in results.items():
        for family, r in table.items():
            mean = "/".join(f"{r['mean'][s]:.2f}" for s in STRATEGIES)
            greedy = "/".join(f"{r['greedy'][s]:.2f}" for s in STRATEGIES)
            lines.append(f"| {label} | {family} | {r['n']} | {mean} | {greedy} | {r['knife_edge']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tag_margin", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or store URLs")
    parser.add_argument("--iterations", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", default=None, help="eval set name (default: the first eval set)")
    parser.add_argument("--per-family", type=int, default=30, help="test questions per family")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    for run in args.runs:
        store = open_store(run)
        spec = saved_run(store).spec
        name = args.set or spec.datasets.eval[0].name
        records = first_per_family(eval_sets(spec)[name], args.per_family)
        for iteration in args.iterations:
            model, tokenizer = load_student(str(local_model(store, StageKey(TRAIN, iteration).prefix)), dtype="float32")
            probs = tag_probabilities(model, tokenizer, [r["question"] for r in records])
            label = f"{Path(run).name} iteration {iteration}"
            results[label] = summarise(probs, [family_of(r) for r in records])
            print(render({label: results[label]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
