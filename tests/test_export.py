"""The export stage: `final/model/` in Hugging Face format, its model card and `siked.json`."""

from __future__ import annotations

import json

import pytest
import yaml

from siked_runtime.spec import load_manifest
from siked_runtime.stages.export import PROMPT_TEMPLATE, model_card_text, prompt_format
from siked_runtime.strategies import INSTRUCTION, STRATEGIES, build_prompt
from tests.smoke_cli import ROOT, smoke_cli_run


class _Tokenizer:
    chat_template = "{{ messages }}"


def _report() -> dict:
    it = {"teacher_rows": 270, "self_rows": 0, "alpha": None, "train_loss": 0.91, "regressed": False,
          "strategy_shares": {"cot": 0.1, "l2m": 0.2, "pot": 0.7},
          "train_strategy_shares": {"cot": 1 / 3, "l2m": 1 / 3, "pot": 1 / 3}}
    return {
        "baseline": {"validation": 0.0, "synthetic-test": 0.017},
        "teacher": {"validation": 1.0, "synthetic-test": 1.0},
        "iterations": [
            {**it, "iteration": 0, "eval": {"validation": 0.1, "synthetic-test": 0.05}},
            {**it, "iteration": 1, "alpha": 0.834, "self_rows": 53, "eval": {"validation": 0.3, "synthetic-test": 0.25}},
        ],
        "best_iteration": 1, "stop_reason": "reached the last iteration (1)", "finished": True,
    }


def test_prompt_format_rebuilds_the_training_prompt():
    fmt = prompt_format(_Tokenizer())
    question = "Tom has 3 boxes of 12 eggs. How many eggs?"
    assert fmt["prompt_template"].format(instruction=fmt["instruction"], question=question) == build_prompt(question)
    assert fmt["instruction"] == INSTRUCTION and fmt["chat_template"] is True and fmt["system_message"] == ""
    assert [s["tag"] for s in fmt["strategies"]] == [f"[{s}]" for s in STRATEGIES]
    assert fmt["pot"] == {"answer_variable": "answer", "execution": "sandbox"}


def test_model_card_states_everything_a_user_needs():
    spec = load_manifest(ROOT / "examples" / "quickstart.yaml").spec
    fmt = prompt_format(_Tokenizer())
    card = model_card_text("quickstart", spec, _report(), fmt, "<chat>" + build_prompt("<q>") + "</chat>")
    assert "# quickstart: a siked student" in card
    assert "`builtin:smollm2-135m-instruct` (HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "method `siked`" in card and "policy `all`" in card and "Teacher**: `oracle`" in card
    assert "LoRA (rank 16, alpha 32" in card and "; 30 optimizer steps per iteration," in card
    longer = spec.model_copy(update={"training": spec.training.model_copy(update={"iteration0_steps": 60})})
    card0 = model_card_text("quickstart", longer, _report(), fmt, "<chat>" + build_prompt("<q>") + "</chat>")
    assert "; 60 optimizer steps in iteration 0, then 30 optimizer steps per iteration," in card0
    assert "`synthetic-train`: 120 synthetic word problems (seed 1; piecewise, round_up, big_arithmetic)" in card
    assert PROMPT_TEMPLATE.format(instruction=INSTRUCTION, question="<the question>") in card
    assert "empty system turn" in card
    # iterations with α: teacher data only at 0, the realised share after
    assert "| 0 | 270 | 0 | 1.000 (teacher data only) | 0.910 | 0.100 |" in card
    assert "| 1 | 270 | 53 | 0.834 | 0.910 | 0.300 |" in card
    # accuracy per set, with the untrained model and the teacher beside the chosen iteration
    assert "| | validation | synthetic-test |" in card
    assert "| untrained base model | 0.000 | 0.017 |" in card
    assert "| iteration 1 (**this model**) | 0.300 | 0.250 |" in card
    assert "| teacher | 1.000 | 1.000 |" in card
    assert "| `[pot]` program-of-thought | 0.333 | 0.700 |" in card
    assert "How `[pot]` answers are executed" in card and "sandbox" in card


@pytest.mark.slow
def test_exported_model_is_a_hugging_face_directory_with_card_and_prompt_format():
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    run = smoke_cli_run()
    assert run.returncode == 0, run.stderr[-3000:]
    model_dir = run.dir / "final" / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "README.md",
                 "siked.json", "siked-spec.yaml"):
        assert (model_dir / name).is_file(), name
    manifest = json.loads((run.dir / "final" / "manifest.json").read_text())
    assert manifest["model_card"].endswith("final/model/README.md")

    card = ModelCard.load(model_dir / "README.md")
    assert card.data.library_name == "transformers" and "siked" in card.data.tags
    assert "# smoke: a siked student" in card.text
    assert f"This is iteration {manifest['best_iteration']} of the run" in card.text

    fmt = json.loads((model_dir / "siked.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert fmt == prompt_format(tokenizer)
    generation = GenerationConfig.from_pretrained(model_dir)
    assert generation.do_sample is False and generation.max_new_tokens == 24
    assert generation.eos_token_id == tokenizer.eos_token_id

    # The card's own snippet runs as written against the directory.
    snippet = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(snippet.replace('"path/to/this/directory"', repr(str(model_dir))), namespace)  # noqa: S102 - our card
    assert isinstance(namespace["solution"], str)
    assert isinstance(AutoModelForCausalLM.from_pretrained(model_dir).config.num_hidden_layers, int)
    assert yaml.safe_load((model_dir / "siked-spec.yaml").read_text())["student"]["model"] == "builtin:tiny-random"
