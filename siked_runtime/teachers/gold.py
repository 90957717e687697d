"""The offline teacher for real datasets: solutions rewritten from the datasets' own annotations.

    from siked_runtime.datasets import load_records
    from siked_runtime.teachers import gold

    rows = list(gold.teach(load_records("../shared/data/gsm8k/train.jsonl")))
    # {"id": "gsm8k-train-00000", "answer": "72", "strategy": "pot", "completion": "[pot]\\nmay = 48 / 2\\n..."}

What each dataset gives:

* GSM8K: `cot` is the reference solution without its `<<48/2=24>>` calculator
  notes; `pot` is a program built from those notes (each note a variable, later
  notes referring to earlier results by name); `l2m` comes from the socratic
  variant's sub-questions (`Q: sub-question` / `A: step`).
* SVAMP, MultiArith, ASDiv: `pot` and `cot` from the equation or formula.
* Synthetic problems: delegated to the oracle teacher (the graph is the annotation).

A strategy is skipped for a question when its annotation cannot be turned into a
solution, and every program is evaluated here (arithmetic only, no `exec`) and
kept only if it reaches the dataset's answer, so the teacher never writes a pot
solution it knows to be wrong.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import operator
import re
from typing import Iterable, Iterator

from siked_runtime.answers import format_number, numbers_equal, numbers_in, parse_number
from siked_runtime.strategies import STRATEGIES, format_solution
from siked_runtime.teachers import oracle

# --- safe arithmetic -----------------------------------------------------------------------------

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def evaluate(node: ast.AST, names: dict[str, float] | None = None) -> float:
    """Value of an arithmetic expression tree: numbers, + - * / // % **, parentheses and known names."""
    if isinstance(node, ast.Expression):
        return evaluate(node.body, names)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and names is not None and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = evaluate(node.left, names), evaluate(node.right, names)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](evaluate(node.operand, names))
    raise ValueError(f"not plain arithmetic: {ast.dump(node)[:80]}")


# Calculator-note spellings that are not Python: 6000 x 12, 3×4, 2^3, $1,200, 150%.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def parse_arithmetic(text: str) -> ast.Expression | None:
    """An expression tree for calculator-style arithmetic, or None when it is not plain arithmetic."""
    cleaned = text.strip().replace("$", "").replace("×", "*").replace("÷", "/").replace("^", "**").replace("−", "-")
    cleaned = re.sub(r"(?<=[\d)\s])[xX](?=[\s\d(])", "*", cleaned)
    cleaned = _THOUSANDS.sub("", cleaned)
    cleaned = _PERCENT.sub(r"(\1 / 100)", cleaned)
    if not cleaned:
        return None
    try:
        tree = ast.parse(cleaned, mode="eval")
        evaluate(tree)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    return tree


