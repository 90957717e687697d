"""Batch verification: numeric and symbolic comparison, PoT outcomes, JSONL records, summaries."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from siked_runtime.verification import VERDICTS, Verdict, Verifier, as_number, format_summary, summarize, verify_records


@pytest.fixture(scope="module")
def verifier():
    with Verifier(pool_size=2, timeout=1.5, symbolic_timeout=2.0) as v:
        yield v


def check(verifier: Verifier, gold: str, completion: str) -> Verdict:
    [verdict] = verifier.verify([(gold, completion)])
    return verdict


@pytest.mark.parametrize("gold,answer", [
    ("72", "72"), ("72", "72.0"), ("27.0", "27"), ("0.3", "0.30000001"), ("0.3", "0.1 + 0.2 = 0.3"),
    ("1,234", "1234"), ("1234", "1,234"), ("1,234,567", "1234567.0"),
    ("-5", "-5"), ("-5", "−5"), ("-0.25", "-1/4"),
    ("3/4", "0.75"), ("0.75", "\\frac{3}{4}"), ("1/2", "\\frac{1}{2}"), ("1.5", "1 1/2"),
    ("$18", "18"), ("18", "$18.00"), ("18", "\\$18"), ("18", "18 dollars"), ("18", "\\boxed{18}"),
    ("50", "50%"), ("25%", "25"), ("18", "\\text{18 dollars}"),
])
def test_numeric_answers_match(verifier, gold, answer):
    verdict = check(verifier, gold, f"[cot]\nWork.\nAnswer: {answer}")
    assert verdict.verdict == "correct", verdict
    assert verdict.strategy == "cot"
    assert verdict.predicted in (answer, "18")  # the parser unwraps \\boxed{}


@pytest.mark.parametrize("gold,answer", [
    ("72", "73"), ("72", "72.01"), ("-5", "5"), ("1,234", "1235"), ("3/4", "0.7"), ("$18", "$19"),
    ("0.5", "50%"),
])
def test_numeric_answers_differ(verifier, gold, answer):
    verdict = check(verifier, gold, f"[l2m]\nQ: ?\nA: ...\nAnswer: {answer}")
    assert verdict.verdict == "wrong", verdict
    assert verdict.strategy == "l2m"


@pytest.mark.parametrize("gold,answer,expected", [
    ("1/2", "\\frac{1}{2}", "correct"),
    ("x+1", "1+x", "correct"),
    ("\\sqrt{2}", "2^{1/2}", "correct"),
    ("x^2-1", "(x-1)(x+1)", "correct"),
    ("\\frac{\\pi}{2}", "\\pi/2", "correct"),
    ("2x", "2y", "wrong"),
    ("\\sqrt{2}", "2", "wrong"),
    ("x+1", "x+2", "wrong"),
])
def test_symbolic_answers(verifier, gold, answer, expected):
    verdict = check(verifier, gold, f"[cot]\nSo\nAnswer: {answer}")
    assert verdict.verdict == expected, verdict


def test_untagged_text_uses_the_last_number(verifier):
    verdict = check(verifier, "72", "Natalia sold 48 in April and 24 in May, so 72 clips altogether.")
    assert (verdict.verdict, verdict.strategy, verdict.predicted) == ("correct", None, "72")
    assert check(verifier, "72", "The answer is 72.").verdict == "correct"


@pytest.mark.parametrize("completion,reason", [
    ("[cot]\nStep 1: 48 / 2 = 24\nStep 2: 48 + ", "truncated"),
    ("[l2m]\nQ: How many in May?\nA: 48 / 2 = 24.\nQ: How many", "truncated"),
    ("", "empty"),
    ("[pot]\nx = 5", "never assigns"),
    ("I do not know.", "no answer"),
])
def test_no_answer(verifier, completion, reason):
    verdict = check(verifier, "72", completion)
    assert verdict.verdict == "no_answer"
    assert verdict.predicted is None
    assert reason in verdict.reason


def test_pot_outcomes(verifier):
    items = [
        ("72", "[pot]\nmay = 48 / 2\nanswer = 48 + may"),
        ("72", "[pot]\n```python\ndef solution():\n    return 48 + 24\n```\nThat's it."),
        ("72", "[pot]\nprint(48 + 24)"),
        ("72", "[pot]\nanswer = 48 / 0"),
        ("72", "[pot]\nanswer = 72\nwhile True:\n    pass"),
        ("72", "[pot]\nanswer = None"),
        ("0.75", "[pot]\nfrom fractions import Fraction\nanswer = Fraction(3, 4)"),
        ("72", "[pot]\nanswer = 71"),
        ("72", "[pot]\nimport numpy as np\nanswer = np.sum([48, 24])"),
        ("72", "```python\nanswer = 48 + 24\n```"),
    ]
    start = time.monotonic()
    verdicts = verifier.verify(items)
    assert time.monotonic() - start < 1.5 + 3
    assert [v.verdict for v in verdicts] == [
        "correct", "correct", "correct", "error", "timeout", "no_answer", "correct", "wrong", "error", "correct",
    ], verdicts
    assert verdicts[3].reason == "ZeroDivisionError: division by zero"
    assert verdicts[4].reason.startswith("no result within")
    assert "not allowed" in verdicts[8].reason
    assert [v.strategy for v in verdicts[:9]] == ["pot"] * 9 and verdicts[9].strategy is None
    assert verdicts[0].predicted == "72" and verdicts[6].predicted == "0.75"


def test_missing_gold_is_an_error(verifier):
    assert check(verifier, "", "[cot]\nAnswer: 3").verdict == "error"


def test_hung_symbolic_check_times_out_and_the_checker_recovers(verifier):
    start = time.monotonic()
    verdict = check(verifier, "9", "[cot]\nAnswer: 9^{9^{9^{9}}}")
    assert verdict.verdict == "timeout", verdict
    assert time.monotonic() - start < verifier.symbolic.timeout + 4
    assert check(verifier, "x+1", "[cot]\nAnswer: 1+x").verdict == "correct"


def test_killed_symbolic_worker_is_replaced(verifier):
    assert check(verifier, "x+1", "[cot]\nAnswer: x+1+0").verdict == "correct"
    children = multiprocessing.active_children()
    assert children
    for child in children:
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
    assert check(verifier, "2x", "[cot]\nAnswer: x+x").verdict == "correct"


@pytest.mark.parametrize("text,value", [
    ("72", 72), ("$1,234.50", 1234.5), ("-3/4", -0.75), ("\\frac{3}{4}", 0.75), ("\\boxed{12}", 12),
    ("18 dollars", 18), ("50%", 50), ("\\$18", 18), ("1 1/2", 1.5),
])
def test_as_number(text, value):
    assert as_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["2x", "\\sqrt{2}", "x", "10^{3}", "1 hour 30 minutes", "3 + 4", "", None, "n"])
def test_as_number_leaves_expressions_alone(text):
    assert as_number(text) is None


def test_verify_records_and_summary(verifier):
    records = [
        {"id": "a", "answer": "72", "completion": "[cot]\nAnswer: 72", "question": "q1"},
        {"id": "b", "answer": "72", "completion": "[cot]\nAnswer: 70"},
        {"id": "c", "answer": "72", "completion": "[pot]\nanswer = 48 + 24"},
        {"id": "d", "answer": "72", "completion": "[pot]\nanswer = 1 / 0"},
        {"id": "e", "answer": "72", "completion": "[l2m]\nQ: ?\nA: 72\nQ: and"},
        {"id": "f", "answer": "72", "completion": "so it is 72"},
        {"id": "g", "answer": 72, "completion": "[l2m]\nQ: ?\nA: 72\nAnswer: 72"},
    ]
    rows = list(verify_records(iter(records), verifier, batch_size=3))
    assert [r["id"] for r in rows] == list("abcdefg")
    assert rows[0]["question"] == "q1"
    assert [r["verdict"] for r in rows] == ["correct", "wrong", "correct", "error", "no_answer", "correct", "correct"]
    assert [r["strategy"] for r in rows] == ["cot", "cot", "pot", "pot", "l2m", None, "l2m"]
    assert rows[1]["predicted"] == "70" and rows[3]["reason"].startswith("ZeroDivisionError")

    summary = summarize(rows)
    assert summary["total"] == 7
    assert summary["verdicts"] == {"correct": 4, "wrong": 1, "no_answer": 1, "timeout": 0, "error": 1}
    assert summary["strategies"] == {"cot": 2, "l2m": 2, "pot": 2, "none": 1}
    assert summary["by_strategy"]["pot"] == {"correct": 1, "wrong": 0, "no_answer": 0, "timeout": 0, "error": 1}
    assert summary["by_strategy"]["none"]["correct"] == 1
    assert summary["accuracy"] == pytest.approx(4 / 7)

    table = format_summary(summary)
    lines = table.splitlines()
    assert lines[0].split() == ["strategy", *VERDICTS, "total", "accuracy"]
    assert lines[2].split() == ["cot", "1", "1", "0", "0", "0", "2", "50.0%"]
    assert lines[-1].split() == ["all", "4", "1", "1", "0", "1", "7", "57.1%"]


def test_summary_of_nothing():
    summary = summarize([])
    assert summary["total"] == 0 and summary["accuracy"] == 0.0
    assert format_summary(summary).splitlines()[-1].split()[0] == "all"


def test_verify_records_with_its_own_verifier():
    rows = list(verify_records([{"id": 1, "answer": "4", "completion": "[pot]\nanswer = 2 + 2"}]))
    assert rows[0]["verdict"] == "correct"


def test_zero_denominators_anywhere_are_an_answer_not_a_crash(verifier):
    # "1 1/0" once raised ZeroDivisionError out of the batch, from a gold, a cot line or a program's value.
    verdicts = verifier.verify([("1 1/0", "[cot]\nAnswer: 5"), ("5", "[cot]\nAnswer: 1 1/0"),
                                ("5", "[pot]\nanswer = '2 0/0'"), ("5", "I think 1 1/0"), ("5", "[cot]\nAnswer: 5")])
    assert [v.verdict for v in verdicts][-1] == "correct"
    assert all(v.verdict in ("wrong", "no_answer", "error") for v in verdicts[:-1]), verdicts
