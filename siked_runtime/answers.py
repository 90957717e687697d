"""Final answers as text: extraction from a line and numeric equivalence.

Pure functions, no I/O. Symbolic (non-numeric) equivalence needs sympy/math-verify,
which can hang on hostile input, so it lives in `verify.py` and runs in worker
processes; everything here is safe to call in the caller's process.

    >>> parse_number("$1,234.50")
    1234.5
    >>> numbers_equal(parse_number("3/4"), 0.75)
    True
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# A number as people write it in word-problem answers: sign, currency, thousands
# separators, decimals, a simple or mixed fraction, a trailing percent sign. Every
# repeat that could start again at the next character is bounded (spaces, a fraction's
# parts): answers are model-written text, and unbounded ones made "1,1,1,…" or a long
# run of spaces quadratic.
_NUMBER = re.compile(
    r"""
    (?:(?P<sign>[-−–])[ \t]?)?
    (?:[$€£¥][ \t]?)?
    (?:
        (?P<whole>\d{1,40})[ \t]{1,3}(?P<mnum>\d{1,40})[ \t]{0,3}/[ \t]{0,3}(?P<mden>\d{1,40})   # mixed fraction 1 1/2
      | (?P<num>\d[\d,]{0,40}(?:\.\d{1,40})?|\.\d{1,40})[ \t]{0,3}/[ \t]{0,3}(?P<den>\d[\d,]{0,40}(?:\.\d{1,40})?)  # 3/4
      | (?P<dec>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)   # 1,234.5 or 1234.5
    )
    (?P<pct>[ \t]?%)?
    """,
    re.VERBOSE,
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?[\d.]+)\s*\}\{\s*(-?[\d.]+)\s*\}")
# An expression in a single-letter variable ("x + 1", "2*n"): symbolic, not a number.
_SYMBOLIC = re.compile(r"(?<![A-Za-z])[A-Za-z][ \t]{0,3}[-+*/^][ \t]{0,3}[\w(]|[\d)][ \t]{0,3}[-+*/^][ \t]{0,3}[A-Za-z](?![A-Za-z])|\d[A-Za-z](?![A-Za-z])[ \t]{0,3}[-+*/^]")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")

# Markers that introduce a final answer, most specific first.
ANSWER_MARKERS = (
    re.compile(r"^[ \t]*answer[ \t]*[:=][ \t]*(?P<value>[^\n]*\S)[ \t]*$", re.IGNORECASE | re.MULTILINE),
    re.compile(r"^[ \t]*####[ \t]*(?P<value>[^\n]*\S)[ \t]*$", re.MULTILINE),
    re.compile(r"the (?:final )?answer is[: \t]*\n?[ \t]*(?P<value>[^\n]*[^\s.])[ \t]*\.?[ \t]*$",
               re.IGNORECASE | re.MULTILINE),
)


def _to_float(text: str) -> float:
    return float(text.replace(",", ""))


def _match_value(m: re.Match) -> float:
    if m.group("whole") is not None:
        den = int(m.group("mden"))
        value = float(int(m.group("whole")) + Fraction(int(m.group("mnum")), den)) if den else math.nan
    elif m.group("num") is not None:
        den = _to_float(m.group("den"))
        value = _to_float(m.group("num")) / den if den else math.nan
    else:
        value = _to_float(m.group("dec"))
    return -value if m.group("sign") else value


def numbers_in(text: str) -> list[float]:
    """Every number in `text`, in order, with fractions and signs resolved."""
    text = _LATEX_FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    return [v for v in (_match_value(m) for m in _NUMBER.finditer(text)) if not math.isnan(v)]


def parse_number(text: str) -> float | None:
    """The single number an answer states, or None.

    Takes the first number of the answer text ("18 dollars", "$1,234.50", "50%",
    "-3/4", "1 1/2 cups", "\\frac{3}{4}", "\\boxed{12}"), the result of a worked
    line ("48 + 24 = 72" → 72); None when there is none or the text is symbolic
    ("x + 1").
    """
    if text is None:
        return None
    boxed = _BOXED.search(text)
    if boxed:
        text = boxed.group(1)
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    if _SYMBOLIC.search(text):
        return None
    found = numbers_in(text)
    return found[0] if found else None


def numbers_equal(a: float | None, b: float | None, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """Numeric equivalence with a tolerance; None never equals anything."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def extract_final_answer(text: str) -> str | None:
    """The value after the last explicit final-answer marker, or None.

    Markers: an `Answer: …` line, GSM8K's `#### …`, "The answer is …", `\\boxed{…}`.
    """
    best: tuple[int, str] | None = None
    for marker in ANSWER_MARKERS:
        for m in marker.finditer(text):
            if best is None or m.start() >= best[0]:
                best = (m.start(), m.group("value"))
    boxed = list(_BOXED.finditer(text))
    if boxed and (best is None or boxed[-1].start() > best[0]):
        best = (boxed[-1].start(), boxed[-1].group(1))
    if best is None:
        return None
    value = best[1].strip().rstrip(".").strip()
    return value or None


def format_number(value: float) -> str:
    """A number as a final answer: integers without a decimal point, floats trimmed."""
    if math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")