def _integral_constants(tree: ast.AST) -> ast.AST:
    """5.0 → 5, so programs read like the numbers in the question."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float) and node.value.is_integer():
            node.value = int(node.value)
    return tree


# --- GSM8K chain of thought and least-to-most ----------------------------------------------------

_NOTE = re.compile(r"<<([^<>]*)>>")


def strip_notes(text: str) -> str:
    return "\n".join(line.rstrip() for line in _NOTE.sub("", text).splitlines() if line.strip())


def gsm8k_cot(record: dict) -> str | None:
    solution = record["meta"].get("solution", "")
    return format_solution("cot", strip_notes(solution), record["answer"]) if solution.strip() else None


def gsm8k_l2m(record: dict) -> str | None:
    pairs = record["meta"].get("subquestions")
    if not pairs:
        return None
    body = "\n".join(f"Q: {q.strip()}\nA: {strip_notes(step)}" for q, step in pairs)
    return format_solution("l2m", body, record["answer"])


# --- GSM8K program of thought --------------------------------------------------------------------

_STOPWORDS = {
    "a", "an", "the", "and", "or", "of", "in", "for", "to", "is", "are", "was", "were", "per", "each", "every", "more",
    "less", "than", "at", "on", "by", "so", "which", "that", "this", "it", "he", "she", "they", "his", "her", "their",
    "total", "times", "left", "from", "with", "as", "be", "will", "would", "can", "if", "then", "after", "before",
    "all", "altogether", "over", "since", "because", "now", "there", "remaining", "x",
}
_RESERVED = set(dir(builtins)) | {"answer", "solution"}


def _name_after(solution: str, start: int, end: int) -> str:
    """A variable name from the words after a result ("…=<<16-3-4=9>>9 duck eggs" → duck_eggs).

    `start` is where the calculation's result is introduced (a note, or "= 24"),
    `end` where the text after the shown result begins.
    """
    rest = solution[end:]
    if solution[:start].rstrip().endswith("$") or solution[start:end].lstrip("=< ").startswith("$") \
            or re.match(r"\s*dollars\b", rest):
        return "dollars"
    words = re.match(r"\s*([A-Za-z]+)(?:\s+([A-Za-z]+))?", rest)
    if not words:
        return ""
    kept = []
    for word in (w for w in words.groups() if w):
        if word.lower() in _STOPWORDS or len(word) < 3:
            break
        kept.append(word.lower())
    return "_".join(kept)


class _ReferToEarlier(ast.NodeTransformer):
    """Replace a literal equal to an earlier note's result with that note's variable."""

    def __init__(self, results: list[tuple[str, float]], question_numbers: list[float]):
        self.results = results
        self.question_numbers = question_numbers

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return node
        # A number stated in the question is a given, not a result, even when equal to one.
        if any(numbers_equal(value, q) for q in self.question_numbers):
            return node
        for name, result in reversed(self.results):
            if numbers_equal(value, result):
                return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)
        return node


# A calculation written in the text without a note ("48+30=78 pounds", "$21 − $19 = $2").
_NUM = r"\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?"
_INLINE = re.compile(
    rf"(?<![\w.])(?P<expr>\(?\s*{_NUM}(?:\s*[-+*/x×÷−]\s*\(?\s*{_NUM}\s*\)?)+)"
    r"\s*=\s*(?P<shown>\$?-?\d[\d,]*(?:\.\d+)?)(?![\d/]|\s+\d+/)"
)


def _notes(solution: str) -> list[tuple[ast.Expression, float, str]]:
    """(expression, shown result, name hint) per calculation, in the order they appear.

    Calculator notes come first in trust; calculations written only in the text
    count when they are plain arithmetic whose result is what the text says.
    """
    found: list[tuple[int, ast.Expression, float, str]] = []
    for match in _NOTE.finditer(solution):
        expr_text, sep, shown = match.group(1).rpartition("=")
        tree, shown_tree = parse_arithmetic(expr_text), parse_arithmetic(shown)
        if not sep or tree is None or shown_tree is None:
            continue
        after = match.end() + len(shown.strip()) if solution[match.end():].startswith(shown.strip()) else match.end()
        found.append((match.start(), tree, evaluate(shown_tree), _name_after(solution, match.start(), after)))
    # Blank out each note and the result shown after it, so "48/2 = <<48/2=24>>24" is not counted twice.
    masked = re.sub(r"<<[^<>]*>>\s*\$?[\d.,]*", lambda m: " " * len(m.group(0)), solution)
    for match in _INLINE.finditer(masked):
        tree, shown_tree = parse_arithmetic(match.group("expr")), parse_arithmetic(match.group("shown"))
        if tree is None or shown_tree is None or not numbers_equal(evaluate(tree), evaluate(shown_tree)):
            continue
        hint = _name_after(solution, match.start("shown"), match.end("shown"))
        found.append((match.start(), tree, evaluate(shown_tree), hint))
    return [item[1:] for item in sorted(found, key=lambda item: item[0])]


def _unique_name(hint: str, position: int, taken: set[str]) -> str:
    base = hint if hint and hint.isidentifier() and not keyword.iskeyword(hint) and hint not in _RESERVED else f"step{position}"
    name, suffix = base, 2
    while name in taken:
        name, suffix = f"{base}{suffix}", suffix + 1
    taken.add(name)
    return name


def gsm8k_program(record: dict) -> str | None:
    """A program from the calculator notes whose `answer` equals the record's answer, or None."""
    gold = parse_number(record["answer"])
    notes = _notes(record["meta"].get("solution", ""))
    if gold is None or not notes:
        return None
    # The answer is the last note that computes it; later notes are side remarks.
    answer_at = max((i for i, (_, shown, _) in enumerate(notes) if numbers_equal(shown, gold)), default=None)
    if answer_at is None:
        return None
    question_numbers = numbers_in(record["question"])
    taken: set[str] = set()
    results: list[tuple[str, float]] = []
    values: dict[str, float] = {}
    steps: list[tuple[str, ast.AST]] = []
    for position, (tree, shown, hint) in enumerate(notes[: answer_at + 1], start=1):
        tree = _integral_constants(_ReferToEarlier(results, question_numbers).visit(tree))
        value = evaluate(tree, values)
        name = "answer" if position == answer_at + 1 else _unique_name(hint, position, taken)
        values[name] = value
        steps.append((name, tree))
        # A note whose shown result is rounded cannot stand for later uses of that rounded number.
        if numbers_equal(value, shown):
            results.append((name, value))
    if not numbers_equal(values["answer"], gold):
        return None
    return "\n".join(f"{name} = {ast.unparse(tree)}" for name, tree in _used_steps(steps))


