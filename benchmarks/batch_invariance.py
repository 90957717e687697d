"""Do a question's samples depend on the other questions in its batch? Per inference dtype.

    python -m benchmarks.batch_invariance [--questions 16] [--out results.jsonl]
    python -m benchmarks.batch_invariance --student RUN_DIR [--iteration 1] [--out results.jsonl]

The transformers sampler draws each sequence's randomness from the sequence's own seed
(`samplers.row_generators`), so the uniforms a question's samples use do not depend on its
batch. The logits they are compared with still do: a batch pads its prompts to the longest
and its matmuls take other shapes, and the result differs in the last bits. This measures by
how much, with SmolLM2-135M-Instruct on the quickstart's test questions, as the sample and
eval stages format them:

* the largest difference of the first step's logits, each question alone vs in one batch;
* the share of sampled completions (k = 4, the quickstart's temperature and top-p) that are
  identical alone and batched, with the same per-question seeds;
* the share of greedy completions (the eval stage's) that are identical.

With `--student`, a finished run's trained student instead: its evaluation (the eval stage's
own code, on the run's sets) at `evaluation.batchSize` and at 8, per dtype, and on how many
questions the verdict changes between the batch sizes and between the dtypes.

float32 is measured everywhere; bfloat16 where the CPU has native bf16 (`auto` picks it for
inference there) or on a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.report import machine
from benchmarks.student import quickstart_spec
from siked_runtime.models import chat_prompt, cpu_has_native_bf16, resolve_model
from siked_runtime.samplers import TransformersSampler
from siked_runtime.stages.data import eval_sets
from siked_runtime.stages.generation import question_seed
from siked_runtime.strategies import build_prompt


def same_share(a: list[list[str]], b: list[list[str]]) -> float:
    pairs = [(x, y) for xs, ys in zip(a, b, strict=True) for x, y in zip(xs, ys, strict=True)]
    return sum(x == y for x, y in pairs) / len(pairs)


def measure(dtype: str, questions: list[str], k: int, max_new_tokens: int, model: str | None = None) -> dict:
    spec = quickstart_spec()
    path = resolve_model(model or spec.student.model)
    sampler = TransformersSampler(path, dtype=dtype, batch_size=len(questions) * k)
    prompts = [chat_prompt(sampler.tokenizer, build_prompt(q)) for q in questions]
    seeds = [question_seed(spec.seed, q) for q in questions]
    batched = sampler.next_token_logits(prompts)
    alone = torch.cat([sampler.next_token_logits([p]) for p in prompts])
    kwargs = {"temperature": spec.iterations.temperature, "top_p": spec.sampling.top_p,
              "max_new_tokens": max_new_tokens}
    started = time.perf_counter()
    together = sampler.generate(prompts, n=k, seeds=seeds, **kwargs)
    one_by_one = [sampler.generate([p], n=k, seeds=[s], **kwargs)[0] for p, s in zip(prompts, seeds, strict=True)]
    greedy = sampler.generate(prompts, n=1, max_new_tokens=max_new_tokens)
    greedy_alone = [sampler.generate([p], n=1, max_new_tokens=max_new_tokens)[0] for p in prompts]
    return {"dtype": dtype, "questions": len(questions), "k": k, "max_new_tokens": max_new_tokens,
            "max_logit_difference": round(float((batched - alone).abs().max()), 6),
            "same_first_token": float((batched.argmax(-1) == alone.argmax(-1)).float().mean()),
            "samples_identical": round(same_share(together, one_by_one), 3),
            "greedy_identical": round(same_share(greedy, greedy_alone), 3),
            "seconds": round(time.perf_counter() - started, 1), "machine": machine()}


def student_verdicts(run_dir: Path, iteration: int, dtypes: list[str], small_batch: int = 8) -> dict:
    """The run's iteration-`iteration` student evaluated per dtype at two batch sizes: accuracies and changed verdicts."""
    import tempfile

    from siked_runtime.graph import StageKey
    from siked_runtime.local_runner import saved_run
    from siked_runtime.stages.evaluate import evaluate_model
    from siked_runtime.storage import open_store

    run = saved_run(open_store(str(run_dir)))
    model = run_dir / StageKey("train", iteration).prefix / "model"
    batches = [run.spec.evaluation.batch_size, small_batch]
    verdicts, accuracy, seconds = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            for batch in batches:
                spec = run.spec.model_copy(update={"evaluation": run.spec.evaluation.model_copy(
                    update={"dtype": dtype, "batch_size": batch})})
                store = open_store(f"{tmp}/{dtype}-{batch}")
                manifest = evaluate_model(spec, store, model, "eval")
                key = f"{dtype}@{batch}"
                accuracy[key] = {n: round(a, 3) for n, a in manifest["accuracy"].items()}
                seconds[key] = manifest["seconds"]
                verdicts[key] = {(n, r["id"]): r["verdict"] for n in manifest["accuracy"]
                                 for r in store.read_jsonl(f"eval/predictions-{n}.jsonl.gz")}

    def changed(a: str, b: str) -> int:
        return sum(verdicts[a][q] != verdicts[b][q] for q in verdicts[a])

    pairs = [(f"{d}@{batches[0]}", f"{d}@{batches[1]}") for d in dtypes]
    pairs += [(f"{dtypes[0]}@{batches[0]}", f"{d}@{batches[0]}") for d in dtypes[1:]]
    return {"student": str(run_dir), "iteration": iteration, "questions": len(next(iter(verdicts.values()))),
            "accuracy": accuracy, "seconds": seconds,
            "verdicts_changed": {f"{a} vs {b}": changed(a, b) for a, b in pairs}, "machine": machine()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--student", type=Path, help="a finished run's directory: evaluate its trained student")
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--out", type=Path, help="append the measurements here as JSON lines")
    args = parser.parse_args(argv)
    dtypes = ["float32"] + (["bfloat16"] if torch.cuda.is_available() or cpu_has_native_bf16() else [])
    if args.student:
        results = [student_verdicts(args.student, args.iteration, dtypes)]
    else:
        spec = quickstart_spec()
        records = eval_sets(spec)[spec.datasets.eval[0].name]
        questions = [r["question"] for r in records[: args.questions]]
        results = (measure(dtype, questions, args.k, args.max_new_tokens) for dtype in dtypes)
    for result in results:
        print(json.dumps(result), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
