"""The claims a text solution makes, checked: its arithmetic and its comparisons.

    from siked_runtime.claims import check
    check("17 is more than 12, so the price is 4.\\nThe cost is 17 * 4 = 58.")
    # Claims(arithmetic=1, arithmetic_false=1, comparisons=1, comparisons_false=0)

A chain of thought settles each step in writing: `17 * 4 = 68`, `35 / 9 = 3 with 8 left
over`, `17 is more than 12`. A program hands the same steps to Python. When a student does
worse in text than with a program, these checks say whether its text is wrong where a
program cannot be (the arithmetic, the comparison that picks a case) or elsewhere (which
quantities it combines). Only claims between written numbers are checked; a claim whose
left side is not plain arithmetic (`the cost is 68`) is not a claim here.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import asdict, dataclass
from fractions import Fraction

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_RESULT = re.compile(rf"\s*\$?({_NUMBER})(?:\s+with\s+({_NUMBER})\s+left\s+over)?")
_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?|[-+*/()])")
_EXPRESSION_CHARS = frozenset("0123456789.,$()+-*/×÷x \t")
_WINDOW = 200          # the longest left side read back from an `=`: a step, not a page
_MAX_DIGITS = 40       # longer numbers are not a step's arithmetic (and would be slow to multiply)
_COMPARISON = re.compile(
    rf"(?<![\w.,])({_NUMBER}) is (not )?(more than|greater than|less than|fewer than|at least|at most) ({_NUMBER})"
)
_RELATIONS = {"more than": operator.gt, "greater than": operator.gt, "less than": operator.lt,
              "fewer than": operator.lt, "at least": operator.ge, "at most": operator.le}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@dataclass(frozen=True)
class Claims:
    arithmetic: int = 0
    arithmetic_false: int = 0
    comparisons: int = 0
    comparisons_false: int = 0

    @property
    def false(self) -> int:
        return self.arithmetic_false + self.comparisons_false

    def __add__(self, other: "Claims") -> "Claims":
        return Claims(self.arithmetic + other.arithmetic, self.arithmetic_false + other.arithmetic_false,
                      self.comparisons + other.comparisons, self.comparisons_false + other.comparisons_false)


def _number(text: str) -> Fraction | None:
    digits = text.replace(",", "")
    return Fraction(digits) if len(digits) <= _MAX_DIGITS else None


def _left_side(line: str, at: int) -> str | None:
    """The arithmetic written just before the `=` at `at` (`3 + 4` in "so 3 + 4 = 7"), in Python's
    spelling, or None when there is none. Reads at most `_WINDOW` characters back, so each `=` costs
    the same however long the text."""
    start = at
    while start > 0 and at - start < _WINDOW and line[start - 1] in _EXPRESSION_CHARS:
        start -= 1
    if start > 0 and at - start >= _WINDOW:
        return None
    text = line[start:at].replace("$", "").replace("×", "*").replace("÷", "/")
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", text)
    tokens, end = [], 0
    for match in _TOKEN.finditer(text):
        if match.start() != end:  # something else between tokens (a stray comma, an `x` of a word)
            tokens = []
        tokens.append(match[1])
        end = match.end()
    if text[end:].strip():
        return None
    # Keep the last stretch that alternates operands and operators: "2019 3 + 4" is "3 + 4".
    for i in range(len(tokens) - 1, 0, -1):
        if (tokens[i - 1][0].isdigit() or tokens[i - 1] == ")") and (tokens[i][0].isdigit() or tokens[i] == "("):
            tokens = tokens[i:]
            break
    while tokens and tokens[0] in "+*/)":
        tokens = tokens[1:]
    operands = sum(t[0].isdigit() for t in tokens)
    if operands < 2 or any(t[0].isdigit() and len(t) > _MAX_DIGITS for t in tokens):
        return None
    return " ".join(tokens)


def _evaluate(expression: str) -> Fraction | None:
    """Exact value of +, -, *, / over written numbers; None for anything else (or a division by zero)."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        return value(tree.body)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def _rounds_to(exact: Fraction, written: str) -> bool:
    """Whether `written` is `exact`, or `exact` rounded to as many decimals as `written` has."""
    decimals = len(written.partition(".")[2])
    if decimals == 0:
        return exact == _number(written)
    return abs(exact - _number(written)) <= Fraction(1, 2 * 10 ** decimals)


def _arithmetic_claim(line: str, at: int) -> bool | None:
    """Whether the claim around the `=` at `at` holds; None when there is no arithmetic claim there."""
    expression = _left_side(line, at)
    result = _RESULT.match(line, at + 1)
    if expression is None or result is None or _number(result[1]) is None:
        return None
    if result[2] is not None:  # "35 / 9 = 3 with 8 left over"
        parts = re.fullmatch(r"(\d+) / (\d+)", expression)
        left_over = _number(result[2])
        if parts is None or int(parts[2]) == 0 or left_over is None:
            return None
        return divmod(int(parts[1]), int(parts[2])) == (_number(result[1]), left_over)
    exact = _evaluate(expression)
    return None if exact is None else _rounds_to(exact, result[1])


def check(text: str) -> Claims:
    """Count the arithmetic and comparison claims in `text` and how many of them are false."""
    arithmetic = arithmetic_false = 0
    for line in text.splitlines():
        for equals in re.finditer("=", line):
            holds = _arithmetic_claim(line, equals.start())
            if holds is not None:
                arithmetic += 1
                arithmetic_false += not holds
    comparisons = comparisons_false = 0
    for match in _COMPARISON.finditer(text):
        a, negated, relation, b = match.groups()
        a, b = _number(a), _number(b)
        if a is None or b is None:
            continue
        comparisons += 1
        comparisons_false += _RELATIONS[relation](a, b) == bool(negated)
    return Claims(arithmetic, arithmetic_false, comparisons, comparisons_false)


def tally(rows: list[dict]) -> dict:
    """The claims of verified answers ({completion, verdict}) added up, and how many of the wrong ones
    hold a false claim: {"arithmetic", "arithmetic_false", "comparisons", "comparisons_false", "wrong",
    "wrong_with_false_claim"}."""
    total, wrong, wrong_false = Claims(), 0, 0
    for row in rows:
        claims = check(row.get("completion") or "")
        total = total + claims
        if row.get("verdict") != "correct":
            wrong += 1
            wrong_false += claims.false > 0
    return asdict(total) | {"wrong": wrong, "wrong_with_false_claim": wrong_false}


def markdown_cells(counts: dict) -> str:
    """A `tally` as three table cells: arithmetic false, comparisons false, wrong answers with a false claim."""
    def share(false: int, checked: int) -> str:
        return f"{false / checked:.2f} ({false}/{checked})" if checked else "–"

    return " | ".join([share(counts["arithmetic_false"], counts["arithmetic"]),
                       share(counts["comparisons_false"], counts["comparisons"]),
                       share(counts["wrong_with_false_claim"], counts["wrong"])])
