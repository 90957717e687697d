"""Batch verification of completions against gold answers.

    from siked_runtime.verification import Verifier, verify_records, summarize, format_summary

    with Verifier() as verifier:
        verdicts = verifier.verify([("72", "[cot]\\n48 / 2 = 24 ...\\nAnswer: 72"),
                                    ("72", "[pot]\\nanswer = 48 + 48 / 2")])
    verdicts[1]   # Verdict(verdict='correct', strategy='pot', predicted='72', reason='')

    rows = list(verify_records(records))          # JSONL dicts with "answer" and "completion"
    print(format_summary(summarize(rows)))

Each completion is parsed (`strategies.parse_solution`); pot programs run in the sandbox
(`sandbox.SandboxPool`), which reports only the value a program produced; the verdict
is decided here, where alone the gold answer is. Answers that are plain numbers compare
with a tolerance here, and anything else (fractions of pi, expressions, intervals) goes
through math-verify in worker processes (`symbolic.SymbolicChecker`).

Verdicts: correct | wrong | no_answer | timeout | error. Every item gets one: a
completion that cannot be parsed, is too long, or breaks the sandbox's reply format is
an `error` for that item alone, and a batch always completes.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator

from siked_runtime.answers import numbers_equal, numbers_in, parse_number
from siked_runtime.strategies import STRATEGIES, ParsedSolution, parse_solution
from siked_runtime.verification.sandbox import DEFAULT_MEMORY_MB, SandboxPool
from siked_runtime.verification.symbolic import SymbolicChecker

VERDICTS: tuple[str, ...] = ("correct", "wrong", "no_answer", "timeout", "error")
MAX_SYMBOLIC_CHARS = 400
# No answer is longer (a program's value can be 4,096 characters, a cot line 64K).
MAX_ANSWER_CHARS = 1000
MAX_PRINTED_ANSWER_CHARS = 100
# Longer completions are not parsed (a model's solution is a few KB; parsing is not free).
MAX_COMPLETION_CHARS = 64 * 1024


@dataclass(frozen=True)
class Verdict:
    """One completion's verdict; `predicted` is the answer it gave (None if it gave none)."""

    verdict: str
    strategy: str | None
    predicted: str | None
    reason: str = ""


# -- numbers --------------------------------------------------------------------------

_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_LATEX_NOISE = re.compile(r"\\[,!;: ]|\\left|\\right|\^\s*\{?\\circ\}?|\{,\}")
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
# What may surround the single number of a numeric answer: currency, separators, percent,
# the \frac that numbers_in resolves, and unit words of two or more letters.
_NUMERIC_CHARS = re.compile(r"[\d.,/\s$€£¥%−–\-]|\\[dt]?frac|[{}]")


def as_number(text: str | None) -> float | None:
    """The value of an answer that states exactly one number ("$1,234", "3/4", "18 dollars", "50%").

    None for anything symbolic ("2x", "\\sqrt{2}", "1 hour 30 minutes"), which is
    compared by math-verify instead.
    """
    if text is None:
        return None
    boxed = _BOXED.search(text)
    if boxed:
        text = boxed.group(1)
    text = _LATEX_WRAPPERS.sub(r" \1 ", text).replace("\\$", "$").replace("\\%", "%")
    text = _LATEX_NOISE.sub("", text).strip().rstrip(".")
    if len(numbers_in(text)) != 1:
        return None
    residue = _NUMERIC_CHARS.sub(" ", text)
    words = residue.split()
    # Operators, LaTeX commands or one-letter names ("x", "n") make it an expression.
    if any(not w.isalpha() or len(w) < 2 for w in words):
        return None
    return parse_number(text)


def _normalised(text: str) -> str:
    return re.sub(r"\s+|\$|\\[,!;]", "", text).rstrip(".").lower()


# -- the verifier -----------------------------------------------------------------------


