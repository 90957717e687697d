"""Student generation shared by the sample and eval stages: prompts, one sampler, progress lines.

Samples are seeded per question (`question_seed`, from the call's seed and the question):
the transformers sampler draws each sequence's randomness from its question's seed alone
(`seeds=`), so the draws do not depend on which other questions share its batch. The logits
they pick from do, in their rounding: in float32 by ~1e-5, so a question's samples and greedy
answers are the same in any batch and a sharded stage produces what the unsharded one does; in
bfloat16 (`student.dtype: auto` on GPUs and on CPUs with native bf16) by up to ~0.6, and most
of them change with the batch (`benchmarks/batch_invariance.py`). vLLM seeds by engine.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from siked_runtime.spec import DistillationSpec
from siked_runtime.console import Progress
from siked_runtime.strategies import build_prompt


def question_seed(seed: int, question: str) -> int:
    """A 63-bit seed for one question's samples: stable across processes (unlike `hash`) and batches."""
    digest = hashlib.sha256(f"{seed}\x00{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def evaluation_dtype(spec: DistillationSpec) -> str:
    """The dtype greedy evaluation loads the student in: `evaluation.dtype`, or `student.dtype`'s for `auto`."""
    return spec.student.dtype if spec.evaluation.dtype == "auto" else spec.evaluation.dtype


class StudentGenerator:
    """Loads the student once; `generate` formats questions exactly as training did.

        with StudentGenerator(spec, model_dir, batch_size=32) as gen:
            completions = gen.generate(questions, n=4, temperature=0.7, max_new_tokens=256, what="sample[1]")
    """

    def __init__(self, spec: DistillationSpec, model_path: Path | str, batch_size: int, dtype: str | None = None):
        from siked_runtime.models import chat_prompt, load_tokenizer, resolve_model
        from siked_runtime.samplers import make_sampler

        self.spec = spec
        self.tokens = 0
        self._what, self._start, self._bar = "", time.perf_counter(), None
        path = resolve_model(str(model_path))  # a directory, or a `builtin:` name
        tokenizer = load_tokenizer(path)
        self._format = lambda q: chat_prompt(tokenizer, build_prompt(q))
        self.sampler = make_sampler(spec.sampling.backend, path, dtype=dtype or spec.student.dtype,
                                    batch_size=batch_size, on_batch=self._progress)

    def _progress(self, done: int, total: int, new_tokens: int) -> None:
        self.tokens += new_tokens
        self._batch_tokens += new_tokens
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self._bar.total = total  # greedy decoding decodes once per question, whatever n
        self._bar.update(done - self._bar.done,
                         f"{self._batch_tokens} tokens ({self._batch_tokens / elapsed:.0f} tok/s)")

    def generate(self, questions: list[str], n: int, temperature: float, max_new_tokens: int, what: str,
                 seed: int = 0, prefill: str = "", first_sample: list[int] | None = None) -> list[list[str]]:
        """n completions per question; `prefill` starts the answer (e.g. a forced strategy tag) and is
        part of each completion returned. `first_sample` (one per question): the index of the
        question's first sample here, so that samples drawn over several calls are those one call draws."""
        self._what, self._start, self._batch_tokens = what, time.perf_counter(), 0
        self._bar = Progress(what, len(questions) * n, unit="sequence", count="{done}/{total} sequences")
        try:
            out = self.sampler.generate([self._format(q) + prefill for q in questions], n=n, temperature=temperature,
                                        max_new_tokens=max_new_tokens,
                                        top_p=self.spec.sampling.top_p if temperature > 0 else 1.0, seed=seed,
                                        seeds=[question_seed(seed, q) for q in questions],
                                        first_sample=first_sample)
        finally:
            self._bar.close()
        return [[prefill + c for c in cs] for cs in out] if prefill else out

    def close(self) -> None:
        self.sampler.close()

    def __enter__(self) -> StudentGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
