"""The `local` teacher: a model served by the samplers, prompted few-shot per strategy."""

from __future__ import annotations

import pytest

from siked_runtime.graph import StageKey
from siked_runtime.models import load_tokenizer, resolve_model
from siked_runtime.spec import validate_spec
from siked_runtime.stages import run_stage
from siked_runtime.storage import open_store
from siked_runtime.strategies import find_tag
from siked_runtime.teachers.local import render


def test_prompt_is_the_few_shot_conversation_in_the_teachers_template(tmp_path_factory) -> None:
    tokenizer = load_tokenizer(resolve_model("builtin:tiny-random",
                                             cache_dir=tmp_path_factory.getbasetemp() / "siked-models"))
    prompt = render(tokenizer, "Sam has 3 cats and gets 4 more. How many cats?", "l2m")
    assert prompt.count("<|im_start|>user") == 3 and prompt.count("<|im_start|>assistant") == 3
    assert prompt.index("A baker makes 24 muffins") < prompt.index("Sam has 3 cats")
    assert prompt.count("[l2m]") >= 2 and "[pot]\nmorning" not in prompt  # demonstrations of l2m only
    assert prompt.endswith("<|im_start|>assistant\n")


def test_local_teacher_stage_samples_each_strategy_and_verifies(tmp_path) -> None:
    spec = validate_spec({
        "teacher": {"kind": "local", "model": "builtin:tiny-random", "samplesPerStrategy": 2, "maxTokens": 24},
        "student": {"model": "builtin:tiny-random"},
        "datasets": {"train": {"name": "train", "source": "synthetic", "synthetic": {"n": 6, "seed": 1}},
                     "validationFromTrain": 2},
        "strategies": ["cot", "pot"],
    })
    store = open_store(str(tmp_path))
    manifest = run_stage(spec, store, StageKey("teacher"))
    assert manifest["questions"] == 4 and manifest["raw_rows"] == 4 * 2 * 2
    rows = store.read_jsonl("teacher/all.jsonl.gz")
    assert sorted({r["strategy"] for r in rows}) == ["cot", "pot"]
    assert all(r["verdict"] in ("correct", "wrong", "no_answer", "timeout", "error") for r in rows)
    # A random model writes no tags: each solution carries the strategy it was asked for.
    assert all(find_tag(r["completion"])[0] == r["strategy"] for r in rows)
    kept = store.read_jsonl("teacher/solutions.jsonl.gz")
    assert all(r["verdict"] == "correct" for r in kept) and manifest["rows"] == len(kept)


def test_vllm_teacher_without_vllm_says_what_to_install(tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)
    spec = validate_spec({
        "teacher": {"kind": "vllm", "model": "builtin:tiny-random"},
        "student": {"model": "builtin:tiny-random"},
        "datasets": {"train": {"name": "train", "source": "synthetic", "synthetic": {"n": 4, "seed": 1}},
                     "validationFromTrain": 1},
    })
    with pytest.raises(ImportError, match="vllm"):
        run_stage(spec, open_store(str(tmp_path)), StageKey("teacher"))
