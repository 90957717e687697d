"""Offline teachers: oracle (synthetic graphs) and gold (dataset annotations) write correct, parseable solutions."""

from __future__ import annotations


import pytest

from siked_runtime.answers import numbers_equal, parse_number
from siked_runtime.datasets import load_records
from siked_runtime.strategies import STRATEGIES, parse_solution
from siked_runtime.synthetic import generate
from siked_runtime.teachers import OFFLINE_TEACHERS, gold, oracle

from shared_data import FIXTURES, shared  # noqa: E402


def run_program(program: str) -> float:
    # Only programs these teachers generated from trusted annotations run here; model output goes to the sandbox.
    allowed = {"math"}

    def importer(name, *args):
        if name not in allowed:
            raise ImportError(name)
        return __import__(name, *args)

    namespace: dict = {"__builtins__": {"min": min, "max": max, "__import__": importer}}
    exec(compile(program, "<teacher>", "exec"), namespace)
    return namespace["answer"]


def assert_correct(row: dict) -> None:
    parsed = parse_solution(row["completion"])
    assert parsed.strategy == row["strategy"], row
    assert not parsed.problem, (parsed.problem, row)
    value = run_program(parsed.program) if row["strategy"] == "pot" else parse_number(parsed.answer)
    assert numbers_equal(value, parse_number(row["answer"])), row


# --- oracle --------------------------------------------------------------------------------------


def test_oracle_writes_every_strategy_correctly_for_every_family():
    problems = generate(240, seed=21)
    rows = list(oracle.teach(problems))
    assert len(rows) == 3 * len(problems)
    for row in rows:
        assert set(row) == {"id", "answer", "strategy", "completion"}
        assert_correct(row)


@pytest.mark.parametrize("family", ["piecewise", "round_up"])
def test_new_families_verify_correct_for_every_strategy(family):
    verify = pytest.importorskip("siked_runtime.verification")
    problems = generate(60, seed=31, families=[family])
    rows = list(oracle.teach(problems))
    for row in rows:
        assert_correct(row)
    with verify.Verifier(pool_size=2) as verifier:
        verdicts = verifier.verify([(r["answer"], r["completion"]) for r in rows])
    assert [v.verdict for v in verdicts] == ["correct"] * len(rows)
    assert {r["strategy"] for r in rows} == {"cot", "l2m", "pot"}


def test_rules_differ_in_form_between_text_and_program():
    # Text settles the case that applies; the program states the rule for every case.
    graph = [
        {"id": "v1", "op": "if_gt", "args": [14, 10, 2, 3], "value": 2, "text": "the price of one pen", "name": "price",
         "inputs": {"0": "pens", "1": "threshold", "2": "bulk_price", "3": "regular_price"}},
        {"id": "v2", "op": "mul", "args": [14, "v1"], "value": 28, "text": "the cost of the pens", "name": "cost",
         "inputs": {"0": "pens"}},
        {"id": "v3", "op": "ceildiv", "args": ["v2", 5], "value": 6, "text": "the number of bags", "name": "bags"},
    ]
    assert oracle.write_cot(graph) == (
        "14 is more than 10, so the price of one pen is 2.\n"
        "The cost of the pens is 14 * 2 = 28.\n"
        "28 / 5 = 5 with 3 left over, so the number of bags is 6."
    )
    assert oracle.write_l2m(graph).splitlines()[1] == "A: 14 is more than 10, so it is 2."
    program = oracle.write_pot(graph)
    assert program == (
        "import math\npens = 14\nthreshold = 10\nbulk_price = 2\nregular_price = 3\n"
        "if pens > threshold:\n    price = bulk_price\nelse:\n    price = regular_price\n"
        "cost = pens * price\nanswer = math.ceil(cost / 5)"
    )
    assert run_program(program) == 6
    below = [{**graph[0], "args": [9, 10, 2, 3], "value": 3}]
    assert oracle.write_cot(below) == "9 is not more than 10, so the price of one pen is 3."


