"""P2: SFT tokens/s — our trainer against a padded HF `Trainer`, and MFU on a GPU.

    python -m benchmarks p2 [--quick]

Both sides fine-tune SmolLM2-135M with the quickstart's LoRA, batch size and autocast dtype
on its oracle-teacher rows:

* ours: `training.build_trainer` (TRL SFT, length-grouped batches, completion-only loss that
  projects only completion positions on CPU; packed padding-free batches on GPUs with FlashAttention);
* baseline: `transformers.Trainer` on rows tokenized with `padding="max_length"` to the
  student's `maxSeqLength`, labels from `DataCollatorForLanguageModeling` — what a user writes.

tokens/s counts real (non-pad) tokens, over the steps after the first (warm-up) one.
"""

from __future__ import annotations

import tempfile
import time

import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from benchmarks.report import Measurement, ratio_met
from benchmarks.student import quickstart_spec, teacher_rows
from siked_runtime.models import (
    chat_prompt,
    default_device,
    resolve_dtype,
    resolve_model,
)
from siked_runtime.training import _lora_config, build_trainer, compute_dtype

GOAL = ">=1.5"
# Dense bf16 peak FLOP/s by GPU name, for MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


class _Counting:
    """A data collator that records the real tokens of every batch it builds."""

    def __init__(self, collate):
        self.collate, self.tokens = collate, []

    def __call__(self, examples):
        batch = self.collate(examples)
        mask = batch.get("attention_mask")
        self.tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch


class _StepTimes(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def _measure(trainer, counting: _Counting, times: _StepTimes) -> dict:
    trainer.data_collator = counting
    trainer.add_callback(times)
    trainer.train()
    steps = len(times.times)
    # Batches are collated in step order (the loader may build one ahead): step i used batch i.
    tokens = sum(counting.tokens[1:steps])
    seconds = times.times[-1] - times.times[0]
    return {"tokens": tokens, "seconds": seconds, "steps": steps - 1, "tokens_per_s": tokens / seconds}


def run_ours(rows, spec, steps: int, scratch: str) -> dict:
    training = spec.training.model_copy(update={"max_steps": steps + 1})
    trainer = build_trainer(spec.student.model, rows, spec.student, training, seed=0, output_dir=scratch)
    return _measure(trainer, _Counting(trainer.data_collator), _StepTimes())


def run_baseline(rows, spec, steps: int, scratch: str) -> dict:
    student, device = spec.student, default_device()
    path = resolve_model(student.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [chat_prompt(tokenizer, r["prompt"]) + r["completion"] + tokenizer.eos_token for r in rows]
    encoded = tokenizer(texts, padding="max_length", max_length=student.max_seq_length, truncation=True)
    dataset = Dataset.from_dict(dict(encoded))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(student.dtype, device))
    model = get_peft_model(model, _lora_config(student))
    mixed = compute_dtype(student, device)
    args = TrainingArguments(
        output_dir=scratch, max_steps=steps + 1, per_device_train_batch_size=spec.training.batch_size,
        learning_rate=spec.training.learning_rate, bf16=mixed == torch.bfloat16, fp16=mixed == torch.float16,
        use_cpu=device == "cpu", logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        seed=0, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    return _measure(trainer, _Counting(trainer.data_collator), _StepTimes())


def mfu(tokens_per_s: float, parameters: int) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return tokens_per_s * 6 * parameters / peak if peak else None


def run(device: str, quick: bool) -> list[Measurement]:
    steps = 3 if quick else 10
    spec = quickstart_spec()
    rows = teacher_rows(spec)
    with tempfile.TemporaryDirectory(prefix="siked-bench-sft-") as scratch:
        ours = run_ours(rows, spec, steps, scratch)
        base = run_baseline(rows, spec, steps, scratch)
    context = {"model": "SmolLM2-135M-Instruct LoRA", "device": device, "n": steps,
               "batch_size": spec.training.batch_size, "max_seq_length": spec.student.max_seq_length,
               "autocast": str(compute_dtype(spec.student, default_device())),
               "seconds": {"ours": round(ours["seconds"], 2), "baseline": round(base["seconds"], 2)},
               "tokens": {"ours": ours["tokens"], "baseline": base["tokens"]}}
    if device.startswith("cuda"):
        parameters = AutoModelForCausalLM.from_pretrained(resolve_model(spec.student.model)).num_parameters()
        context["mfu"] = {"ours": mfu(ours["tokens_per_s"], parameters), "baseline": mfu(base["tokens_per_s"], parameters)}
    m = Measurement("P2", "SFT real tokens/s, build_trainer vs padded HF Trainer", ours["tokens_per_s"],
                    base["tokens_per_s"], "tokens/s", GOAL, False, context)
    m.met = ratio_met(m.ratio, GOAL)
    return [m]
