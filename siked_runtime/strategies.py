"""Reasoning strategies: the tag each solution starts with, the instruction, the parser.

Every teacher and student solution starts with a strategy tag so the student's
choice is observable and trainable (SIKeD, arXiv 2410.18574):

    [cot]                       [l2m]                          [pot]
    She sold 48/2 = 24 in May.  Q: How many in May?            may = 48 / 2
    48 + 24 = 72.               A: 48 / 2 = 24.                answer = 48 + may
    Answer: 72                  Q: How many in all?
                                A: 48 + 24 = 72.
                                Answer: 72

`cot` and `l2m` end with an `Answer:` line; `pot` is a Python program that assigns
`answer` (a PAL-style `def solution()` is accepted too). The parser is forgiving
about what models actually write: chatter around the solution, code fences,
unknown or missing tags, truncation.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from siked_runtime.answers import extract_final_answer, format_number, numbers_in

STRATEGIES: tuple[str, ...] = ("cot", "l2m", "pot")
NAMES = {"cot": "chain-of-thought", "l2m": "least-to-most", "pot": "program-of-thought"}


def tag(strategy: str) -> str:
    return f"[{strategy}]"


# Identical at train and inference time, so the student's strategy choice is
# conditioned on the same text it was trained with.
# Short on purpose: every prompt carries it, at training and at sampling time.
INSTRUCTION = (
    "Start with a strategy tag: [cot] steps, [l2m] sub-questions, or [pot] Python setting answer. "
    "End [cot]/[l2m] with 'Answer: <number>'."
)


def build_prompt(question: str, strategy: str | None = None) -> str:
    """The user-turn text for a question; `strategy` forces one strategy (teacher, single-strategy runs)."""
    if strategy is None:
        return f"{INSTRUCTION}\n\nQuestion: {question.strip()}"
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    return f"{INSTRUCTION}\nUse {tag(strategy)} ({NAMES[strategy]}).\n\nQuestion: {question.strip()}"


def format_solution(strategy: str, body: str, answer: float | str | None = None) -> str:
    """A solution in the canonical format: tag, body, and for cot/l2m the `Answer:` line."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    body = body.strip()
    if strategy == "pot":
        return f"{tag(strategy)}\n{body}"
    if answer is None:
        raise ValueError(f"a {strategy} solution needs a final answer")
    value = format_number(answer) if isinstance(answer, (int, float)) else str(answer).strip()
    return f"{tag(strategy)}\n{body}\nAnswer: {value}"


@dataclass(frozen=True)
class ParsedSolution:
    """What a completion says: its strategy, and its final answer (cot/l2m) or program (pot).

    `strategy` is None when the tag is missing or unknown. `answer` is the raw
    answer text (not yet normalised); `program` is the source to run. `problem`
    says why nothing usable was found ("" when something was).
    """

    strategy: str | None
    answer: str | None = None
    program: str | None = None
    problem: str = ""


# Bounded so that "[" followed by a long run of spaces stays linear.
_TAG = re.compile(r"\[[ \t]{0,4}([A-Za-z0-9_\-][A-Za-z0-9_\- ]{0,23})[ \t]{0,4}\]")
_TAG_ALIASES = {
    "cot": "cot", "chain-of-thought": "cot", "chain of thought": "cot",
    "l2m": "l2m", "ltm": "l2m", "least-to-most": "l2m", "least to most": "l2m",
    "pot": "pot", "pal": "pot", "program-of-thought": "pot", "program of thought": "pot", "program": "pot",
}
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def find_tag(text: str) -> tuple[str | None, int]:
    """The first strategy tag in `text` and where its solution starts (after the tag).

    Returns (None, 0) when no known tag occurs; unknown bracketed words are skipped,
    so "[note] … [pot] …" still finds [pot].
    """
    for m in _TAG.finditer(text):
        strategy = _TAG_ALIASES.get(m.group(1).strip().lower())
        if strategy:
            return strategy, m.end()
    return None, 0


# Lines of chatter (or of a cut-off statement) dropped at most from the end of a program,
# and the characters parsed at most while looking for the longest prefix that parses.
MAX_TRAILING_LINES = 64
MAX_PARSED_CHARS = 256 * 1024


def extract_program(text: str) -> str | None:
    """The Python source in a pot solution: the first fenced block, else the longest parseable prefix."""
    fenced = _FENCE.search(text)
    source = fenced.group(1) if fenced else text
    lines = source.strip("\n").splitlines()
    # Drop chatter after the program (and a truncated last statement): keep the
    # longest prefix of lines that parses. Bounded: every attempt parses the whole
    # prefix, and hostile text must not make this quadratic.
    budget = MAX_PARSED_CHARS
    for end in range(len(lines), max(0, len(lines) - MAX_TRAILING_LINES), -1):
        candidate = "\n".join(lines[:end]).rstrip()
        if not candidate:
            continue
        budget -= len(candidate)
        if budget < 0:
            return None
        try:
            ast.parse(candidate)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue  # ValueError: NUL bytes; the others: absurd nesting
        return candidate + "\n"
    return None


def _assigns_answer(program: str) -> bool:
    tree = ast.parse(program)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "answer" for t in node.targets):
            return True
        if isinstance(node, (ast.AugAssign, ast.AnnAssign)) and isinstance(node.target, ast.Name) and node.target.id == "answer":
            return True
        if isinstance(node, ast.FunctionDef) and node.name == "solution":
            return True
    return False


def _last_number(text: str) -> str | None:
    found = numbers_in(text)
    return format_number(found[-1]) if found else None


def parse_solution(text: str) -> ParsedSolution:
    """Parse a raw completion into (strategy, answer or program).

    Tagged cot/l2m solutions must state their answer with a final-answer marker;
    a tagged solution that stops before one is treated as truncated. Untagged
    text falls back to the last number it contains, as GSM8K evaluation does.
    """
    if text is None or not text.strip():
        return ParsedSolution(None, problem="empty completion")
    strategy, start = find_tag(text)
    body = text[start:]
    if strategy == "pot":
        program = extract_program(body)
        if program is None:
            return ParsedSolution("pot", problem="no parseable program after [pot]")
        if not _assigns_answer(program):
            # A truncated program, or one that prints instead of assigning.
            if "print(" not in program:
                return ParsedSolution("pot", program=program, problem="program never assigns `answer`")
        return ParsedSolution("pot", program=program)
    if strategy is None and _FENCE.search(text):
        # No known tag, but a fenced program assigning `answer` is still a program.
        program = extract_program(text)
        if program is not None and _assigns_answer(program):
            return ParsedSolution(None, program=program)
    answer = extract_final_answer(body)
    if strategy is not None:
        if answer is None:
            return ParsedSolution(strategy, problem="no final 'Answer:' line (truncated?)")
        return ParsedSolution(strategy, answer=answer)
    if answer is None:
        answer = _last_number(text)
    if answer is None:
        return ParsedSolution(None, problem="no strategy tag and no answer")
    return ParsedSolution(None, answer=answer)


_ANSWER_LINE_DONE = re.compile(r"^[ \t]*answer[ \t]*[:=][^\n]*\d[^\n]*\n", re.IGNORECASE | re.MULTILINE)


def is_finished(text: str) -> bool:
    """True once a cot/l2m completion has written its full `Answer:` line (sampling can stop there)."""
    strategy, start = find_tag(text)
    return strategy in ("cot", "l2m") and _ANSWER_LINE_DONE.search(text, start) is not None
