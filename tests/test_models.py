"""Built-in students: building, caching, loading, and the chat prompt."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from siked_runtime import models
from siked_runtime.models import (
    chat_prompt, cpu_has_native_bf16, inference_dtype, load_student, resolve_dtype, resolve_model,
)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One cache for the whole test session: later tests (and modules) reuse the first build.
    return tmp_path_factory.getbasetemp() / "siked-models"


@pytest.fixture(scope="session")
def tiny_model(model_cache: Path) -> str:
    return resolve_model("builtin:tiny-random", cache_dir=model_cache)


def test_tiny_random_is_built_once_and_then_reused(tiny_model: str, model_cache: Path, monkeypatch) -> None:
    weights = Path(tiny_model) / "model.safetensors"
    assert weights.is_file() and (Path(tiny_model) / "tokenizer.json").is_file()
    built_at = weights.stat().st_mtime_ns

    def no_rebuild(out: Path) -> None:
        raise AssertionError("a cached model was rebuilt")

    monkeypatch.setitem(models._BUILDERS, "tiny-random", no_rebuild)
    assert resolve_model("builtin:tiny-random", cache_dir=model_cache) == tiny_model
    assert weights.stat().st_mtime_ns == built_at


def test_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    def broken(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setitem(models._BUILDERS, "tiny-random", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model("builtin:tiny-random", cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_cache_root_follows_siked_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SIKED_CACHE", str(tmp_path))
    assert models.cache_root() == tmp_path / "models"
    monkeypatch.delenv("SIKED_CACHE")
    assert models.cache_root() == Path.home() / ".cache" / "siked" / "models"


def test_other_names_pass_through() -> None:
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("/models/student") == "/models/student"
    with pytest.raises(ValueError, match="builtin:tiny-random"):
        resolve_model("builtin:nope")


def test_auto_dtype_is_fp32_on_cpu() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_generation_uses_bf16_only_where_the_cpu_has_it() -> None:
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert inference_dtype("auto", "cpu") == expected
    assert inference_dtype("float32", "cpu") == torch.float32


def test_tiny_random_loads_for_generation(tiny_model: str) -> None:
    model, tokenizer = load_student(tiny_model, device="cpu")
    assert model.dtype == inference_dtype("auto", "cpu") and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert model.config.num_hidden_layers == 2
    inputs = tokenizer([chat_prompt(tokenizer, "What is 2 + 3?")], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_tiny_random_weights_are_reproducible(tiny_model: str, tmp_path: Path) -> None:
    again = resolve_model("builtin:tiny-random", cache_dir=tmp_path)
    first, _ = load_student(tiny_model, device="cpu")
    second, _ = load_student(again, device="cpu")
    assert torch.equal(first.model.embed_tokens.weight, second.model.embed_tokens.weight)


def test_chat_prompt_wraps_the_user_turn(tiny_model: str) -> None:
    _, tokenizer = load_student(tiny_model, device="cpu")
    prompt = chat_prompt(tokenizer, "Question: what is 2 + 3?")
    assert "Question: what is 2 + 3?" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")  # SmolLM2's template, ready for the answer
    # The template's default system prompt stays out: it would cost every prompt a dozen tokens.
    default = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert "You are a helpful AI assistant" in default and "You are a helpful AI assistant" not in prompt


def test_chat_prompt_falls_back_for_templates_without_a_system_role(tiny_model: str) -> None:
    _, tokenizer = load_student(tiny_model, device="cpu")
    tokenizer.chat_template = (  # Gemma-style: refuses the system role
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<turn>{{ m['content'] }}</turn>{% endfor %}{% if add_generation_prompt %}<model>{% endif %}")
    assert chat_prompt(tokenizer, "hi") == "<turn>hi</turn><model>"


def test_chat_prompt_without_template_is_the_text() -> None:
    assert chat_prompt(SimpleNamespace(chat_template=None), "plain") == "plain"


@pytest.mark.slow
def test_smollm2_from_the_package_answers_a_question() -> None:
    # The default cache (or $SIKED_CACHE): a developer's later runs reuse the 20 s build.
    path = resolve_model("builtin:smollm2-135m-instruct")
    assert "smollm2-135m-instruct" in os.path.basename(path)
    model, tokenizer = load_student(path, device="cpu")
    assert model.config.num_hidden_layers == 30
    # The model's own template and system prompt: this checks the converted weights, not our prompts.
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                         add_generation_prompt=True)
    inputs = tokenizer([text], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer
