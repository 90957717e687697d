"""Synthetic problems: determinism, well-formed graphs that evaluate to the answer, questions that state their numbers."""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

import pytest

from siked_runtime.synthetic import FAMILIES, FAVOURED_STRATEGY, MIN_STEPS, WORDS, evaluate, generate, make_problem

PROBLEMS = generate(800, seed=11)


def test_generation_is_deterministic_and_prefix_stable():
    assert generate(60, seed=4) == generate(60, seed=4)
    assert generate(60, seed=4)[:25] == generate(25, seed=4)
    assert [p["question"] for p in generate(30, seed=4)] != [p["question"] for p in generate(30, seed=5)]
    assert make_problem(4, 7, "compare") == make_problem(4, 7, "compare")


def test_pinned_problem_does_not_drift():
    # Datasets are regenerated from (seed, n) on other machines; a change here changes every run's data.
    problem = make_problem(0, 0, "short_story")
    assert problem["id"] == "synth-0-0"
    assert problem["question"] == (
        "Sofia has 35 stamps. Zara has 7 fewer stamps than Sofia. How many stamps do Sofia and Zara have together?"
    )
    assert problem["answer"] == "63"
    assert [(n["op"], n["args"]) for n in problem["meta"]["graph"]] == [("sub", [35, 7]), ("add", [35, "v1"])]
    assert generate(1, seed=0)[0] == problem


def test_records_have_the_documented_shape():
    for index, p in enumerate(PROBLEMS):
        assert p["id"] == f"synth-11-{index}"
        assert set(p) == {"id", "question", "answer", "meta"}
        assert set(p["meta"]) == {"family", "graph", "steps"}
        assert p["meta"]["steps"] == len(p["meta"]["graph"])
        assert p["question"].endswith("?")
        for node in p["meta"]["graph"]:
            assert set(node) - {"inputs"} == {"id", "op", "args", "value", "text", "name"}
            assert node["name"].isidentifier() and node["text"]
            for position, name in node.get("inputs", {}).items():
                assert isinstance(node["args"][int(position)], int) and name.isidentifier()


def test_families_come_round_robin_with_their_minimum_steps():
    counts = Counter(p["meta"]["family"] for p in PROBLEMS)
    assert counts == {family: 100 for family in FAMILIES}
    assert [p["meta"]["family"] for p in PROBLEMS[: len(FAMILIES)]] == list(FAMILIES)
    for p in PROBLEMS:
        assert p["meta"]["steps"] >= MIN_STEPS[p["meta"]["family"]]
    assert set(FAVOURED_STRATEGY) == set(FAMILIES)
    assert set(FAVOURED_STRATEGY.values()) == {"cot", "l2m", "pot"}


def test_every_graph_evaluates_to_its_answer_with_integers_only():
    for p in PROBLEMS:
        graph = p["meta"]["graph"]
        values = evaluate(graph)
        for node in graph:
            assert values[node["id"]] == node["value"], (p["id"], node)
            assert isinstance(node["value"], int) and node["value"] >= 0
        assert str(graph[-1]["value"]) == p["answer"]


def test_graphs_are_ordered_and_minimal():
    for p in PROBLEMS:
        graph = p["meta"]["graph"]
        assert [n["id"] for n in graph] == [f"v{i}" for i in range(1, len(graph) + 1)]
        used = {a for n in graph for a in n["args"] if isinstance(a, str)}
        # Every node but the answer feeds a later node; refs point backwards only.
        assert used == {n["id"] for n in graph[:-1]}
        for position, node in enumerate(graph):
            assert all(int(a[1:]) <= position for a in node["args"] if isinstance(a, str))


# Quantities a question states in words rather than digits.
IMPLICIT = {0, 2, 3, 4, 5, 12, 60, 100, 1000}