def _used_steps(steps: list[tuple[str, ast.AST]]) -> list[tuple[str, ast.AST]]:
    """The steps `answer` depends on, in order."""
    needed = {"answer"}
    for name, tree in reversed(steps):
        if name in needed:
            needed.update(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))
    return [(name, tree) for name, tree in steps if name in needed]


# --- equations (SVAMP, MultiArith, ASDiv) --------------------------------------------------------

_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}


def _equation_tree(equation: str) -> ast.Expression | None:
    """The arithmetic side of "( 76.0 - 25.0 )", "X=(5.0+3.0)" or "7+2=9"."""
    text = equation.strip()
    if "=" in text:
        left, _, right = text.partition("=")
        text = right if re.fullmatch(r"\s*[A-Za-z]\s*", left) else left
    tree = parse_arithmetic(text)
    return _integral_constants(tree) if tree is not None else None


def _equation_steps(node: ast.AST, lines: list[str]) -> float:
    """Evaluate bottom-up, writing one "a op b = c." line per operation."""
    if isinstance(node, ast.Expression):
        return _equation_steps(node.body, lines)
    if isinstance(node, ast.BinOp):
        left, right = _equation_steps(node.left, lines), _equation_steps(node.right, lines)
        value = _BINARY[type(node.op)](left, right)
        lines.append(f"{format_number(left)} {_SYMBOL[type(node.op)]} {format_number(right)} = {format_number(value)}.")
        return value
    return evaluate(node)


def equation_solutions(record: dict, equation: str, strategies: Iterable[str]) -> list[tuple[str, str]]:
    """(strategy, completion) for cot and pot from an equation that reaches the record's answer."""
    tree = _equation_tree(equation)
    gold = parse_number(record["answer"]) if record["meta"].get("numeric", True) else None
    if tree is None or gold is None or not numbers_equal(evaluate(tree), gold):
        return []
    written = []
    if "cot" in strategies:
        lines: list[str] = []
        _equation_steps(tree, lines)
        if lines:
            written.append(("cot", format_solution("cot", "\n".join(lines), record["answer"])))
    if "pot" in strategies:
        written.append(("pot", format_solution("pot", f"answer = {ast.unparse(tree)}")))
    return written


# --- the teacher ---------------------------------------------------------------------------------


def _gsm8k_solutions(record: dict, strategies: Iterable[str]) -> list[tuple[str, str]]:
    written = []
    for strategy in strategies:
        if strategy == "cot":
            completion = gsm8k_cot(record)
        elif strategy == "l2m":
            completion = gsm8k_l2m(record)
        else:
            program = gsm8k_program(record)
            completion = format_solution("pot", program) if program else None
        if completion:
            written.append((strategy, completion))
    return written


def solutions(record: dict, strategies: Iterable[str] = STRATEGIES) -> list[dict]:
    """Solution rows for the strategies this record's annotations support (possibly none)."""
    strategies = tuple(strategies)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; expected some of {', '.join(STRATEGIES)}")
    meta = record.get("meta", {})
    if meta.get("graph"):
        return oracle.solutions(record, strategies)
    if meta.get("dataset") == "gsm8k" or "solution" in meta:
        written = _gsm8k_solutions(record, strategies)
    elif meta.get("equation"):
        written = equation_solutions(record, meta["equation"], strategies)
    elif meta.get("equations"):
        written = equation_solutions(record, meta["equations"][0], strategies)
    elif meta.get("formula"):
        written = equation_solutions(record, meta["formula"], strategies)
    else:
        written = []
    return [{"id": record["id"], "answer": record["answer"], "strategy": s, "completion": c} for s, c in written]


def teach(records: Iterable[dict], strategies: Iterable[str] = STRATEGIES) -> Iterator[dict]:
    strategies = tuple(strategies)
    for record in records:
        yield from solutions(record, strategies)
