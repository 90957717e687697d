"""An `SFTTrainer` whose loss scores only the completion tokens on devices without Triton.

TRL computes the SFT loss with a fused, chunked LM head. On CUDA it projects only the
positions that carry a label; elsewhere (CPU) it projects every position, prompt and
padding included, in fp32, and also computes the entropy over the whole vocabulary for its
metrics. With SmolLM2-135M on 2 CPU cores that head is over half of every training step,
while a completion is about a third of a sequence's tokens. `CompletionLossTrainer` runs the
backbone, projects only the positions whose next token is a completion token (under the
trainer's autocast), and takes the same mean negative log-likelihood, so it trains the
same objective as TRL's loss with less than half the work:

    trainer = CompletionLossTrainer(model=..., args=SFTConfig(...), train_dataset=..., ...)

The backbone runs through the wrapped model's forward (under DDP, the wrapper's, which
synchronises gradients), asked for its hidden states and one position's logits. On Triton
devices, for models whose head needs logit soft-capping or scaling, and for evaluation
calls that ask for outputs, it defers to TRL; FSDP runs use TRL's loss (`training.py`).
"""

from __future__ import annotations

import importlib.util

import torch
from peft import PeftModel
from trl import SFTTrainer


def _triton_device(device: torch.device) -> bool:
    """Where TRL's fused head scores only labelled positions itself (its Triton kernel)."""
    return device.type in ("cuda", "xpu") and importlib.util.find_spec("triton") is not None


def _supports_compact_head(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    return (
        text is not None
        and getattr(text, "final_logit_softcapping", None) is None
        and getattr(text, "logit_scale", None) in (None, 1.0)
        and getattr(model, "base_model", None) is not None
        and model.get_output_embeddings() is not None
    )


class CompletionLossTrainer(SFTTrainer):
    """`SFTTrainer`, with the LM head applied to completion positions only (see the module docstring)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        causal_lm = self.accelerator.unwrap_model(model)
        if isinstance(causal_lm, PeftModel):
            causal_lm = causal_lm.get_base_model()
        if (
            return_outputs
            or "labels" not in inputs
            or "attention_mask" not in inputs
            or _triton_device(inputs["labels"].device)
            or not _supports_compact_head(causal_lm)
        ):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        mode = "train" if model.training else "eval"
        backbone_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        targets = inputs["labels"][:, 1:]
        mask = targets != -100
        # Through the wrapped model's own forward (DDP's, which is what synchronises the gradients), with the
        # head applied to one position only; the final hidden states come back as the last `hidden_states`.
        outputs = model(**backbone_inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        hidden = outputs.hidden_states[-1]
        with self.accelerator.autocast():
            logits = causal_lm.get_output_embeddings()(hidden[:, :-1][mask]).float()
        log_probs = logits.log_softmax(dim=-1)
        picked = log_probs.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -picked.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._log_metrics(mode, log_probs.detach(), targets[mask], inputs["attention_mask"])
        return loss

    def _log_metrics(self, mode: str, log_probs: torch.Tensor, targets: torch.Tensor,
                     attention_mask: torch.Tensor) -> None:
        """The metrics TRL's loss logs: entropy and token accuracy over completion tokens, tokens seen."""
        with torch.no_grad():
            valid = max(int(targets.numel()), 1)
            entropy = -(log_probs.exp() * log_probs).sum(dim=-1).sum()
            correct = (log_probs.argmax(dim=-1) == targets).sum()
        self._metrics[mode]["entropy"].append(float(entropy) / valid)
        self._metrics[mode]["mean_token_accuracy"].append(float(correct) / valid)
        if mode == "train":
            self._total_train_tokens += int(attention_mask.sum())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