def test_oracle_formats():
    problem = generate(1, seed=0)[0]  # Sofia: 35, Zara 7 fewer, together
    cot, l2m, pot = (row["completion"] for row in oracle.solutions(problem))
    assert cot == (
        "[cot]\n"
        "The number of stamps Zara has is 35 - 7 = 28.\n"
        "The number of stamps Sofia and Zara have together is 35 + 28 = 63.\n"
        "Answer: 63"
    )
    assert l2m == (
        "[l2m]\n"
        "Q: What is the number of stamps Zara has?\nA: 35 - 7 = 28.\n"
        "Q: What is the number of stamps Sofia and Zara have together?\nA: 35 + 28 = 63.\n"
        "Answer: 63"
    )
    assert pot == "[pot]\nzara_stamps = 35 - 7\nanswer = 35 + zara_stamps"


def test_oracle_variable_names_are_distinct_and_safe():
    graph = [
        {"id": "v1", "op": "mul", "args": [2, 3], "value": 6, "text": "x", "name": "sum"},
        {"id": "v2", "op": "pct", "args": ["v1", 50], "value": 3, "text": "y", "name": "sum"},
        {"id": "v3", "op": "add", "args": ["v1", "v2"], "value": 9, "text": "z", "name": "2 for"},
        {"id": "v4", "op": "div", "args": ["v3", 3], "value": 3, "text": "w"},
    ]
    program = oracle.write_pot(graph)
    assert program == "n_sum = 2 * 3\nn_sum_2 = n_sum * 50 / 100\nn_2_for = n_sum + n_sum_2\nanswer = n_2_for / 3"
    assert run_program(program) == 3


def test_oracle_strategy_subset_and_errors():
    problem = generate(1, seed=1)[0]
    assert [r["strategy"] for r in oracle.solutions(problem, ("pot",))] == ["pot"]
    with pytest.raises(ValueError, match="unknown strategy 'tot'"):
        oracle.solutions(problem, ("tot",))
    with pytest.raises(ValueError, match="only solves synthetic problems"):
        oracle.solutions({"id": "gsm8k-test-00000", "question": "q", "answer": "1", "meta": {}})


def test_oracle_solutions_pass_the_verifier():
    verify = pytest.importorskip("siked_runtime.verification")
    rows = list(oracle.teach(generate(30, seed=8)))
    with verify.Verifier(pool_size=2) as verifier:
        verdicts = verifier.verify([(r["answer"], r["completion"]) for r in rows])
    assert [v.verdict for v in verdicts] == ["correct"] * len(rows)


# --- gold on GSM8K -------------------------------------------------------------------------------


def test_gold_gsm8k_first_training_question():
    record = load_records(str(shared("gsm8k/train.jsonl")), limit=1)[0]
    rows = {r["strategy"]: r["completion"] for r in gold.solutions(record)}
    assert set(rows) == {"cot", "pot"}  # no sub-questions, so no l2m
    assert rows["cot"] == (
        "[cot]\nNatalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\nAnswer: 72"
    )
    assert rows["pot"] == "[pot]\nclips = 48 / 2\nanswer = 48 + clips"


def test_gold_gsm8k_socratic_least_to_most():
    record = load_records(str(shared("gsm8k/test_socratic.jsonl")), limit=1)[0]
    rows = {r["strategy"]: r["completion"] for r in gold.solutions(record)}
    assert rows["l2m"] == (
        "[l2m]\n"
        "Q: How many eggs does Janet sell?\nA: Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "Q: How much does Janet make at the farmers' market?\nA: She makes 9 * 2 = $18 every day at the farmer’s market.\n"
        "Answer: 18"
    )


def test_gold_gsm8k_test_set_rates():
    records = load_records(str(shared("gsm8k/test_socratic.jsonl")))
    rows = list(gold.teach(records))
    written = {s: sum(r["strategy"] == s for r in rows) for s in STRATEGIES}
    assert written["cot"] == written["l2m"] == len(records)
    assert written["pot"] >= 0.95 * len(records)
    for row in rows:
        assert_correct(row)


def make_gsm8k(question: str, solution: str, answer: str) -> dict:
    return {"id": "t", "question": question, "answer": answer, "meta": {"dataset": "gsm8k", "solution": solution, "numeric": True}}


def test_gold_program_from_messy_calculator_notes():
    record = make_gsm8k(
        "A worker earns $6,000 a month. He gets a 30% raise and works 12 months. How much does he earn?",
        "The raise is 6000 x 30/100 = $<<6,000 x 30%=1800>>1800.\n"
        "His new pay is 6000+1800 = $<<6000+1800=7800>>7800.\n"
        "He earns 7800 x 12 = $<<7800×12=93600>>93,600 in a year.\n"
        "That is 93600/12=<<93600/12=7800>>7800 a month.",
        "93600",
    )
    program = gold.gsm8k_program(record)
    # Notes after the one that reaches the answer are side remarks and are dropped.
    assert program == "dollars = 6000 * (30 / 100)\ndollars2 = 6000 + dollars\nanswer = dollars2 * 12"
    assert run_program(program) == 93600


