"""The programmatic teacher for synthetic problems: every strategy written from the computation graph.

    from siked_runtime.synthetic import generate
    from siked_runtime.teachers import oracle

    rows = list(oracle.teach(generate(500, seed=0), strategies=("cot", "l2m", "pot")))
    # {"id": "synth-0-0", "answer": "41", "strategy": "l2m", "completion": "[l2m]\\nQ: ...\\nA: ...\\nAnswer: 41"}

One step per graph node, in graph order, for all three strategies:

* `cot`: "The number of stickers Maya buys is 3 * 12 = 36." per node;
* `l2m`: "Q: What is the number of stickers Maya buys?" / "A: 3 * 12 = 36." per node;
* `pot`: one variable per node named after the quantity, the last one `answer`.

Rules with a branch or a rounding (the `piecewise` and `round_up` families) differ in form
and length the way a model teacher's solutions do: text settles the one case that applies
("14 is more than 10, so the price of one pen is 2."; "23 / 6 = 3 with 5 left over, so 4"),
while the program states the givens as named variables and the rule for every case
(`if … else`, `max`, `min`, `math.ceil`, `//`).
"""

from __future__ import annotations

import builtins
import keyword
import re
from typing import Iterable, Iterator

from siked_runtime.answers import format_number
from siked_runtime.strategies import STRATEGIES, format_solution

_SYMBOLS = {"add": " + ", "sub": " - ", "mul": " * ", "div": " / "}


def _expression(node: dict, show: dict[str, str]) -> str:
    """The node's computation with each argument rendered by `show` (values for text, names for code)."""
    args = [show[a] if isinstance(a, str) else format_number(a) for a in node["args"]]
    if node["op"] == "pct":
        return f"{args[0]} * {args[1]} / 100"
    if node["op"] not in _SYMBOLS:
        raise ValueError(f"node {node['id']}: unknown op {node['op']!r}")
    return _SYMBOLS[node["op"]].join(args)


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


_RULES = ("ceildiv", "floordiv", "over", "lesser", "if_gt", "if_ge")


def _settle(node: dict, numbers: dict[str, int], subject: str) -> str:
    """How text settles a rule: the case that applies, then `subject` is its value."""
    a, b, *rest = [numbers[x] if isinstance(x, str) else x for x in node["args"]]
    op, value, fmt = node["op"], format_number(node["value"]), format_number
    if op in ("ceildiv", "floordiv"):
        q, r = divmod(a, b)
        left = f" with {fmt(r)} left over" if r else ""
        return f"{fmt(a)} / {fmt(b)} = {fmt(q)}{left}, so {subject} is {value}"
    if op in ("if_gt", "if_ge"):
        holds = a > b if op == "if_gt" else a >= b
        case = (("is more than", "is not more than") if op == "if_gt" else ("is at least", "is less than"))[not holds]
        return f"{fmt(a)} {case} {fmt(b)}, so {subject} is {value}"
    if a > b:
        tail = f"{fmt(a)} - {fmt(b)} = {value}" if op == "over" else value
        return f"{fmt(a)} is more than {fmt(b)}, so {subject} is {tail}"
    return f"{fmt(a)} is not more than {fmt(b)}, so {subject} is {value}"


def write_cot(graph: list[dict]) -> str:
    values = {n["id"]: format_number(n["value"]) for n in graph}
    numbers = {n["id"]: n["value"] for n in graph}
    return "\n".join(
        _sentence_case(_settle(n, numbers, n["text"])) + "." if n["op"] in _RULES
        else f"{_sentence_case(n['text'])} is {_expression(n, values)} = {values[n['id']]}." for n in graph
    )


def write_l2m(graph: list[dict]) -> str:
    values = {n["id"]: format_number(n["value"]) for n in graph}
    numbers = {n["id"]: n["value"] for n in graph}
    return "\n".join(
        f"Q: What is {n['text']}?\nA: "
        + (_sentence_case(_settle(n, numbers, "it")) + "." if n["op"] in _RULES
           else f"{_expression(n, values)} = {values[n['id']]}.")
        for n in graph
    )


_RESERVED = set(dir(builtins)) | {"answer", "solution"}


