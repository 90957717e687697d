"""SFT on the tiny random student: LoRA and full fine-tuning, loss masking, merged output."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTTrainer

from siked_runtime.models import chat_prompt, resolve_model
from siked_runtime.spec import LoraSpec, StudentSpec, TrainingSpec
from siked_runtime.strategies import build_prompt, format_solution
from siked_runtime.completion_loss import CompletionLossTrainer
from siked_runtime.training import build_trainer, train_sft


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return resolve_model("builtin:tiny-random", cache_dir=tmp_path_factory.getbasetemp() / "siked-models")


def _rows(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i + 2, 2 * i + 3
        question = f"Ann has {a} pens and gets {b} more. How many pens does she have?"
        solution = format_solution("cot", f"{a} + {b} = {a + b}.", a + b)
        rows.append({"prompt": build_prompt(question), "completion": solution})
    return rows


FEW_STEPS = TrainingSpec(max_steps=3, batch_size=2, learning_rate=1e-2, warmup_ratio=0.0, lr_scheduler="constant")


def _weights(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def _assert_loads_and_generates(path: Path) -> None:
    assert not (path / "adapter_config.json").exists()  # LoRA is merged, not saved as an adapter
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.use_cache  # training switches the KV cache off; generation wants it back
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer([chat_prompt(tokenizer, build_prompt("What is 1 + 1?"))], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_lora_trains_merges_and_reloads(tiny_model: str, tmp_path: Path) -> None:
    student = StudentSpec(model="builtin:tiny-random", finetune="lora", lora=LoraSpec(rank=4, alpha=8))
    logs: list[dict] = []
    summary = train_sft(tiny_model, _rows(), tmp_path / "model", student, FEW_STEPS, seed=0, on_log=logs.append)

    assert summary["steps"] == 3 and summary["train_rows"] == 8
    assert len(summary["loss_history"]) == 3 and all(math.isfinite(x) for x in summary["loss_history"])
    assert math.isfinite(summary["train_loss"])
    assert summary["tokens"] > 0 and summary["tokens_per_second"] > 0
    assert any("loss" in line and line["step"] >= 1 for line in logs)
    # rank-4 adapters on every linear layer of two blocks: far fewer than the 3.2M weights
    assert 0 < summary["trainable_parameters"] < 100_000

    before, after = _weights(tiny_model), _weights(tmp_path / "model")
    assert before.keys() == after.keys()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(before[name], after[name])  # the merged adapter moved the weight
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])  # frozen
    _assert_loads_and_generates(tmp_path / "model")


def test_full_finetuning_changes_every_kind_of_weight(tiny_model: str, tmp_path: Path) -> None:
    student = StudentSpec(model="builtin:tiny-random", finetune="full")
    summary = train_sft(tiny_model, _rows(), tmp_path / "model", student, FEW_STEPS, seed=0)

    assert summary["steps"] == 3 and all(math.isfinite(x) for x in summary["loss_history"])
    before, after = _weights(tiny_model), _weights(tmp_path / "model")
    assert summary["trainable_parameters"] == sum(t.numel() for t in before.values())
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"):
        assert not torch.allclose(before[name], after[name]), name
    assert after["model.embed_tokens.weight"].dtype == torch.float32
    _assert_loads_and_generates(tmp_path / "model")


def test_loss_covers_the_completion_only(tiny_model: str, tmp_path: Path) -> None:
    rows = _rows(2)
    student = StudentSpec(model="builtin:tiny-random", finetune="lora")
    trainer = build_trainer(tiny_model, rows, student, FEW_STEPS, seed=0, output_dir=str(tmp_path))
    tokenizer = trainer.processing_class
    example = next(e for e in trainer.train_dataset if tokenizer.decode(e["input_ids"]).find("Ann has 2 pens") > 0)
    input_ids, labels = example["input_ids"], example["labels"]

    # The prompt is tokenized exactly as the sampler tokenizes chat_prompt at inference time.
    prompt_ids = tokenizer(chat_prompt(tokenizer, rows[0]["prompt"]))["input_ids"]
    assert input_ids[: len(prompt_ids)] == prompt_ids
    assert all(label == -100 for label in labels[: len(prompt_ids)])
    trained = [t for t, label in zip(input_ids, labels, strict=True) if label != -100]
    assert tokenizer.decode(trained) == rows[0]["completion"] + tokenizer.eos_token

    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).sum() > (batch["labels"] != -100).sum()  # prompts are longer than answers
    padding = batch["attention_mask"] == 0
    assert (batch["labels"][padding] == -100).all()


def test_training_needs_rows(tiny_model: str, tmp_path: Path) -> None:
    student = StudentSpec(model="builtin:tiny-random")
    with pytest.raises(ValueError, match="at least one row"):
        train_sft(tiny_model, [], tmp_path, student, FEW_STEPS, seed=0)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_completion_loss_equals_trls_loss(tiny_model: str, tmp_path: Path, finetune: str) -> None:
    # Scoring only the completion positions trains the objective TRL's full-sequence head computes.
    student = StudentSpec(model="builtin:tiny-random", finetune=finetune)
    trainer = build_trainer(tiny_model, _rows(4), student, FEW_STEPS, seed=0, output_dir=str(tmp_path))
    assert isinstance(trainer, CompletionLossTrainer)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    trls_loss = SFTTrainer.compute_loss
    with trainer.compute_loss_context_manager():
        with pytest.MonkeyPatch.context() as patch:  # ours must not defer to TRL here
            patch.setattr(SFTTrainer, "compute_loss", lambda *a, **k: pytest.fail("deferred to TRL"))
            ours = trainer.compute_loss(trainer.model, dict(batch))
        trl = trls_loss(trainer, trainer.model, dict(batch))
    assert ours.requires_grad and math.isfinite(ours.item())
    assert float(ours) == pytest.approx(float(trl), rel=2e-2)
    metrics = trainer._metrics["train"]
    assert metrics["mean_token_accuracy"][0] == pytest.approx(metrics["mean_token_accuracy"][1], abs=0.05)
    assert metrics["entropy"][0] == pytest.approx(metrics["entropy"][1], rel=5e-2)
