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
next one (and the evaluator) a plain model directory. `qlora` trains LoRA on a 4-bit NF4
base (bitsandbytes, CUDA only) and merges the adapter into the unquantised base.

Under torchrun (`distributed.py`) every process calls `train_sft` alike; HF Trainer trains
them as one DDP or FSDP group and rank 0 alone saves. `training.batchSize` counts rows per
micro-step over all processes (each takes batchSize / world size), so a run's global batch
and its loss curve do not depend on how many processes train it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PrinterCallback, TrainerCallback
from transformers.utils import is_flash_attn_2_available
from trl import SFTConfig, SFTTrainer

from siked_runtime.completion_loss import CompletionLossTrainer
from siked_runtime.question_batches import QuestionGroupedSampler, question_groups
from siked_runtime.console import Progress
from siked_runtime.distributed import process_rank
from siked_runtime.models import chat_prompt, cpu_has_native_bf16, default_device, resolve_dtype, resolve_model
from siked_runtime.spec import DistributedStrategy, StudentSpec, TrainingSpec

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


def packing_plan(training: TrainingSpec, device: str) -> tuple[bool, str | None, str | None]:
    """(packing on, why not when off, attention implementation) for `training.packing` on `device`.

    TRL's packed, padding-free batches flatten a micro-batch into one row with per-sequence
    position_ids and no attention mask. FlashAttention reads the sequence boundaries from them;
    without it, transformers (>= 5) finds them in the position_ids too and gives SDPA a
    block-diagonal causal mask, so no sequence attends across another and no extra package is
    needed. On CPUs padded batches grouped by length stay: the compact completion head
    (`completion_loss`) needs the attention mask, and it saves more than packing would.
    """
    if not training.packing:
        return False, "training.packing is false", None
    if not device.startswith("cuda"):
        return False, "cpu: padded batches grouped by length (the completion-only head needs the attention mask)", None
    return True, None, "flash_attention_2" if is_flash_attn_2_available() else "sdpa"


