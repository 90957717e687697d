"""Student generation shared by the sample and eval stages: prompts, sampler, progress."""

from __future__ import annotations

import time
from pathlib import Path

from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import log
from siked_runtime.strategies import build_prompt


def student_prompts(model_path: Path | str, questions: list[str]) -> list[str]:
    """The multi-strategy instruction + question, in the student's chat template (as at training)."""
    from transformers import AutoTokenizer

    from siked_runtime.models import chat_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    return [chat_prompt(tokenizer, build_prompt(q)) for q in questions]


def generate(spec: DistillationSpec, model_path: Path | str, questions: list[str], n: int, temperature: float,
             max_new_tokens: int, batch_size: int, what: str, seed: int = 0) -> tuple[list[list[str]], dict]:
    """`n` completions per question, with periodic progress lines; returns (completions, stats)."""
    from siked_runtime.samplers import make_sampler

    prompts = student_prompts(model_path, questions)
    start = time.perf_counter()
    tokens = [0]

    def on_batch(done: int, total: int, new_tokens: int) -> None:
        tokens[0] += new_tokens
        elapsed = time.perf_counter() - start
        log(f"{what}: {done}/{total} prompts, {tokens[0]} tokens ({tokens[0] / max(elapsed, 1e-9):.0f} tok/s)")

    sampler = make_sampler(spec.sampling.backend, str(model_path), dtype=spec.student.dtype, batch_size=batch_size)
    try:
        completions = sampler.generate(prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                                       top_p=spec.sampling.top_p if temperature > 0 else 1.0, seed=seed,
                                       on_batch=on_batch)
    finally:
        sampler.close()
    seconds = time.perf_counter() - start
    return completions, {"tokens": tokens[0], "seconds": round(seconds, 3),
                         "tokens_per_second": round(tokens[0] / seconds, 1) if seconds else None}