def _parse(completion) -> ParsedSolution | Verdict:
    """The parsed completion, or an `error` verdict when it cannot be parsed safely."""
    if not isinstance(completion, str):
        return Verdict("error", None, None, f"completion is {type(completion).__name__}, not text")
    if len(completion) > MAX_COMPLETION_CHARS:
        return Verdict("error", None, None, f"completion longer than {MAX_COMPLETION_CHARS} characters")
    try:
        return parse_solution(completion)
    except Exception as exc:  # noqa: BLE001 - hostile text fails its own item, never the batch
        return Verdict("error", None, None, f"completion could not be parsed ({type(exc).__name__})")


class Verifier:
    """Parses, runs and compares; owns a sandbox pool and a pool of symbolic checkers."""

    def __init__(
        self,
        pool_size: int | None = None,
        timeout: float = 3.0,
        symbolic_timeout: float = 5.0,
        symbolic_workers: int = 1,
        sandbox: SandboxPool | None = None,
        memory_mb: int = DEFAULT_MEMORY_MB,
        require: Iterable[str] = (),
    ):
        self.timeout = timeout
        self._owns_sandbox = sandbox is None
        self.sandbox = sandbox if sandbox is not None else SandboxPool(
            size=pool_size, timeout=timeout, memory_mb=memory_mb, require=require)
        self.symbolic = SymbolicChecker(symbolic_workers, symbolic_timeout)

    def verify(self, items: list[tuple[str, str]]) -> list[Verdict]:
        """Verdicts for (gold_answer_text, completion_text) pairs, in input order."""
        parsed = [_parse(completion) for _, completion in items]
        to_run = [i for i, p in enumerate(parsed)
                  if isinstance(p, ParsedSolution) and p.program is not None and not p.problem]
        runs = dict(zip(to_run, self.sandbox.run_many([parsed[i].program for i in to_run], self.timeout)))

        verdicts: list[Verdict | None] = [None] * len(items)
        symbolic: list[tuple[int, str, str]] = []
        for i, ((gold, _), p) in enumerate(zip(items, parsed)):
            if isinstance(p, Verdict):
                verdicts[i] = p
                continue
            predicted = p.answer
            if i in runs:
                run = runs[i]
                if run.status != "ok":
                    verdicts[i] = Verdict(run.status, p.strategy, None, run.reason)
                    continue
                predicted = run.value
                if predicted is None and not run.truncated:
                    predicted = _printed_answer(run.output)
                if predicted is None:
                    reason = "printed output exceeded the cap" if run.truncated else run.reason or "no answer"
                    verdicts[i] = Verdict("no_answer", p.strategy, None, reason)
                    continue
            if predicted is None:
                verdicts[i] = Verdict("no_answer", p.strategy, None, p.problem or "no answer")
                continue
            if not isinstance(gold, str) or not gold.strip():
                verdicts[i] = Verdict("error", p.strategy, predicted, "no gold answer")
                continue
            try:
                outcome = _compare_cheaply(gold, predicted)
            except Exception as exc:  # noqa: BLE001 - as above
                outcome = ("error", f"answer could not be compared ({type(exc).__name__})")
            if outcome is not None:
                verdicts[i] = Verdict(outcome[0], p.strategy, predicted, outcome[1])
            else:
                symbolic.append((i, gold, predicted))

        checked = self.symbolic.check([(gold, predicted) for _, gold, predicted in symbolic])
        for (i, _, predicted), (verdict, reason) in zip(symbolic, checked):
            verdicts[i] = Verdict(verdict, parsed[i].strategy, predicted, reason)
        return verdicts  # type: ignore[return-value]

    def close(self) -> None:
        self.symbolic.close()
        if self._owns_sandbox:
            self.sandbox.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _printed_answer(output: str) -> str | None:
    """The last printed line of a program that prints its answer instead of assigning it."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines or len(lines[-1]) > MAX_PRINTED_ANSWER_CHARS:
        return None
    return lines[-1]


def _compare_cheaply(gold: str, predicted: str) -> tuple[str, str] | None:
    """A verdict without sympy when possible, else None (needs the symbolic check)."""
    if len(predicted) > MAX_ANSWER_CHARS:
        return "wrong", f"answer longer than {MAX_ANSWER_CHARS} characters"
    gold_number = as_number(gold)
    predicted_number = as_number(predicted)
    if predicted_number is None and "=" in predicted:
        # "x = 5", "48 + 24 = 72": the value is what the last equation ends with.
        predicted_number = as_number(predicted.rsplit("=", 1)[1])
    if gold_number is not None and predicted_number is not None:
        if numbers_equal(gold_number, predicted_number):
            return "correct", ""
        return "wrong", f"expected {gold.strip()}, got {predicted}"
    if _normalised(gold) == _normalised(predicted):
        return "correct", "same text"
    if len(gold) > MAX_SYMBOLIC_CHARS or len(predicted) > MAX_SYMBOLIC_CHARS:
        return "wrong", "answer too long to compare symbolically"
    return None


# -- JSONL records and summaries -----------------------------------------------------------


def verify_records(
    records: Iterable[dict], verifier: Verifier | None = None, batch_size: int = 512
) -> Iterator[dict]:
    """Each input dict ({"id", "answer", "completion", ...}) plus strategy, verdict, reason, predicted."""
    own = verifier is None
    verifier = verifier or Verifier()
    try:
        batch: list[dict] = []
        for record in records:
            batch.append(record)
            if len(batch) >= batch_size:
                yield from _verify_batch(verifier, batch)
                batch = []
        if batch:
            yield from _verify_batch(verifier, batch)
    finally:
        if own:
            verifier.close()


def _verify_batch(verifier: Verifier, batch: list[dict]) -> Iterator[dict]:
    items = [(_gold(r.get("answer")), r.get("completion", "")) for r in batch]
    for record, verdict in zip(batch, verifier.verify(items)):
        yield {**record, "strategy": verdict.strategy, "verdict": verdict.verdict,
               "reason": verdict.reason, "predicted": verdict.predicted}


def _gold(value) -> str:
    """A gold answer as text: strings and numbers; anything else is no gold answer."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def summarize(rows: Iterable[dict]) -> dict:
    """Counts per verdict, per strategy and per strategy × verdict, plus accuracy."""
    verdicts: Counter[str] = Counter()
    strategies: Counter[str] = Counter()
    by_strategy: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        strategy = row.get("strategy") or "none"
        verdicts[row["verdict"]] += 1
        strategies[strategy] += 1
        by_strategy[strategy][row["verdict"]] += 1
    total = sum(verdicts.values())
    return {
        "total": total,
        "accuracy": verdicts["correct"] / total if total else 0.0,
        "verdicts": {v: verdicts[v] for v in VERDICTS},
        "strategies": dict(sorted(strategies.items(), key=lambda kv: _strategy_order(kv[0]))),
        "by_strategy": {
            s: {v: by_strategy[s][v] for v in VERDICTS}
            for s in sorted(by_strategy, key=_strategy_order)
        },
    }


def _strategy_order(strategy: str) -> tuple[int, str]:
    return (STRATEGIES.index(strategy) if strategy in STRATEGIES else len(STRATEGIES), strategy)


def format_summary(summary: dict) -> str:
    """A plain-text table: one row per strategy and a total row, one column per verdict."""
    header = ["strategy", *VERDICTS, "total", "accuracy"]
    rows = []
    for strategy, counts in summary["by_strategy"].items():
        total = sum(counts.values())
        rows.append([strategy, *(str(counts[v]) for v in VERDICTS), str(total),
                     f"{counts['correct'] / total:.1%}" if total else "-"])
    rows.append(["all", *(str(summary["verdicts"][v]) for v in VERDICTS), str(summary["total"]),
                 f"{summary['accuracy']:.1%}" if summary["total"] else "-"])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
