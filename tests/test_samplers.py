"""Samplers: completions per prompt, order, determinism, padding and early stopping."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from siked_runtime import samplers
from siked_runtime.models import chat_prompt, resolve_model
from siked_runtime.samplers import AnswerLineStop, TransformersSampler, VllmSampler, cut_finished, make_sampler
from siked_runtime.strategies import build_prompt


@pytest.fixture(scope="session")
def tiny_sampler(tmp_path_factory: pytest.TempPathFactory) -> TransformersSampler:
    path = resolve_model("builtin:tiny-random", cache_dir=tmp_path_factory.getbasetemp() / "siked-models")
    sampler = TransformersSampler(path, batch_size=4, device="cpu")
    yield sampler
    sampler.close()


def _prompts(sampler: TransformersSampler, questions: list[str]) -> list[str]:
    return [chat_prompt(sampler.tokenizer, build_prompt(q)) for q in questions]


QUESTIONS = [
    "What is 2 + 3?",
    "A farmer has 12 cows and buys 7 more, then sells 4 of them at the market. How many cows are left?",
    "Sam reads 5 pages a day. How many pages in a week?",
]


def test_n_completions_per_prompt_in_input_order(tiny_sampler: TransformersSampler) -> None:
    prompts = _prompts(tiny_sampler, QUESTIONS)
    sampled = tiny_sampler.generate(prompts, n=3, temperature=1.0, max_new_tokens=6, seed=0)
    assert [len(c) for c in sampled] == [3, 3, 3]
    assert all(isinstance(text, str) for c in sampled for text in c)

    # Prompts are batched longest first; each answer must still land at its prompt's index.
    together = tiny_sampler.generate(prompts, max_new_tokens=6)
    alone = [tiny_sampler.generate([p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone


def test_greedy_is_deterministic(tiny_sampler: TransformersSampler) -> None:
    prompts = _prompts(tiny_sampler, QUESTIONS[:2])
    first = tiny_sampler.generate(prompts, n=2, temperature=0.0, max_new_tokens=8)
    assert first == tiny_sampler.generate(prompts, n=2, temperature=0.0, max_new_tokens=8)
    assert all(a == b for a, b in first)  # greedy: the n copies agree


def test_sampling_follows_the_seed(tiny_sampler: TransformersSampler) -> None:
    prompts = _prompts(tiny_sampler, QUESTIONS[:1])
    first = tiny_sampler.generate(prompts, n=4, temperature=1.0, max_new_tokens=8, seed=7)
    assert first == tiny_sampler.generate(prompts, n=4, temperature=1.0, max_new_tokens=8, seed=7)
    assert len(set(first[0])) > 1  # a random model at temperature 1 does not repeat itself


def test_seeded_rows_do_not_depend_on_their_batch(tiny_sampler: TransformersSampler) -> None:
    # With one seed per prompt, a prompt's samples are the same alone, in another batch, in another
    # order, and with a batch size that splits the call differently: what a sharded stage relies on.
    prompts = _prompts(tiny_sampler, QUESTIONS)
    seeds = [11, 12, 13]
    together = tiny_sampler.generate(prompts, n=2, temperature=1.0, max_new_tokens=8, seeds=seeds)
    alone = [tiny_sampler.generate([p], n=2, temperature=1.0, max_new_tokens=8, seeds=[s])[0]
             for p, s in zip(prompts, seeds, strict=True)]
    reversed_ = tiny_sampler.generate(prompts[::-1], n=2, temperature=1.0, max_new_tokens=8, seeds=seeds[::-1])
    assert together == alone == reversed_[::-1]
    assert len({c for cs in together for c in cs}) > 3  # the seeds differ, so do the samples
    other = tiny_sampler.generate(prompts[:1], n=2, temperature=1.0, max_new_tokens=8, seeds=[99])
    assert other[0] != together[0]
    with pytest.raises(ValueError, match="one per prompt"):
        tiny_sampler.generate(prompts, n=1, temperature=1.0, seeds=[1])


def test_samples_drawn_one_call_at_a_time_are_those_of_one_call(tiny_sampler: TransformersSampler) -> None:
    # The adaptive budget draws a question's samples in rounds of one: with `first_sample`, its
    # j-th sample is fixed k's j-th, whatever the other prompts of each call.
    prompts = _prompts(tiny_sampler, QUESTIONS)
    seeds = [21, 22, 23]
    at_once = tiny_sampler.generate(prompts, n=3, temperature=1.0, max_new_tokens=8, seeds=seeds)
    rounds = [tiny_sampler.generate(prompts[:j + 1], n=1, temperature=1.0, max_new_tokens=8, seeds=seeds[:j + 1],
                                    first_sample=[j] * (j + 1)) for j in range(3)]
    assert [r[0][0] for r in rounds] == at_once[0]  # prompt 0's samples 0, 1, 2, each in a call of its own
    assert rounds[2][1][0] == at_once[1][2] and rounds[2][2][0] == at_once[2][2]
    two = tiny_sampler.generate(prompts, n=2, temperature=1.0, max_new_tokens=8, seeds=seeds, first_sample=[1, 0, 1])
    assert two == [at_once[0][1:], at_once[1][:2], at_once[2][1:]]
    assert len(set(at_once[0])) > 1
    with pytest.raises(ValueError, match="first_sample"):
        tiny_sampler.generate(prompts, n=1, temperature=1.0, seeds=seeds, first_sample=[0])


def test_fp32_logits_of_the_real_student_hardly_depend_on_the_batch() -> None:
    # What the per-sequence seeds rest on for a real model: a prompt's logits alone and left-padded in
    # a batch of longer prompts agree to float32 rounding, so the same uniforms draw the same tokens
    # except within ~1e-4 of a boundary. (In bf16 they differ by up to ~0.6: benchmarks/batch_invariance.py.)
    sampler = TransformersSampler(resolve_model("builtin:smollm2-135m-instruct"), dtype="float32", batch_size=8,
                                  device="cpu")
    prompts = _prompts(sampler, ["What is 2 + 3?", *QUESTIONS[1:]])
    inputs = sampler.tokenizer(prompts, return_tensors="pt", padding=True)
    assert len({int(n) for n in inputs["attention_mask"].sum(-1)}) == 3  # three lengths: real padding

    together = sampler.next_token_logits(prompts)
    alone = torch.cat([sampler.next_token_logits([p]) for p in prompts])
    assert (together - alone).abs().max() < 1e-3
    assert together.std() > 1  # real logits, not a constant
    sampler.close()


@contextmanager
def _forward_calls(model: torch.nn.Module) -> Iterator[list[dict]]:
    """Records the inputs of each forward pass of `model`."""
    calls: list[dict] = []
    handle = model.register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs), with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _finish_rows_at_different_steps(monkeypatch) -> None:
    # The random model repeats a prompt's last token; make a sequence finish once its text is
    # over 25 characters, so rows repeating longer tokens finish first.
    monkeypatch.setattr(AnswerLineStop, "_has_newline", lambda self, token_id: True)
    monkeypatch.setattr(samplers, "is_finished", lambda text: len(text) > 25)
    monkeypatch.setattr(samplers, "cut_finished", lambda text: text)


# Raw text, not chat prompts: the random model continues each with a different token.
RAW_PROMPTS = ["Question: 2 + 3?", "He has 12 cows and buys 7 more. How many", "Sam reads 5 pages a day. Let us think"]


def test_batches_are_left_padded(tiny_sampler: TransformersSampler) -> None:
    with _forward_calls(tiny_sampler.model) as calls:
        tiny_sampler.generate(_prompts(tiny_sampler, QUESTIONS[:2]), max_new_tokens=2)
    mask = calls[0]["attention_mask"]
    short = mask[1]  # sorted longest first, so the short question is the second row
    assert short[0] == 0 and short[-1] == 1 and mask[0].all()


@torch.inference_mode()
def test_greedy_matches_model_generate(tiny_sampler: TransformersSampler) -> None:
    tokenizer, model = tiny_sampler.tokenizer, tiny_sampler.model
    prompts = _prompts(tiny_sampler, QUESTIONS)  # of different lengths: left padding matters
    prompts.sort(key=lambda p: -len(tokenizer(p)["input_ids"]))  # the sampler's batch order
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    copied = {name: value.repeat_interleave(2, dim=0) for name, value in inputs.items()}
    assert model.config._attn_implementation == samplers.GROUPED_SDPA
    model.set_attn_implementation("sdpa")  # `generate` as it comes
    try:
        output = model.generate(**inputs, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
        reference = model.generate(**copied, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                                   return_dict_in_generate=True, output_logits=True)
    finally:
        model.set_attn_implementation(samplers.GROUPED_SDPA)
    expected = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert tiny_sampler.generate(prompts, n=2, max_new_tokens=12) == [[cut_finished(t)] * 2 for t in expected]

    # The random model's greedy text barely depends on the prompt, so compare the logits too,
    # with each prompt prefilled once for two copies against `generate` on the copies.
    logits: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda module, args, out: logits.append(out.logits[:, -1]))
    try:
        new = tiny_sampler._decode(inputs, 2, False, 0.0, 1.0, 12)
    finally:
        handle.remove()
    assert new == reference.sequences[:, inputs["input_ids"].shape[1] :].tolist()
    assert len(logits) == len(reference.logits) == 12
    logits[0] = logits[0].repeat_interleave(2, dim=0)
    for ours, theirs in zip(logits, reference.logits, strict=True):
        torch.testing.assert_close(ours, theirs.to(ours.dtype))  # `generate` keeps fp32 copies of them


def test_finished_rows_leave_the_batch(tiny_sampler: TransformersSampler, monkeypatch) -> None:
    _finish_rows_at_different_steps(monkeypatch)
    stats = tiny_sampler.stats
    before = stats["new_tokens"]
    with _forward_calls(tiny_sampler.model) as calls:
        fast = tiny_sampler.generate(RAW_PROMPTS, max_new_tokens=40)
    new_tokens = stats["new_tokens"] - before
    sizes = [len(call["input_ids"]) for call in calls]
    assert sizes[0] == 3 and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    assert len(sizes) < 40  # the last row finished early too
    assert new_tokens == sum(sizes)  # each forward pass wrote one token per row

    # The same completions and token counts as `generate`, whose finished rows stay in the batch.
    monkeypatch.setattr(samplers, "_splittable", lambda cache: False)
    before = stats["new_tokens"]
    assert tiny_sampler.generate(RAW_PROMPTS, max_new_tokens=40) == fast
    assert stats["new_tokens"] - before == new_tokens


def test_copies_share_one_prefill(tiny_sampler: TransformersSampler) -> None:
    prompts = _prompts(tiny_sampler, QUESTIONS[:2])
    with _forward_calls(tiny_sampler.model) as calls:
        tiny_sampler.generate(prompts, n=2, temperature=1.0, max_new_tokens=5, seed=0)
    shapes = [tuple(call["input_ids"].shape) for call in calls]
    assert shapes[0][0] == 2 and shapes[0][1] > 1  # the two prompts, once each
    assert shapes[1:] == [(4, 1)] * 4  # then one token for each of the 2 x 2 sequences


def test_falls_back_to_model_generate(tiny_sampler: TransformersSampler, monkeypatch) -> None:
    prompts = _prompts(tiny_sampler, QUESTIONS)
    fast = tiny_sampler.generate(prompts, max_new_tokens=8)
    monkeypatch.setattr(samplers, "_splittable", lambda cache: False)
    calls = []
    generate = tiny_sampler.model.generate
    monkeypatch.setattr(tiny_sampler.model, "generate", lambda **kwargs: calls.append(kwargs) or generate(**kwargs))
    assert tiny_sampler.generate(prompts, max_new_tokens=8) == fast
    sampled = tiny_sampler.generate(prompts, n=2, temperature=0.7, top_p=0.9, max_new_tokens=4, seed=0)
    assert [len(c) for c in sampled] == [2, 2, 2]
    assert [len(call["input_ids"]) for call in calls] == [3, 4, 2]  # batches of up to 4 sequences
    assert all(call["temperature"] == 0.7 and call["top_p"] == 0.9 and call["top_k"] == 0 for call in calls[1:])


def test_draw_follows_the_distribution() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    drawn = samplers._draw(probs.log().expand(20000, -1))
    counts = torch.bincount(drawn, minlength=5) / len(drawn)
    assert counts[1] == 0 and counts[4] == 0  # tokens without probability, the last one included
    assert torch.allclose(counts, probs, atol=0.015)


def test_progress_callback_counts_sequences(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = resolve_model("builtin:tiny-random", cache_dir=tmp_path_factory.getbasetemp() / "siked-models")
    calls: list[tuple[int, int, int]] = []
    sampler = TransformersSampler(path, batch_size=2, device="cpu", on_batch=lambda *a: calls.append(a))
    sampler.generate(_prompts(sampler, QUESTIONS), n=1, max_new_tokens=3)
    assert [(done, total) for done, total, _ in calls] == [(2, 3), (3, 3)]
    assert all(0 < new <= 2 * 3 for _, _, new in calls)
    assert sampler.stats["sequences"] == 3


def test_batch_stops_once_every_answer_is_finished(tiny_sampler: TransformersSampler, monkeypatch) -> None:
    # Pretend every token ends a line and any text is a finished answer: each row is done
    # after its first token, so the batch must end long before max_new_tokens.
    monkeypatch.setattr(AnswerLineStop, "_has_newline", lambda self, token_id: True)
    monkeypatch.setattr(samplers, "is_finished", lambda text: bool(text))
    monkeypatch.setattr(samplers, "cut_finished", lambda text: text)
    before = tiny_sampler.stats["new_tokens"]
    out = tiny_sampler.generate(_prompts(tiny_sampler, QUESTIONS), max_new_tokens=64)
    assert tiny_sampler.stats["new_tokens"] - before <= 2 * len(QUESTIONS)
    assert all(len(c[0]) < 40 for c in out)


def test_answer_line_stop_marks_rows_separately(tiny_sampler: TransformersSampler) -> None:
    tokenizer = tiny_sampler.tokenizer
    prompt = tokenizer("Question: 2 + 3?\n")["input_ids"]
    finished = tokenizer("[cot]\n2 + 3 = 5.\nAnswer: 5\nQuestion: next")["input_ids"]
    unfinished = tokenizer("[cot]\n2 + 3 = 5 and then some more words here ok")["input_ids"]
    length = min(len(finished), len(unfinished))
    rows = torch.tensor([prompt + finished[:length], prompt + unfinished[:length]])
    stop = AnswerLineStop(tokenizer, prompt_length=len(prompt))
    flags = [stop(rows[:, : len(prompt) + k], scores=None).tolist() for k in range(1, length + 1)]
    first_done = next(k for k, (a, _) in enumerate(flags, start=1) if a)
    assert tokenizer.decode(finished[:first_done]).endswith("Answer: 5\n")
    assert all(a for a, _ in flags[first_done - 1 :])  # stays finished
    assert not any(b for _, b in flags)


def test_cut_finished_keeps_the_solution_only() -> None:
    assert cut_finished("[cot]\n2 + 3 = 5.\nAnswer: 5\nQuestion: what") == "[cot]\n2 + 3 = 5.\nAnswer: 5"
    assert cut_finished("[l2m]\nQ: sum?\nA: 5.\nAnswer: 5\n\n") == "[l2m]\nQ: sum?\nA: 5.\nAnswer: 5"
    assert cut_finished("[cot]\n2 + 3 = 5.\nAnswer: 5") == "[cot]\n2 + 3 = 5.\nAnswer: 5"  # no newline yet
    assert cut_finished("[pot]\nanswer = 2 + 3\n\nmore") == "[pot]\nanswer = 2 + 3\n\nmore"


def test_vllm_backend_without_vllm_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match="pip install 'siked\\[vllm\\]'"):
        VllmSampler("builtin:tiny-random")
    with pytest.raises(ImportError):
        make_sampler("vllm", "builtin:tiny-random")


def test_make_sampler_rejects_unknown_backends() -> None:
    with pytest.raises(ValueError, match="transformers, vllm"):
        make_sampler("onnx", "builtin:tiny-random")


def test_make_sampler_builds_transformers(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = Path(resolve_model("builtin:tiny-random", cache_dir=tmp_path_factory.getbasetemp() / "siked-models"))
    sampler = make_sampler("transformers", str(path), batch_size=8, device="cpu")
    assert isinstance(sampler, TransformersSampler) and sampler.batch_size == 8
    sampler.close()



class _FakeLLM:
    """Stands in for `vllm.LLM`, which cannot be imported in this environment: it records the
    engine's constructor arguments and finishes every request at once, driving the progress bar
    as vLLM's `LLM.generate` does (a bar with `total=`, one `update` per finished request)."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        _FakeLLM.made.append(kwargs)
        self.calls: list[int] = []

    def get_tokenizer(self):
        return None

    def generate(self, prompts, params, use_tqdm=True):
        from types import SimpleNamespace

        self.calls.append(len(prompts))
        bar = use_tqdm(total=len(prompts), desc="Processed prompts") if callable(use_tqdm) else None
        if bar is not None:
            list(use_tqdm(iter(prompts), desc="Adding requests"))  # an iterable bar: not progress
        results = []
        for prompt in prompts:
            outputs = [SimpleNamespace(text=f"[cot]\n{prompt}\nAnswer: 1\nmore", token_ids=[1, 2, 3])
                       for _ in range(params.n)]
            results.append(SimpleNamespace(outputs=outputs))
            if bar is not None:
                bar.update(params.n)
        return results


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch):
    from types import ModuleType, SimpleNamespace

    module = ModuleType("vllm")
    module.LLM = _FakeLLM
    module.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    _FakeLLM.made = []
    return _FakeLLM


