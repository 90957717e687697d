"""`siked solve`: an exported student answers questions with the prompt it was trained on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from siked_runtime.cli import main
from siked_runtime.models import chat_prompt
from siked_runtime.samplers import TransformersSampler
from siked_runtime.solve import NotAStudent, Student, format_answer, student_dir
from siked_runtime.strategies import build_prompt
from tests.smoke_cli import ROOT, smoke_cli_run

QUESTION = "A baker makes 48 rolls and sells half of them. How many rolls are left?"


def test_a_directory_without_siked_json_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotAStudent, match="has no siked.json"):
        student_dir(tmp_path)
    assert main(["solve", str(tmp_path), QUESTION]) == 2
    err = capsys.readouterr().err
    assert err.startswith("siked solve: ") and "has no siked.json" in err and "final/" in err


def test_a_missing_directory_is_refused(tmp_path, capsys):
    assert main(["solve", str(tmp_path / "nope"), QUESTION]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_format_answer_names_strategy_solution_and_how_the_answer_came():
    text = format_answer({"question": "q?", "strategy": "pot", "solution": "[pot]\nanswer = 2 * 12\n",
                          "answer": "24", "how": "computed", "problem": None})
    assert text.splitlines() == ["Question: q?", "Strategy: pot (program-of-thought)", "Solution:", "  [pot]",
                                 "  answer = 2 * 12", "Answer:   24 (computed by running the program in the sandbox)"]


@pytest.fixture(scope="module")
def exported():
    run = smoke_cli_run()
    assert run.returncode == 0, run.stderr[-3000:]
    return run.dir / "final"


@pytest.mark.slow
def test_solve_prompts_and_generates_as_the_samplers_did_in_training(exported):
    with Student(exported) as student:
        assert student.directory == exported / "model"  # a run's final/ is enough
        assert student.prompt(QUESTION) == chat_prompt(student.sampler.tokenizer, build_prompt(QUESTION))
        [answer] = student.solve([QUESTION])
    sampler = TransformersSampler(str(exported / "model"), dtype="float32")
    [[expected]] = sampler.generate([chat_prompt(sampler.tokenizer, build_prompt(QUESTION))], max_new_tokens=24)
    assert answer["solution"] == expected
    assert answer["question"] == QUESTION and set(answer) >= {"strategy", "answer", "how", "problem"}


@pytest.mark.slow
def test_a_question_gets_the_same_answer_alone_and_among_others(exported):
    others = ["What is 3 times 4?", "Tom has 7 apples and eats 2. Then he buys 15 more. How many apples does he have?",
              "A train travels 60 miles an hour for 3 hours and then 45 miles an hour for 2 hours. How far does it go?"]
    with Student(exported) as student:
        assert student.sampler.model.dtype == torch.float32
        [alone] = student.solve([QUESTION])
        batched = student.solve(others + [QUESTION])
    assert batched[-1] == alone


@pytest.mark.slow
def test_pot_programs_run_in_the_sandbox_not_here(exported):
    with Student(exported) as student:
        good = student._answer("q", "[pot]\nsold = 48 / 2\nanswer = 48 - sold\n")
        hostile = student._answer("q", "[pot]\nimport os\nanswer = len(os.listdir('/'))\n")
        words = student._answer("q", "[cot]\n48 / 2 = 24.\nAnswer: 24")
    assert (good["strategy"], good["answer"], good["how"]) == ("pot", "24", "computed")
    assert hostile["answer"] is None and hostile["problem"].startswith("program error")
    assert (words["answer"], words["how"]) == ("24", "stated")


@pytest.mark.slow
def test_solve_command_file_and_json(exported, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "a", "question": QUESTION}) + "\n"
                         + json.dumps({"id": "b", "question": "What is 3 times 4?"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "siked_runtime.cli", "solve", str(exported), "--file",
                           str(questions), "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"] and rows[1]["question"] == "What is 3 times 4?"
    proc = subprocess.run([sys.executable, "-m", "siked_runtime.cli", "solve", str(exported), QUESTION],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Question: {QUESTION}\nStrategy: ") and "\nAnswer:   " in proc.stdout
