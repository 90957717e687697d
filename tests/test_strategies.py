"""Strategy tags, prompts and the parser on what models really write."""

import pytest

from siked_runtime.answers import extract_final_answer, format_number, numbers_equal, parse_number
from siked_runtime.strategies import (
    INSTRUCTION, STRATEGIES, build_prompt, find_tag, format_solution, is_finished, parse_solution,
)


@pytest.mark.parametrize("text,value", [
    ("72", 72), ("$1,234.50", 1234.5), ("1,000,000", 1e6), ("50%", 50), ("-7", -7), ("−7", -7),
    ("3/4", 0.75), ("-3/4", -0.75), ("1 1/2 cups", 1.5), ("\\frac{3}{4}", 0.75), ("\\boxed{12}", 12),
    ("18 dollars", 18), ("0.5", 0.5), (".25", 0.25), ("$ 5", 5), ("12 apples and 3 pears", 12),
    ("48 + 24 = 72", 72), ("5 m", 5), ("$18/hour", 18), ("3 km/h", 3),
])
def test_parse_number(text, value):
    assert numbers_equal(parse_number(text), value)


@pytest.mark.parametrize("text", ["", "none", "yes", "x + 1", "2*n - 1", "3x + 2", None])
def test_parse_number_none(text):
    assert parse_number(text) is None


def test_numbers_equal_tolerance():
    assert numbers_equal(0.1 + 0.2, 0.3)
    assert numbers_equal(1e9, 1e9 + 0.5)  # relative tolerance
    assert not numbers_equal(72, 73)
    assert not numbers_equal(None, 1)


def test_format_number():
    assert [format_number(v) for v in (72.0, -3.0, 0.5, 1 / 3)] == ["72", "-3", "0.5", "0.333333"]


@pytest.mark.parametrize("text,answer", [
    ("so...\nAnswer: 42", "42"),
    ("The answer is 18 dollars.", "18 dollars"),
    ("steps\n#### 1,200", "1,200"),
    ("Answer: 3\nwait, recheck\nAnswer: 4", "4"),  # the last marker wins
    ("thus \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("no marker here, 12 and 15", None),
])
def test_extract_final_answer(text, answer):
    assert extract_final_answer(text) == answer


def test_prompt_contains_instruction_and_question():
    p = build_prompt("  How many?  ")
    assert p.startswith(INSTRUCTION) and p.endswith("Question: How many?")
    assert "[pot]" in build_prompt("Q", "pot").split("\n\n")[0]
    with pytest.raises(ValueError, match="unknown strategy 'tot'"):
        build_prompt("Q", "tot")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_format_then_parse_roundtrip(strategy):
    body = "x = 3\nanswer = x * 4" if strategy == "pot" else "3 * 4 = 12."
    text = format_solution(strategy, body, 12)
    assert text.startswith(f"[{strategy}]\n")
    parsed = parse_solution(text)
    assert parsed.strategy == strategy and parsed.problem == ""
    if strategy == "pot":
        assert parsed.program == "x = 3\nanswer = x * 4\n"
    else:
        assert parsed.answer == "12"


def test_format_solution_needs_answer_for_text_strategies():
    with pytest.raises(ValueError, match="needs a final answer"):
        format_solution("cot", "reasoning")


@pytest.mark.parametrize("text,strategy,answer", [
    ("Sure! Here is my solution.\n[cot]\n2+2=4\nAnswer: 4\nHope this helps!", "cot", "4"),
    ("[CoT] 5 apples\nAnswer: $1,234", "cot", "$1,234"),
    ("[least-to-most]\nQ: a?\nA: 3\nAnswer: -3/4", "l2m", "-3/4"),
    ("[note] thinking... [l2m]\nQ: x\nA: y\nThe answer is 10.", "l2m", "10"),
    ("[tot] 12 then 15", None, "15"),                     # unknown tag: last number
    ("no tag at all, so 7 plus 8 is 15", None, "15"),
    ("Natalia sold <<48/2=24>>24\n#### 72", None, "72"),  # GSM8K reference format
    ("27.0", None, "27"),
])
def test_parse_text_solutions(text, strategy, answer):
    parsed = parse_solution(text)
    assert (parsed.strategy, parsed.answer) == (strategy, answer)


@pytest.mark.parametrize("text,program", [
    ("[pot]\n```python\nx = 2\nanswer = x + 1\n```\nThis prints 3.", "x = 2\nanswer = x + 1\n"),
    ("[pot]\nx = 2\nanswer = x + 1\nThe answer is 3.", "x = 2\nanswer = x + 1\n"),  # chatter after
    ("[PoT]\n```\ndef solution():\n    return 4\n```", "def solution():\n    return 4\n"),
    ("Here:\n```python\nanswer = 5 * 3\n```", "answer = 5 * 3\n"),             # untagged fenced program
])
def test_parse_programs(text, program):
    assert parse_solution(text).program == program


@pytest.mark.parametrize("text,problem", [
    ("", "empty completion"),
    ("[cot]\nFirst, 3 + 4 = 7. Then we", "no final 'Answer:' line"),     # truncated
    ("[pot]\n", "no parseable program"),
    ("[pot]\nx = 3\nanswer = (x +", "never assigns `answer`"),            # truncated program
    ("I don't know.", "no strategy tag and no answer"),
])
def test_parse_problems(text, problem):
    parsed = parse_solution(text)
    assert problem in parsed.problem
    assert parsed.answer is None


def test_find_tag_skips_unknown_brackets():
    assert find_tag("[a] [b] [pot] x")[0] == "pot"
    assert find_tag("array[0] = 1") == (None, 0)


def test_is_finished_only_after_full_answer_line():
    assert not is_finished("[cot]\n2 + 2 = 4\nAnswer: 4")        # line may still grow (40, 400…)
    assert is_finished("[cot]\n2 + 2 = 4\nAnswer: 4\n")
    assert not is_finished("[cot]\nAnswer:\n")
    assert not is_finished("[pot]\nanswer = 4\n")                 # programs end at EOS