def _engine_spec(**settings):
    from siked_runtime.spec import DistillationSpec

    return DistillationSpec.model_validate({
        "teacher": {"kind": "vllm", "model": "builtin:tiny-random", "vllm": settings.pop("teacher", {})},
        "student": {"model": "builtin:tiny-random", "maxSeqLength": 1024},
        "datasets": {"train": {"name": "t", "source": "synthetic", "synthetic": {"n": 4}}},
        "sampling": {"backend": "vllm", "vllm": settings.pop("sampling", {})},
        "resources": {"default": {"gpus": 1}, "sample": {"gpus": 4}, "teacher": {"gpus": 8}},
    })


def test_vllm_engine_settings_reach_the_engine(fake_vllm) -> None:
    """The plumbing only: vLLM itself runs in tests/test_vllm_sampler.py, in its own environment."""
    spec = _engine_spec(sampling={"gpuMemoryUtilization": 0.5, "maxNumSeqs": 512, "enforceEager": True})
    VllmSampler("builtin:tiny-random", **samplers.sampler_engine_args(spec, "sample"))
    made = fake_vllm.made[-1]
    assert made["tensor_parallel_size"] == 4  # the sample stage's GPUs
    assert made["gpu_memory_utilization"] == 0.5 and made["max_num_seqs"] == 512 and made["enforce_eager"] is True
    assert made["max_model_len"] == 1024  # the student's maxSeqLength
    assert made["enable_prefix_caching"] is True

    VllmSampler("builtin:tiny-random", **samplers.sampler_engine_args(_engine_spec(), "eval"))
    made = fake_vllm.made[-1]
    assert made["tensor_parallel_size"] == 1 and "max_num_seqs" not in made  # vLLM's default when unset
    assert samplers.sampler_engine_args(_engine_spec().model_copy(
        update={"sampling": _engine_spec().sampling.model_copy(update={"backend": "transformers"})}), "sample") == {}