def _identifier(text: str, fallback: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    base = "_".join(base.split("_")[:4]) or fallback
    if base[0].isdigit() or keyword.iskeyword(base) or base in _RESERVED:
        base = f"n_{base}"
    name, suffix = base, 2
    while name in taken:
        name, suffix = f"{base}_{suffix}", suffix + 1
    taken.add(name)
    return name


def _variable_names(graph: list[dict]) -> dict[str, str]:
    """A distinct, valid Python name per node, from its `name` (or `text`)."""
    taken: set[str] = set()
    return {node["id"]: _identifier(str(node.get("name") or node.get("text") or ""), f"step{position}", taken)
            for position, node in enumerate(graph, start=1)}


def _input_names(graph: list[dict], taken: set[str]) -> tuple[dict[tuple[str, int], str], list[str]]:
    """Names for the literals a node names in `inputs`: {(node id, position): name}, and the
    assignments that state them, in order of first use (one variable per name and value)."""
    names: dict[tuple[str, int], str] = {}
    by_given: dict[tuple[str, object], str] = {}
    lines = []
    for node in graph:
        for position, wanted in sorted((int(k), v) for k, v in (node.get("inputs") or {}).items()):
            value = node["args"][position]
            if isinstance(value, str):
                continue
            key = (wanted, value)
            if key not in by_given:
                by_given[key] = _identifier(wanted, "given", taken)
                lines.append(f"{by_given[key]} = {format_number(value)}")
            names[(node["id"], position)] = by_given[key]
    return names, lines


def _statement(node: dict, target: str, show) -> list[str]:
    """The lines computing one node into `target`; `show(position)` renders an argument."""
    op, n = node["op"], len(node["args"])
    a, b = show(0), show(1)
    if op in ("if_gt", "if_ge"):
        compare = ">" if op == "if_gt" else ">="
        return [f"if {a} {compare} {b}:", f"    {target} = {show(2)}", "else:", f"    {target} = {show(3)}"]
    if op == "ceildiv":
        return [f"{target} = math.ceil({a} / {b})"]
    if op == "floordiv":
        return [f"{target} = {a} // {b}"]
    if op == "over":
        return [f"{target} = max({a} - {b}, 0)"]
    if op == "lesser":
        return [f"{target} = min({a}, {b})"]
    if op == "pct":
        return [f"{target} = {a} * {b} / 100"]
    if op not in _SYMBOLS:
        raise ValueError(f"node {node['id']}: unknown op {op!r}")
    return [f"{target} = " + _SYMBOLS[op].join(show(i) for i in range(n))]


def write_pot(graph: list[dict]) -> str:
    names = _variable_names(graph)
    given, lines = _input_names(graph, set(names.values()))
    if any(n["op"] == "ceildiv" for n in graph):
        lines.insert(0, "import math")
    for node in graph:
        target = "answer" if node is graph[-1] else names[node["id"]]

        def show(position: int, node=node) -> str:
            arg = node["args"][position]
            if isinstance(arg, str):
                return names[arg]
            return given.get((node["id"], position), format_number(arg))

        lines += _statement(node, target, show)
    return "\n".join(lines)


WRITERS = {"cot": write_cot, "l2m": write_l2m, "pot": write_pot}


def solutions(record: dict, strategies: Iterable[str] = STRATEGIES) -> list[dict]:
    """One solution row per strategy for a synthetic record (one with `meta.graph`)."""
    graph = record.get("meta", {}).get("graph")
    if not graph:
        raise ValueError(
            f"record {record.get('id')!r} has no meta.graph: the oracle teacher only solves synthetic problems "
            "(use the gold teacher for datasets with reference solutions)"
        )
    rows = []
    for strategy in strategies:
        if strategy not in WRITERS:
            raise ValueError(f"unknown strategy {strategy!r}; expected some of {', '.join(STRATEGIES)}")
        completion = format_solution(strategy, WRITERS[strategy](graph), record["answer"])
        rows.append({"id": record["id"], "answer": record["answer"], "strategy": strategy, "completion": completion})
    return rows


def teach(records: Iterable[dict], strategies: Iterable[str] = STRATEGIES) -> Iterator[dict]:
    strategies = tuple(strategies)
    for record in records:
        yield from solutions(record, strategies)