def test_gold_program_keeps_question_numbers_literal_and_skips_what_it_cannot_build():
    record = make_gsm8k(
        "Tom has 12 apples and buys 12 more. How many does he have?",
        "He has 6*2=<<6*2=12>>12 apples.\nHe has 12+12=<<12+12=24>>24 apples.",
        "24",
    )
    # 12 is stated in the question, so it is not replaced by the variable that happens to equal it.
    assert gold.gsm8k_program(record) == "answer = 12 + 12"
    no_notes = make_gsm8k("q", "Let x be the number. Then 5x = 80, so x = 16.", "16")
    assert gold.gsm8k_program(no_notes) is None
    wrong = make_gsm8k("q", "It is 2+2=<<2+2=4>>4.", "5")
    assert gold.gsm8k_program(wrong) is None
    assert [r["strategy"] for r in gold.solutions(wrong)] == ["cot"]


def test_gold_program_uses_inline_text_calculations():
    record = make_gsm8k(
        "A puppy weighs 6 pounds, doubles, then gains 30 pounds. How heavy is it?",
        "It doubles to 6*2=<<6*2=12>>12 pounds.\nThen it reaches 12+30=42 pounds.",
        "42",
    )
    assert gold.gsm8k_program(record) == "pounds = 6 * 2\nanswer = pounds + 30"


def test_parse_arithmetic_cleans_calculator_spellings():
    cases = {"6000 x 12": 72000, "$1,200 + 5": 1205, "150%*80": 120, "2^3": 8, "3×4÷2": 6, "21 − 19": 2, ".5*4": 2}
    for text, value in cases.items():
        tree = gold.parse_arithmetic(text)
        assert tree is not None and gold.evaluate(tree) == value, text
    for text in ("x+1", "__import__('os')", "1:2", "15>12", "", "2**999"):
        assert gold.parse_arithmetic(text) is None, text


# --- gold on equations ---------------------------------------------------------------------------


def test_gold_svamp_from_equations():
    records = load_records(str(shared("svamp/SVAMP.json")))
    rows = list(gold.teach(records))
    assert sum(r["strategy"] == "pot" for r in rows) >= 0.99 * len(records)
    assert sum(r["strategy"] == "cot" for r in rows) >= 0.99 * len(records)
    assert not any(r["strategy"] == "l2m" for r in rows)
    for row in rows:
        assert_correct(row)
    first = {r["strategy"]: r["completion"] for r in gold.solutions(records[0])}
    assert first == {"cot": "[cot]\n76 - 25 = 51.\nAnswer: 51", "pot": "[pot]\nanswer = 76 - 25"}


def test_gold_multiarith_and_asdiv_fixtures():
    multiarith = load_records(str(FIXTURES / "multiarith_sample.json"))
    first = {r["strategy"]: r["completion"] for r in gold.solutions(multiarith[0])}
    assert first == {"cot": "[cot]\n9 * 12 = 108.\n108 - 31 = 77.\nAnswer: 77", "pot": "[pot]\nanswer = 9 * 12 - 31"}
    for row in gold.teach(multiarith):
        assert_correct(row)
    asdiv = load_records(str(FIXTURES / "asdiv_sample.xml"))
    by_id = {}
    for row in gold.teach(asdiv):
        assert_correct(row)
        by_id.setdefault(row["id"], []).append(row["strategy"])
    # Non-numeric answers (a ratio, "yes") get no solutions.
    assert by_id == {"asdiv-nluds-0001": ["cot", "pot"], "asdiv-nluds-0002": ["cot", "pot"]}


def test_gold_delegates_synthetic_problems_to_the_oracle():
    problems = generate(6, seed=2)
    assert list(gold.teach(problems)) == list(oracle.teach(problems))


def test_offline_teachers_by_name():
    problems = generate(2, seed=0)
    assert list(OFFLINE_TEACHERS["oracle"](problems, ("cot",))) == oracle.solutions(problems[0], ("cot",)) + oracle.solutions(problems[1], ("cot",))
    assert set(OFFLINE_TEACHERS) == {"gold", "oracle"}
