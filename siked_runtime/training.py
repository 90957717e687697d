"""Supervised fine-tuning of a student on (prompt, completion) rows, with TRL.

    rows = [{"prompt": build_prompt(question), "completion": solution}, ...]
    summary = train_sft("builtin:smollm2-135m-instruct", rows, Path("out/model"), spec.student, spec.training, seed=0)
    model, tokenizer = load_student("out/model")     # merged weights, safetensors

The loss covers completion tokens only (TRL's prompt-completion format). Prompts are
rendered with `models.chat_prompt` before TRL sees them, and TRL tokenizes them with the
tokenizer's defaults, exactly as `samplers.TransformersSampler` does at inference: the
student is trained on the very token sequence it will be prompted with. TRL appends the
tokenizer's EOS to each completion, so the student learns to stop after its answer.

LoRA adapters are merged into the weights after training, so every iteration hands the
next one (and the evaluator) a plain model directory.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
from transformers.utils import is_flash_attn_2_available
from trl import SFTConfig

from siked_runtime.completion_loss import CompletionLossTrainer
from siked_runtime.console import Progress
from siked_runtime.models import chat_prompt, cpu_has_native_bf16, default_device, resolve_dtype, resolve_model
from siked_runtime.spec import StudentSpec, TrainingSpec

LogCallback = Callable[[dict[str, Any]], None]


class _LossHistory(TrainerCallback):
    """Collects every logged loss, and forwards each log line to the caller."""

    def __init__(self, forward: LogCallback | None):
        self.forward = forward
        self.losses: list[float] = []
        self.last: dict[str, Any] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - TrainerCallback's signature
        logs = dict(logs or {})
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
            self.last = logs
        if self.forward:
            self.forward({"step": state.global_step, "max_steps": state.max_steps, **logs})


class _StepProgress(TrainerCallback):
    """Training progress in siked's voice: "step 12/40 · loss 0.76 · 3.1 s/step · ETA 1m24s"."""

    def __init__(self, label: str):
        self.label = label
        self.bar: Progress | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback's signature
        self.bar = Progress(self.label, state.max_steps, unit="step", count="step {done}/{total}")

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(state.global_step - self.bar.done, f"loss {float(logs['loss']):.2f}")

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.done)
            self.bar.close()
            self.bar = None


def _packing_supported(device: str) -> bool:
    # TRL's packed / padding-free batches drop the attention mask and rely on FlashAttention
    # reading sequence boundaries from position_ids; SDPA and eager would attend across
    # packed sequences. Without it, padded batches grouped by length waste little.
    return device.startswith("cuda") and is_flash_attn_2_available()


def _lora_config(student: StudentSpec) -> LoraConfig:
    targets = student.lora.target_modules
    return LoraConfig(
        r=student.lora.rank,
        lora_alpha=student.lora.alpha,
        lora_dropout=student.lora.dropout,
        # peft spells "every linear layer but the output head" as the bare string.
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        task_type="CAUSAL_LM",
    )


def compute_dtype(student: StudentSpec, device: str) -> torch.dtype:
    """The autocast dtype of training matmuls; weights keep `models.resolve_dtype`'s dtype.

    On CPUs with native bf16 (AVX512-BF16, AMX) bf16 autocast trains about 3x faster than
    fp32 at the same loss (measured with SmolLM2-135M), so `auto` uses it there too.
    """
    if student.dtype == "auto" and device == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return resolve_dtype(student.dtype, device)


def _sft_config(output_dir: str, training: TrainingSpec, student: StudentSpec, seed: int, device: str) -> SFTConfig:
    packing = training.packing and _packing_supported(device)
    mixed = compute_dtype(student, device)
    return SFTConfig(
        output_dir=output_dir,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=float(training.warmup_ratio),  # a float below 1 is a ratio of all steps
        weight_decay=training.weight_decay,
        per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation,
        max_length=student.max_seq_length,
        completion_only_loss=True,
        packing=packing,
        padding_free=packing,
        train_sampling_strategy="random" if packing else "group_by_length",
        bf16=mixed == torch.bfloat16,
        fp16=mixed == torch.float16,
        use_cpu=device == "cpu",
        # Activation memory only matters on GPUs with large students; on CPU it costs a third more time.
        gradient_checkpointing=device.startswith("cuda"),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )


def _trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_trainer(
    base_model_path: str,
    rows: list[dict],
    student: StudentSpec,
    training: TrainingSpec,
    seed: int,
    output_dir: str,
    callbacks: list[TrainerCallback] | None = None,
) -> CompletionLossTrainer:
    """The configured trainer behind `train_sft` (its dataset already tokenized and masked)."""
    if not rows:
        raise ValueError("training needs at least one row")
    path = resolve_model(base_model_path)
    device = default_device()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = _sft_config(output_dir, training, student, seed, device)
    # Full fine-tuning keeps fp32 master weights and trains under autocast; LoRA leaves
    # the base frozen, so it may sit in the compute dtype.
    weights_dtype = torch.float32 if student.finetune == "full" else resolve_dtype(student.dtype, device)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=weights_dtype, attn_implementation="flash_attention_2" if config.padding_free else None
    )
    dataset = Dataset.from_list(
        [{"prompt": chat_prompt(tokenizer, r["prompt"]), "completion": r["completion"]} for r in rows]
    )
    return CompletionLossTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(student) if student.finetune == "lora" else None,
        callbacks=callbacks,
    )


def train_sft(
    base_model_path: str,
    rows: list[dict],
    out_dir: Path,
    student: StudentSpec,
    training: TrainingSpec,
    seed: int,
    on_log: LogCallback | None = None,
    label: str = "train",
) -> dict[str, Any]:
    """Fine-tune `base_model_path` on `rows` and save the (merged) model to `out_dir`.

    `rows` hold `prompt` (the user text, from `strategies.build_prompt`) and `completion`
    (the solution text). `on_log` receives every training log line (step, loss, learning
    rate, ...); without it, progress is shown under `label` (`console.Progress`). Returns
    counts, losses and throughput for the stage manifest.
    """
    history = _LossHistory(on_log)
    with tempfile.TemporaryDirectory(prefix="siked-sft-") as scratch:
        callbacks = [history] if on_log is not None else [history, _StepProgress(label)]
        trainer = build_trainer(base_model_path, rows, student, training, seed, scratch, callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)  # its raw log dicts are no console for a user
        trainable = _trainable_parameters(trainer.model)
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started

    trained = trainer.model
    if student.finetune == "lora":
        trained = trained.merge_and_unload()
    trained.config.use_cache = True  # switched off for training; the saved model is for generation
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(out_dir, safe_serialization=True)
    trainer.processing_class.save_pretrained(out_dir)

    tokens = int(history.last.get("num_tokens", 0))
    loss = float(result.training_loss)
    return {
        "train_rows": len(rows),
        "steps": int(result.global_step),
        "train_loss": loss if math.isfinite(loss) else None,
        "loss_history": history.losses,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "trainable_parameters": trainable,
    }