def test_questions_state_the_numbers_their_graphs_use():
    for p in PROBLEMS:
        stated = {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", p["question"])}
        words = {n for n, w in WORDS.items() if re.search(rf"\b{w}\b", p["question"], re.IGNORECASE)}
        for node in p["meta"]["graph"]:
            for arg in node["args"]:
                if isinstance(arg, int):
                    assert arg in stated or arg in words or arg in IMPLICIT, (p["question"], node)


def test_families_differ_in_the_arithmetic_they_need():
    by_family: dict[str, list[dict]] = {}
    for p in PROBLEMS:
        by_family.setdefault(p["meta"]["family"], []).append(p)

    def share(family: str, predicate) -> float:
        return sum(map(predicate, by_family[family])) / len(by_family[family])

    big_numbers = lambda p: any(n["value"] >= 10000 for n in p["meta"]["graph"])  # noqa: E731
    assert share("big_arithmetic", big_numbers) > 0.8
    assert share("short_story", big_numbers) == 0
    assert share("long_chain", lambda p: p["meta"]["steps"] >= 5) == 1
    assert share("unit_rates", lambda p: any(n["op"] == "pct" or 60 in n["args"] or 1000 in n["args"] for n in p["meta"]["graph"])) > 0.7
    assert share("equal_groups", lambda p: any(w in p["question"] for w in ("dozen", "half", "twice", "quarter", "third", "pairs", "weekday"))) == 1

    def ops(p):
        return {n["op"] for n in p["meta"]["graph"]}

    assert share("piecewise", lambda p: bool(ops(p) & {"if_gt", "if_ge", "over", "lesser"})) == 1
    assert share("round_up", lambda p: bool(ops(p) & {"ceildiv", "floordiv"})) == 1
    assert share("piecewise", big_numbers) == share("round_up", big_numbers) == 0
    assert 0.3 < share("round_up", lambda p: "ceildiv" in ops(p)) < 0.9  # both roundings occur


def test_piecewise_rules_fall_on_both_sides_of_their_threshold():
    sides = Counter()
    for p in PROBLEMS:
        for node in p["meta"]["graph"]:
            if node["op"] in ("if_gt", "over"):
                a, b = (p_value(p, x) for x in node["args"][:2])
                sides["above" if a > b else "at or below"] += 1
    assert min(sides.values()) > 0.3 * sum(sides.values()), sides


def p_value(problem: dict, arg) -> int:
    return next(n["value"] for n in problem["meta"]["graph"] if n["id"] == arg) if isinstance(arg, str) else arg


def test_questions_vary():
    assert len({p["question"] for p in PROBLEMS}) >= 0.97 * len(PROBLEMS)
    openings = Counter(p["question"].split()[0] for p in PROBLEMS)
    assert len(openings) > 25


def test_family_selection_and_errors():
    only = generate(10, seed=2, families=["long_chain", "compare"])
    assert [p["meta"]["family"] for p in only] == ["long_chain", "compare"] * 5
    with pytest.raises(ValueError, match="unknown synthetic families"):
        generate(3, seed=0, families=["algebra"])
    with pytest.raises(ValueError, match="must not be empty"):
        generate(3, seed=0, families=[])
    assert generate(0, seed=0) == []


def test_evaluate_checks_references_and_ops():
    graph = [{"id": "v1", "op": "pct", "args": [80, 25], "value": 20}, {"id": "v2", "op": "div", "args": ["v1", 8], "value": 2.5}]
    assert evaluate(graph)["v2"] == Fraction(5, 2)
    with pytest.raises(ValueError, match="before it is defined"):
        evaluate([{"id": "v1", "op": "add", "args": ["v2", 1], "value": 0}])
    rules = [{"id": "v1", "op": "ceildiv", "args": [23, 6], "value": 4}, {"id": "v2", "op": "floordiv", "args": [23, 6], "value": 3},
             {"id": "v3", "op": "over", "args": [4, 6], "value": 0}, {"id": "v4", "op": "lesser", "args": [9, 6], "value": 6},
             {"id": "v5", "op": "if_gt", "args": [6, 6, 1, 2], "value": 2}, {"id": "v6", "op": "if_ge", "args": [6, 6, 1, 2], "value": 1}]
    assert [evaluate(rules)[n["id"]] for n in rules] == [4, 3, 0, 6, 2, 1]
    with pytest.raises(ValueError, match="needs 4 arguments"):
        evaluate([{"id": "v1", "op": "if_gt", "args": [1, 2], "value": 0}])
    with pytest.raises(ValueError, match="unknown op"):
        evaluate([{"id": "v1", "op": "pow", "args": [2, 3], "value": 8}])