def test_the_vllm_teacher_uses_its_engine_settings(fake_vllm) -> None:
    from siked_runtime.teachers.local import solve_local

    spec = _engine_spec(teacher={"tensorParallelSize": 2, "maxModelLen": 4096})
    records = [{"id": "q1", "question": "What is 1 + 0?", "answer": "1"}]
    rows = solve_local(spec.teacher, records, ["cot"], spec.sampling, gpus=spec.resources.for_stage("teacher").gpus)
    made = fake_vllm.made[-1]
    assert made["tensor_parallel_size"] == 2 and made["max_model_len"] == 4096  # the spec's, not the 8 GPUs
    assert len(rows) == spec.teacher.samples_per_strategy
    solve_local(_engine_spec().teacher, records, ["cot"], spec.sampling, gpus=8)
    assert fake_vllm.made[-1]["tensor_parallel_size"] == 8 and "max_model_len" not in fake_vllm.made[-1]


def test_the_vllm_sampler_hands_the_engine_every_prompt_at_once(fake_vllm) -> None:
    progress: list[tuple[int, int, int]] = []
    sampler = VllmSampler("builtin:tiny-random", batch_size=2,
                          on_batch=lambda done, total, tokens: progress.append((done, total, tokens)))
    out = sampler.generate([f"p{i}" for i in range(5)], n=3, temperature=0.7)
    assert sampler.llm.calls == [5]  # one call, not batches of batch_size
    assert [len(c) for c in out] == [3] * 5 and out[0][0] == "[cot]\np0\nAnswer: 1"
    # Sequences as each prompt finishes, then the call's new tokens.
    assert progress == [(3, 15, 0), (6, 15, 0), (9, 15, 0), (12, 15, 0), (15, 15, 0), (15, 15, 45)]
    assert sampler.stats["sequences"] == 15 and sampler.stats["new_tokens"] == 45
    greedy = sampler.generate(["p"], n=4)
    assert greedy == [["[cot]\np\nAnswer: 1"] * 4] and progress[-1] == (1, 1, 3)  # decoded once, copied