def world_size() -> int:
    """Processes training together: torchrun's WORLD_SIZE, 1 when started without it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_leader() -> bool:
    """True in the process that writes artifacts: rank 0 under torchrun, the only one otherwise."""
    return process_rank() == 0


def per_device_batch(training: TrainingSpec, processes: int) -> int:
    """Rows per process and micro-step: `training.batchSize` is summed over all processes, so the
    global batch (batchSize × gradientAccumulation) stays the same whatever the number of processes."""
    if training.batch_size % processes:
        raise ValueError(f"training.batchSize ({training.batch_size}) must be a multiple of the {processes} "
                         f"training processes: each takes batchSize / {processes} rows per micro-step")
    return training.batch_size // processes


def check_hardware(student: StudentSpec, device: str) -> None:
    """Refuse, before any work, a fine-tuning mode this machine cannot run (`student.finetune: qlora`)."""
    if student.finetune != "qlora":
        return
    if not device.startswith("cuda"):
        raise ValueError("student.finetune: qlora needs a CUDA GPU (bitsandbytes' 4-bit NF4 kernels) and this "
                         "machine has none; use finetune: lora, or give the train stage a GPU (resources.train.gpus)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("student.finetune: qlora needs bitsandbytes (pip install bitsandbytes; the runtime image "
                         "has it); use finetune: lora without it")


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


def _distributed_args(training: TrainingSpec, student: StudentSpec, processes: int) -> dict[str, Any]:
    """SFTConfig settings for the spec's strategy; HF Trainer reads the rest from torchrun's environment.

    DDP is the Trainer's default under torchrun. FSDP shards parameters, gradients and optimizer
    state (full shard, one unit per decoder layer) through FSDP2, which also takes LoRA's mix of
    frozen and trainable parameters; the full state dict is gathered on rank 0 for saving.
    """
    if processes == 1:
        return {}
    if training.distributed.strategy != "fsdp":
        # Every parameter takes part in every step (LoRA freezes some, it never skips any).
        return {"ddp_find_unused_parameters": False}
    if student.finetune == "qlora":
        raise ValueError("student.finetune: qlora trains with training.distributed.strategy ddp or none, not fsdp "
                         "(a 4-bit base is small enough to keep whole on every GPU)")
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
            "reshard_after_forward": True,
            # Under FSDP activation checkpointing replaces the Trainer's flag, which would all-gather twice.
            "activation_checkpointing": training.gradient_checkpointing,
        },
    }


def _sft_config(output_dir: str, training: TrainingSpec, student: StudentSpec, seed: int, device: str) -> SFTConfig:
    packing, _, _ = packing_plan(training, device)
    mixed = compute_dtype(student, device)
    processes = world_size()
    fsdp = processes > 1 and training.distributed.strategy == "fsdp"
    checkpointing = training.gradient_checkpointing and not fsdp
    return SFTConfig(
        output_dir=output_dir,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=float(training.warmup_ratio),  # a float below 1 is a ratio of all steps
        weight_decay=training.weight_decay,
        per_device_train_batch_size=per_device_batch(training, processes),
        gradient_accumulation_steps=training.gradient_accumulation,
        max_length=student.max_seq_length,
        completion_only_loss=True,
        packing=packing,
        padding_free=packing,
        train_sampling_strategy="random" if packing else "group_by_length",
        bf16=mixed == torch.bfloat16,
        fp16=mixed == torch.float16,
        use_cpu=device == "cpu",
        gradient_checkpointing=checkpointing,
        # Non-reentrant checkpointing works with frozen inputs (LoRA, 4-bit bases) and with DDP.
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        **_distributed_args(training, student, processes),
    )


def _trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _quantization(student: StudentSpec, device: str) -> BitsAndBytesConfig:
    """QLoRA's 4-bit base: NF4 with double quantisation, matmuls in the compute dtype.

    Storing the 4-bit blocks in the compute dtype is what lets a wrapper shard them (peft's guide).
    """
    compute = compute_dtype(student, device)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=compute)


def _load_model(path: str, student: StudentSpec, training: TrainingSpec, device: str,
                attention: str | None) -> torch.nn.Module:
    """The base model to fine-tune, in the dtype (or 4-bit form) its fine-tuning mode trains."""
    if student.finetune == "qlora":
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=_quantization(student, device), dtype=compute_dtype(student, device),
            attn_implementation=attention, device_map={"": int(os.environ.get("LOCAL_RANK", "0"))})
        # Norms and the head in fp32, inputs that need gradients for checkpointing through frozen layers.
        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    # Full fine-tuning keeps fp32 master weights and trains under autocast; LoRA leaves
    # the base frozen, so it may sit in the compute dtype.
    weights_dtype = torch.float32 if student.finetune == "full" else resolve_dtype(student.dtype, device)
    return AutoModelForCausalLM.from_pretrained(path, dtype=weights_dtype, attn_implementation=attention)


def _by_question(trainer_class: type[SFTTrainer], seed: int) -> type[SFTTrainer]:
    """`trainer_class` drawing its rows question by question (`training.batchByQuestion`).

    The groups come from the prepared dataset's `question` column, not from the rows given:
    TRL drops rows whose completion is masked out entirely, and the sampler's indices are the
    prepared dataset's (the column itself is removed before batches are collated)."""

    class ByQuestion(trainer_class):
        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001 - Trainer's signature
            return QuestionGroupedSampler(question_groups(self.train_dataset["question"]), seed)

    ByQuestion.__name__ = f"{trainer_class.__name__}ByQuestion"
    return ByQuestion


def build_trainer(
    base_model_path: str,
    rows: list[dict],
    student: StudentSpec,
    training: TrainingSpec,
    seed: int,
    output_dir: str,
    callbacks: list[TrainerCallback] | None = None,
) -> SFTTrainer:
    """The configured trainer behind `train_sft` (its dataset already tokenized and masked)."""
    if not rows:
        raise ValueError("training needs at least one row")
    device = default_device()
    check_hardware(student, device)
    path = resolve_model(base_model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = _sft_config(output_dir, training, student, seed, device)
    _, _, attention = packing_plan(training, device)
    model = _load_model(path, student, training, device, attention)
    dataset = Dataset.from_list(
        [{"prompt": chat_prompt(tokenizer, r["prompt"]), "completion": r["completion"]}
         | ({"question": str(r["id"])} if training.batch_by_question else {}) for r in rows]
    )
    # CompletionLossTrainer applies the head after the wrapped forward has returned: under FSDP the
    # root's shards are not the model's to read then, so FSDP runs use TRL's loss.
    fsdp = world_size() > 1 and training.distributed.strategy == "fsdp"
    trainer_class = SFTTrainer if fsdp else CompletionLossTrainer
    if training.batch_by_question:
        trainer_class = _by_question(trainer_class, seed)
    return trainer_class(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(student) if student.finetune in ("lora", "qlora") else None,
        callbacks=callbacks,
    )


def _distribution(training: TrainingSpec) -> dict[str, Any]:
    """How the run was spread: strategy, processes, nodes and the collective backend (for the manifest)."""
    processes = world_size()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    return {
        "strategy": DistributedStrategy(training.distributed.strategy).value if processes > 1 else "none",
        "world_size": processes,
        "nodes": max(processes // max(per_node, 1), 1),
        "backend": torch.distributed.get_backend() if initialised else None,
    }


def _merge_adapter(base_path: str, adapter_dir: Path, student: StudentSpec, device: str) -> torch.nn.Module:
    """LoRA merged into an unquantised copy of the base: what a 4-bit or sharded run hands on.

    Merging into 4-bit weights would round the update away; peft merges into the base in its
    compute dtype instead, on the CPU, so no GPU memory is needed beside the trainer's.
    """
    base = AutoModelForCausalLM.from_pretrained(resolve_model(base_path), dtype=compute_dtype(student, device))
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def _save(trainer: SFTTrainer, base_path: str, out_dir: Path, student: StudentSpec, scratch: Path,
          save: bool) -> None:
    """Write the trained model (LoRA merged) and tokenizer to `out_dir` where `save` is true.

    Every process must call this under FSDP: gathering the full state dict is a collective.
    A 4-bit or sharded LoRA model is saved as an adapter first and merged into the plain base.
    """
    device = default_device()
    sharded = trainer.is_fsdp_enabled
    if student.finetune in ("lora", "qlora") and (sharded or student.finetune == "qlora"):
        adapter = scratch / "adapter"
        trainer.save_model(str(adapter))  # the adapter only; gathered onto rank 0 under FSDP
        if not save:
            return
        trained = _merge_adapter(base_path, adapter, student, device)
    elif sharded:
        trainer.model.config.use_cache = True
        trainer.save_model(str(out_dir))  # the full state dict, gathered; the main process writes it
        return
    elif not save:
        return
    else:
        trained = trainer.model
        if student.finetune == "lora":
            trained = trained.merge_and_unload()
    trained.config.use_cache = True  # switched off for training; the saved model is for generation
    out_dir.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(out_dir, safe_serialization=True)
    trainer.processing_class.save_pretrained(out_dir)


def train_sft(
    base_model_path: str,
    rows: list[dict],
    out_dir: Path,
    student: StudentSpec,
    training: TrainingSpec,
    seed: int,
    on_log: LogCallback | None = None,
    label: str = "train",
    every_rank_saves: bool = False,
) -> dict[str, Any]:
    """Fine-tune `base_model_path` on `rows` and save the (merged) model to `out_dir`.

    `rows` hold `prompt` (the user text, from `strategies.build_prompt`) and `completion`
    (the solution text). `on_log` receives every training log line (step, loss, learning
    rate, ...); without it, progress is shown under `label` (`console.Progress`). Returns
    counts, losses, throughput, packing and distribution for the stage manifest.

    Under torchrun every process calls this with the same arguments and they train as one
    group; only rank 0 writes `out_dir`, unless `every_rank_saves` (a model each process
    reads back next, in its own directory).
    """
    history = _LossHistory(on_log)
    device = default_device()
    check_hardware(student, device)
    with tempfile.TemporaryDirectory(prefix="siked-sft-") as scratch:
        callbacks = [history] if on_log is not None or not is_leader() else [history, _StepProgress(label)]
        trainer = build_trainer(base_model_path, rows, student, training, seed, scratch, callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)  # its raw log dicts are no console for a user
        trainable = _trainable_parameters(trainer.model)
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        _save(trainer, base_model_path, Path(out_dir), student, Path(scratch), save=every_rank_saves or is_leader())

    packing, why_not, attention = packing_plan(training, device)
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
        "per_device_batch_size": trainer.args.per_device_train_batch_size,
        "global_batch_size": trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
        * world_size(),
        "gradient_checkpointing": training.gradient_checkpointing,
        "batches": "by question" if training.batch_by_question else "random" if packing else "grouped by length",
        "packing": {"on": True, "attention": attention} if packing else {"on": False, "reason": why_not},
        "distributed": _distribution(training),
    }
