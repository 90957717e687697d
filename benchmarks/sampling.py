"""P1: sampling tokens/s — our sampler against what a user would write with `generate`.

    python -m benchmarks p1 [--quick] [--student DIR]

Both sides draw k samples at temperature 0.7 for the same prompts from the same trained
student (see `student.py`):

* ours: `TransformersSampler` as the sample stage uses it — its dtype choice (bf16 on CPUs
  with native bf16), length-sorted left-padded batches, generation ending at the `Answer:` line;
* baseline: `AutoModelForCausalLM.from_pretrained(path)` (fp32), one prompt at a time,
  `generate(do_sample=True, num_return_sequences=k)`, stopping only at EOS.

Useful tokens are the tokens of the solution each side returns (text up to the end of its
`Answer:` line); raw tokens are every token generated. If ours falls short of its goal,
a torch.profiler trace of one of its batches names the operators that take the time.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.report import Measurement, ratio_met
from siked_runtime.models import chat_prompt
from siked_runtime.samplers import TransformersSampler, cut_finished
from siked_runtime.strategies import build_prompt, is_finished
from siked_runtime.synthetic import generate

GOAL = ">=3"
TEMPERATURE = 0.7


def prompts_for(tokenizer, n: int) -> list[str]:
    # Questions the student was not trained on (the quickstart trains on seed 1).
    families = ["short_story", "big_arithmetic"]
    return [chat_prompt(tokenizer, build_prompt(r["question"])) for r in generate(n, seed=7, families=families)]


def finished_share(texts: list[str]) -> float:
    """Share of solutions with a complete `Answer:` line; `cut_finished` drops the line's closing newline."""
    return sum(is_finished(t + "\n") for t in texts) / len(texts)


def useful_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def run_ours(path: Path, prompts: list[str], k: int, max_new_tokens: int, batch_size: int) -> dict:
    sampler = TransformersSampler(str(path), batch_size=batch_size)
    sampler.generate(prompts[:1], n=1, temperature=TEMPERATURE, max_new_tokens=4, seed=0)  # warm-up
    sampler.stats = {"sequences": 0, "new_tokens": 0, "seconds": 0.0}
    started = time.perf_counter()
    completions = sampler.generate(prompts, n=k, temperature=TEMPERATURE, max_new_tokens=max_new_tokens, seed=0)
    seconds = time.perf_counter() - started
    texts = [t for cs in completions for t in cs]
    result = {"seconds": seconds, "raw": sampler.stats["new_tokens"], "useful": useful_tokens(sampler.tokenizer, texts),
              "finished": finished_share(texts), "dtype": str(sampler.model.dtype)}
    sampler.close()
    return result


@torch.inference_mode()
def run_baseline(path: Path, prompts: list[str], k: int, max_new_tokens: int) -> dict:
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    warm = tokenizer(prompts[0], return_tensors="pt")
    model.generate(**warm, do_sample=True, max_new_tokens=4, pad_token_id=pad)
    torch.manual_seed(0)
    raw, texts = 0, []
    started = time.perf_counter()
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(**inputs, do_sample=True, temperature=TEMPERATURE, num_return_sequences=k,
                                max_new_tokens=max_new_tokens, pad_token_id=pad)
        new = output[:, inputs["input_ids"].shape[1]:]
        raw += int((new != pad).sum())  # counted as TransformersSampler counts its own
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    seconds = time.perf_counter() - started
    cut = [cut_finished(t) for t in texts]
    return {"seconds": seconds, "raw": raw, "useful": useful_tokens(tokenizer, cut),
            "finished": finished_share(cut), "dtype": str(model.dtype)}


def profile_ours(path: Path, prompts: list[str], k: int, max_new_tokens: int, batch_size: int, top: int = 8) -> list[dict]:
    """The operators taking the most CPU time in one of our batches."""
    from torch.profiler import ProfilerActivity, profile

    sampler = TransformersSampler(str(path), batch_size=batch_size)
    sampler.generate(prompts[:1], n=1, temperature=TEMPERATURE, max_new_tokens=4, seed=0)
    batch = prompts[: max(1, batch_size // k)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sampler.generate(batch, n=k, temperature=TEMPERATURE, max_new_tokens=max_new_tokens, seed=0)
    sampler.close()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 3), "calls": e.count}
            for e in events[:top]]


def run_vllm(path: Path, prompts: list[str], k: int, max_new_tokens: int) -> dict:
    from siked_runtime.samplers import VllmSampler

    sampler = VllmSampler(str(path))
    sampler.generate(prompts[:1], n=1, temperature=TEMPERATURE, max_new_tokens=4)
    started = time.perf_counter()
    completions = sampler.generate(prompts, n=k, temperature=TEMPERATURE, max_new_tokens=max_new_tokens, seed=0)
    seconds = time.perf_counter() - started
    texts = [t for cs in completions for t in cs]
    result = {"seconds": seconds, "raw": sampler.stats["new_tokens"], "useful": useful_tokens(sampler.tokenizer, texts)}
    sampler.close()
    return result


def run(student: Path, device: str, quick: bool) -> list[Measurement]:
    n, k, max_new_tokens, batch_size = (8, 4, 128, 32) if quick else (32, 4, 256, 64)
    tokenizer = AutoTokenizer.from_pretrained(student)
    prompts = prompts_for(tokenizer, n)
    ours = run_ours(student, prompts, k, max_new_tokens, batch_size)
    base = run_baseline(student, prompts, k, max_new_tokens)
    context = {"model": "SmolLM2-135M-Instruct (fine-tuned)", "device": device, "n": n * k, "k": k,
               "max_new_tokens": max_new_tokens, "batch_size": batch_size,
               "dtype": {"ours": ours["dtype"], "baseline": base["dtype"]},
               "seconds": {"ours": round(ours["seconds"], 2), "baseline": round(base["seconds"], 2)},
               "finished": {"ours": round(ours["finished"], 3), "baseline": round(base["finished"], 3)}}
    useful = Measurement("P1", "sampling useful tokens/s, TransformersSampler vs generate per prompt",
                         ours["useful"] / ours["seconds"], base["useful"] / base["seconds"], "tokens/s", GOAL, False,
                         {**context, "tokens": {"ours": ours["useful"], "baseline": base["useful"]}})
    useful.met = ratio_met(useful.ratio, GOAL)
    raw = Measurement("P1.raw", "sampling generated tokens/s, same runs", ours["raw"] / ours["seconds"],
                      base["raw"] / base["seconds"], "tokens/s", GOAL, False,
                      {**context, "tokens": {"ours": ours["raw"], "baseline": base["raw"]}})
    raw.met = ratio_met(raw.ratio, GOAL)
    if not useful.met:
        useful.context["profile"] = profile_ours(student, prompts, k, 32 if quick else 64, batch_size)
    out = [useful, raw]
    if device.startswith("cuda"):
        try:
            import vllm  # noqa: F401
        except ImportError:
            return out
        fast = run_vllm(student, prompts, k, max_new_tokens)
        out.append(Measurement("P1.vllm", "sampling useful tokens/s, vLLM vs TransformersSampler",
                               fast["useful"] / fast["seconds"], ours["useful"] / ours["seconds"], "tokens/s",
                               ">=1", fast["useful"] / fast["seconds"] >= ours["useful"] / ours["seconds"], context))
    return out
