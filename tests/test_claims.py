"""The written claims of a text solution, checked: arithmetic and comparisons."""

from __future__ import annotations

import pytest

from siked_runtime.claims import Claims, check
from siked_runtime.synthetic import generate
from siked_runtime.teachers.oracle import solutions


@pytest.mark.parametrize("text, expected", [
    ("The cost is 17 * 4 = 68.", Claims(1, 0)),
    ("The cost is 17 * 4 = 58.", Claims(1, 1)),
    ("5324 + 6161 + 4977 + 7979 + 5795 = 30236.", Claims(1, 0)),
    ("6,570 - 46 = 6,524 bags", Claims(1, 0)),
    ("(3 + 4) * 2 = 14 and 3 + 4 * 2 = 14", Claims(2, 1)),        # precedence is Python's
    ("$4 * 3 = $12", Claims(1, 0)),
    ("<<48/2=24>>", Claims(1, 0)),                                # GSM8K's calculator annotations
    ("24 / 7 = 3.43", Claims(1, 0)),                              # rounded to the digits written
    ("24 / 7 = 3.42", Claims(1, 1)),
    ("23 / 6 = 4", Claims(1, 1)),                                 # a whole number claims exactness
    ("23 / 6 = 3 with 5 left over, so 4", Claims(1, 0)),
    ("35 / 9 = 3 with 7 left over", Claims(1, 1)),
    ("35 / 9 = 4 with 8 left over", Claims(1, 1)),
    ("5 / 0 = 0", Claims(0, 0)),                                  # no value to compare with: not counted
    ("17 is more than 12, so the price is 4.", Claims(0, 0, 1, 0)),
    ("1 is more than 3, so", Claims(0, 0, 1, 1)),
    ("8 is not more than 8, so", Claims(0, 0, 1, 0)),
    ("15 is at least 17", Claims(0, 0, 1, 1)),
    ("15 is less than 17", Claims(0, 0, 1, 0)),
    ("version 1.2 = 3; the cost is 68; Answer: 12", Claims(0, 0)),
    ("pens = 17\nanswer = pens * 4", Claims(0, 0)),               # a program states no written result
    ("In 2019, 3 + 4 = 7.", Claims(1, 0)),                        # the expression starts after the year
    ("Step 2: 3 + 4 = 8", Claims(1, 1)),
    ("3 + 4 = 7 + 2 = 9", Claims(2, 0)),                          # a chain: each `=` checks its own side
    ("5 x 7 = 35 boxes", Claims(1, 0)),
])
def test_claims_are_counted_and_checked(text: str, expected: Claims) -> None:
    assert check(text) == expected


def test_the_oracle_never_writes_a_false_claim() -> None:
    families = ["piecewise", "round_up", "big_arithmetic", "short_story", "compare", "unit_rates"]
    total = Claims()
    for record in generate(120, 5, families=families):
        for row in solutions(record):
            if row["strategy"] != "pot":
                total = total + check(row["completion"])
    assert total.false == 0
    assert total.arithmetic > 200 and total.comparisons > 10  # the checks read the oracle's own phrasing


@pytest.mark.parametrize("text", [
    "1 + " * 3000,                                   # a long sum and no `=`
    "1 + " * 3000 + "1 = 3001",                      # longer than a step: not read
    "1" + " " * 5000 + "+" + " " * 5000 + "2" + " " * 5000 + "= 3",
    "9" * 6000 + " * 2 = 5",                         # a number too long to be arithmetic
    "(1 + (2 + (3" * 500 + " = 5",
    "1 - - - - - " * 2000 + "= 3",
    "1,000,000," * 2000 + " + 1 = 2",
    "1" * 5000 + " is more than 2",
    "=" * 10000,
])
def test_hostile_text_is_read_without_error_and_claims_nothing(text: str) -> None:
    """A model's output is untrusted: a pathological answer gets no claim and no exception (and, since
    each `=` reads a bounded window back, no time that grows with the square of its length)."""
    assert check(text) == Claims()
