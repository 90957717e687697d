"""Model teachers served inside the teacher stage: `local` (the spec's sampler backend) and `vllm`.

    rows = solve_local(spec.teacher, records, ("cot", "l2m", "pot"), spec.sampling,
                       gpus=spec.resources.for_stage("teacher").gpus)

Each question is asked once per strategy as a few-shot chat (`fewshot.teacher_messages`),
rendered with the teacher's own chat template, and `teacher.samplesPerStrategy` solutions
are sampled per prompt. Rows are unverified, like every teacher's: the teacher stage
verifies them and keeps at most m correct per question and strategy. A solution that
forgot its strategy tag gets the one it was asked for, since the prompt fixed it.

The `vllm` teacher runs with `teacher.vllm`'s engine settings: tensor parallelism over the
teacher stage's GPUs (`gpus`) unless the spec sets a size, the model's own context length
unless it sets `maxModelLen`.
"""

from __future__ import annotations

from collections.abc import Iterable

from siked_runtime.samplers import make_sampler, vllm_engine_args
from siked_runtime.spec import SamplingSpec, TeacherSpec
from siked_runtime.strategies import find_tag, tag
from siked_runtime.teachers.fewshot import teacher_messages


def render(tokenizer, question: str, strategy: str) -> str:
    """The teacher's prompt text: its chat template over the few-shot conversation."""
    return render_messages(tokenizer, teacher_messages(question, strategy))


def render_messages(tokenizer, messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['content']}\n\n" for m in messages)  # a base model: the turns as plain text


def _engine_args(teacher: TeacherSpec, sampling: SamplingSpec, gpus: int | None) -> dict:
    """The teacher sampler's engine settings: `teacher.vllm` for the vllm teacher, `sampling.vllm`
    for a local teacher on the vllm sampler backend, none for transformers."""
    if teacher.kind == "vllm":
        return vllm_engine_args(teacher.vllm, gpus)
    if sampling.backend == "vllm":
        return vllm_engine_args(sampling.vllm, gpus)
    return {}


def _generate(teacher: TeacherSpec, sampling: SamplingSpec, conversations: list[list[dict]], n: int,
              temperature: float, seed: int, gpus: int | None) -> list[list[str]]:
    """`n` replies per conversation from the teacher model, loaded for this call only."""
    backend = "vllm" if teacher.kind == "vllm" else sampling.backend
    sampler = make_sampler(backend, teacher.model, batch_size=sampling.batch_size,
                           **_engine_args(teacher, sampling, gpus))
    try:
        prompts = [render_messages(sampler.tokenizer, m) for m in conversations]
        return sampler.generate(prompts, n=n, temperature=temperature, max_new_tokens=teacher.max_tokens,
                                top_p=sampling.top_p if temperature > 0 else 1.0, seed=seed)
    finally:
        sampler.close()


def solve_local(teacher: TeacherSpec, records: list[dict], strategies: Iterable[str], sampling: SamplingSpec,
                seed: int = 0, gpus: int | None = None) -> list[dict]:
    """Raw teacher rows `{id, answer, strategy, completion}`, `samplesPerStrategy` per question × strategy.

    `gpus` is the teacher stage's GPUs (`resources.for_stage("teacher").gpus`), vLLM's default
    tensor-parallel size."""
    requests = [(r, s) for r in records for s in strategies]
    completions = _generate(teacher, sampling, [teacher_messages(r["question"], s) for r, s in requests],
                            teacher.samples_per_strategy, teacher.temperature, seed, gpus)
    rows = []
    for (record, strategy), texts in zip(requests, completions, strict=True):
        for text in texts:
            text = text.strip()
            if find_tag(text)[0] is None:
                text = f"{tag(strategy)}\n{text}"
            rows.append({"id": record["id"], "answer": record["answer"], "strategy": strategy, "completion": text})
    return rows


def ask_local(teacher: TeacherSpec, conversations: list[list[dict]], sampling: SamplingSpec, seed: int = 0,
              gpus: int | None = None) -> list[str]:
    """One greedy reply per conversation from the teacher model (the knowledge prompts of SKIntern)."""
    return [r[0] for r in _generate(teacher, sampling, conversations, 1, 0.0, seed, gpus)]
