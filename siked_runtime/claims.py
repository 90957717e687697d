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
from dataclasses import dataclass
from fractions import Fraction

_NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?"
_OP = r"[-+*/×÷x]"
_TERM = rf"\(?\s*\$?(?:{_NUMBER})\s*\)?"
_ARITHMETIC = re.compile(
    rf"(?<![\w.,$])((?:{_TERM}\s*{_OP}\s*)+{_TERM})\s*=\s*(\$?)({_NUMBER})"
    rf"(?:\s+with\s+({_NUMBER})\s+left\s+over)?"
)
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


def _number(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def _evaluate(expression: str) -> Fraction | None:
    """Exact value of +, -, *, / over written numbers; None for anything else (or a division by zero)."""
    source = re.sub(r"(?<=\d),(?=\d{3})", "", expression).replace("×", "*").replace("÷", "/").replace("$", "")
    source = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", source)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        return value(tree.body)
    except (ValueError, ZeroDivisionError):
        return None


def _rounds_to(exact: Fraction, written: str) -> bool:
    """Whether `written` is `exact`, or `exact` rounded to as many decimals as `written` has."""
    decimals = len(written.partition(".")[2])
    if decimals == 0:
        return exact == _number(written)
    return abs(exact - _number(written)) <= Fraction(1, 2 * 10 ** decimals)


def _division_parts(expression: str) -> tuple[Fraction, Fraction] | None:
    """(a, b) when the expression is one division `a / b`."""
    parts = re.fullmatch(rf"\s*({_NUMBER})\s*[/÷]\s*({_NUMBER})\s*", expression)
    return (_number(parts[1]), _number(parts[2])) if parts else None


def check(text: str) -> Claims:
    """Count the arithmetic and comparison claims in `text` and how many of them are false."""
    arithmetic = arithmetic_false = 0
    for match in _ARITHMETIC.finditer(text):
        expression, _, result, left_over = match.groups()
        claimed = _number(result)
        if left_over is not None:
            parts = _division_parts(expression)
            if parts is None or parts[1] == 0:
                continue
            a, b = parts
            holds = a.denominator == b.denominator == 1 and divmod(int(a), int(b)) == (claimed, _number(left_over))
        else:
            exact = _evaluate(expression)
            if exact is None:
                continue
            holds = _rounds_to(exact, result)
        arithmetic += 1
        arithmetic_false += not holds
    comparisons = comparisons_false = 0
    for match in _COMPARISON.finditer(text):
        a, negated, relation, b = match.groups()
        holds = _RELATIONS[relation](_number(a), _number(b)) != bool(negated)
        comparisons += 1
        comparisons_false += not holds
    return Claims(arithmetic, arithmetic_false, comparisons, comparisons_false)
