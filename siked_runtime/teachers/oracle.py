"""The programmatic teacher for synthetic problems: every strategy written from the computation graph.

    from siked_runtime.synthetic import generate
    from siked_runtime.teachers import oracle

    rows = list(oracle.teach(generate(500, seed=0), strategies=("cot", "l2m", "pot")))
    # {"id": "synth-0-0", "answer": "41", "strategy": "l2m", "completion": "[l2m]\\nQ: ...\\nA: ...\\nAnswer: 41"}

One step per graph node, in graph order, for all three strategies, so the
strategies differ in form and not in content:

* `cot`: "The number of stickers Maya buys is 3 * 12 = 36." per node;
* `l2m`: "Q: What is the number of stickers Maya buys?" / "A: 3 * 12 = 36." per node;
* `pot`: one variable per node named after the quantity, the last one `answer`.
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


def write_cot(graph: list[dict]) -> str:
    values = {n["id"]: format_number(n["value"]) for n in graph}
    return "\n".join(
        f"{_sentence_case(n['text'])} is {_expression(n, values)} = {values[n['id']]}." for n in graph
    )


def write_l2m(graph: list[dict]) -> str:
    values = {n["id"]: format_number(n["value"]) for n in graph}
    return "\n".join(f"Q: What is {n['text']}?\nA: {_expression(n, values)} = {values[n['id']]}." for n in graph)


_RESERVED = set(dir(builtins)) | {"answer", "solution"}


def _variable_names(graph: list[dict]) -> dict[str, str]:
    """A distinct, valid Python name per node, from its `name` (or `text`)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for position, node in enumerate(graph, start=1):
        base = re.sub(r"[^a-z0-9]+", "_", str(node.get("name") or node.get("text") or "").lower()).strip("_")
        base = "_".join(base.split("_")[:4]) or f"step{position}"
        if base[0].isdigit() or keyword.iskeyword(base) or base in _RESERVED:
            base = f"n_{base}"
        name, suffix = base, 2
        while name in taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(name)
        names[node["id"]] = name
    return names


def write_pot(graph: list[dict]) -> str:
    names = _variable_names(graph)
    lines = [f"{names[n['id']]} = {_expression(n, names)}" for n in graph[:-1]]
    lines.append(f"answer = {_expression(graph[-1], names)}")
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
