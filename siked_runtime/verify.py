"""Batch verification of completions against gold answers.

    from siked_runtime.verify import Verifier, verify_records, summarize, format_summary

    with Verifier() as verifier:
        verdicts = verifier.verify([("72", "[cot]\\n48 / 2 = 24 ...\\nAnswer: 72"),
                                    ("72", "[pot]\\nanswer = 48 + 48 / 2")])
    verdicts[1]   # Verdict(verdict='correct', strategy='pot', predicted='72', reason='')

    rows = list(verify_records(records))          # JSONL dicts with "answer" and "completion"
    print(format_summary(summarize(rows)))

Each completion is parsed (`strategies.parse_solution`); pot programs run in the sandbox
(`sandbox.SandboxPool`); answers that are plain numbers compare with a tolerance here, and
anything else (fractions of pi, expressions, intervals) goes through math-verify in worker
processes, because sympy can hang on hostile input and its timeouts use signals.

Verdicts: correct | wrong | no_answer | timeout | error.

The symbolic workers are started with `spawn` (never a fork of a caller holding a model),
so a script that verifies at import time needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import signal
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Iterable, Iterator

from siked_runtime.answers import numbers_equal, numbers_in, parse_number
from siked_runtime.sandbox import SandboxPool
from siked_runtime.strategies import STRATEGIES, parse_solution

VERDICTS: tuple[str, ...] = ("correct", "wrong", "no_answer", "timeout", "error")
MAX_SYMBOLIC_CHARS = 400
MAX_PRINTED_ANSWER_CHARS = 100


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


# -- symbolic checks (worker processes) -------------------------------------------------


class _SymbolicTimeout(BaseException):
    """Raised by our alarm; a BaseException so math-verify's `except Exception` lets it through."""


def _alarm(signum, frame):
    raise _SymbolicTimeout()


def _latex_candidates(text: str) -> list[str]:
    text = text.strip()
    if "$" in text or "\\boxed" in text or "\\(" in text:
        return [text]
    # math-verify only reads LaTeX between delimiters; plain "x+1" parses there too.
    return [f"${text}$", text]


def _parse(text: str):
    from math_verify import parse

    for candidate in _latex_candidates(text):
        parsed = parse(candidate, parsing_timeout=None)
        if parsed:
            return parsed
    return []


def _init_symbolic_worker() -> None:
    # Timeouts are ours (an alarm per check); math-verify warns once about its own being off.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (pay the import once, at start)

    signal.signal(signal.SIGALRM, _alarm)


def symbolic_check(gold: str, predicted: str, timeout: float) -> str:
    """'correct', 'wrong' or 'timeout'; runs in a worker process (uses SIGALRM)."""
    from math_verify import verify

    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        gold_parsed, predicted_parsed = _parse(gold), _parse(predicted)
        if not gold_parsed or not predicted_parsed:
            return "wrong"
        return "correct" if verify(gold_parsed, predicted_parsed, timeout_seconds=None) else "wrong"
    except _SymbolicTimeout:
        return "timeout"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


# -- the verifier -----------------------------------------------------------------------


class Verifier:
    """Parses, runs and compares; owns a sandbox pool and a pool of symbolic checkers."""

    def __init__(
        self,
        pool_size: int | None = None,
        timeout: float = 3.0,
        symbolic_timeout: float = 5.0,
        symbolic_workers: int = 1,
        sandbox: SandboxPool | None = None,
    ):
        self.timeout = timeout
        self.symbolic_timeout = symbolic_timeout
        self.symbolic_workers = max(1, symbolic_workers)
        self._owns_sandbox = sandbox is None
        self.sandbox = sandbox if sandbox is not None else SandboxPool(size=pool_size, timeout=timeout)
        self._symbolic: ProcessPoolExecutor | None = None

    def verify(self, items: list[tuple[str, str]]) -> list[Verdict]:
        """Verdicts for (gold_answer_text, completion_text) pairs, in input order."""
        parsed = [parse_solution(completion) for _, completion in items]
        to_run = [i for i, p in enumerate(parsed) if p.program is not None and not p.problem]
        runs = dict(zip(to_run, self.sandbox.run_many([parsed[i].program for i in to_run], self.timeout)))

        verdicts: list[Verdict | None] = [None] * len(items)
        symbolic: list[tuple[int, str, str]] = []
        for i, ((gold, _), p) in enumerate(zip(items, parsed)):
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
            if gold is None or not str(gold).strip():
                verdicts[i] = Verdict("error", p.strategy, predicted, "no gold answer")
                continue
            outcome = _compare_cheaply(str(gold), predicted)
            if outcome is not None:
                verdicts[i] = Verdict(outcome[0], p.strategy, predicted, outcome[1])
            else:
                symbolic.append((i, str(gold), predicted))

        for (i, gold, predicted), (verdict, reason) in zip(symbolic, self._check_symbolic(symbolic)):
            verdicts[i] = Verdict(verdict, parsed[i].strategy, predicted, reason)
        return verdicts  # type: ignore[return-value]

    def close(self) -> None:
        self._stop_symbolic()
        if self._owns_sandbox:
            self.sandbox.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- symbolic pool ------------------------------------------------------------------

    def _check_symbolic(self, jobs: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
        pairs = [(gold, predicted) for _, gold, predicted in jobs]
        results: list[tuple[str, str]] = []
        # In waves of one job per worker, so every job gets its whole timeout and a hung
        # one only costs its own wave.
        for start in range(0, len(pairs), self.symbolic_workers):
            wave = pairs[start:start + self.symbolic_workers]
            outcomes = self._run_wave(wave)
            crashed = [k for k, outcome in enumerate(outcomes) if outcome is None]
            if crashed:
                # Once more on a fresh pool: the worker may have died of something else
                # (killed from outside, out of memory) while holding this job.
                retried = self._run_wave([wave[k] for k in crashed])
                for k, outcome in zip(crashed, retried):
                    outcomes[k] = outcome or ("error", "symbolic checker crashed")
            results.extend(outcomes)  # type: ignore[arg-type]
        return results

    def _run_wave(self, wave: list[tuple[str, str]]) -> list[tuple[str, str] | None]:
        """One outcome per pair; None where the worker process died."""
        pool = self._symbolic_pool()
        try:
            futures = [pool.submit(symbolic_check, gold, predicted, self.symbolic_timeout)
                       for gold, predicted in wave]
        except BrokenProcessPool:
            self._stop_symbolic()
            return [None] * len(wave)
        # The alarm inside the worker fires first; this catches C code that ignores it.
        deadline = time.monotonic() + self.symbolic_timeout + 2.0
        too_slow = f"symbolic check exceeded {self.symbolic_timeout:g}s"
        outcomes: list[tuple[str, str] | None] = []
        broken = False
        for future in futures:
            try:
                verdict = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                outcomes.append(("timeout", too_slow))
                broken = True
            except BrokenProcessPool:
                outcomes.append(None)
                broken = True
            except Exception as exc:  # noqa: BLE001 - reported as the item's verdict
                outcomes.append(("error", f"symbolic check failed: {type(exc).__name__}: {exc}"[:300]))
            else:
                reason = {"correct": "symbolically equivalent", "wrong": "not equivalent", "timeout": too_slow}
                outcomes.append((verdict, reason[verdict]))
        if broken:
            self._stop_symbolic()
        return outcomes

    def _symbolic_pool(self) -> ProcessPoolExecutor:
        if self._symbolic is None:
            # spawn, not fork: the caller may hold a model, CUDA state or threads.
            pool = ProcessPoolExecutor(
                self.symbolic_workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_symbolic_worker,
            )
            # Start the workers (and their math-verify import) before any deadline counts.
            for future in [pool.submit(_ready) for _ in range(self.symbolic_workers)]:
                future.result(timeout=120)
            self._symbolic = pool
        return self._symbolic

    def _stop_symbolic(self) -> None:
        pool, self._symbolic = self._symbolic, None
        if pool is None:
            return
        # A running task cannot be cancelled; its process has to go. ProcessPoolExecutor
        # has no public way to reach its processes.
        for process in list(getattr(pool, "_processes", {}).values()):
            try:
                process.kill()
            except (OSError, AttributeError):
                pass
        pool.shutdown(wait=False, cancel_futures=True)


def _ready() -> bool:
    return True


def _printed_answer(output: str) -> str | None:
    """The last printed line of a program that prints its answer instead of assigning it."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines or len(lines[-1]) > MAX_PRINTED_ANSWER_CHARS:
        return None
    return lines[-1]


def _compare_cheaply(gold: str, predicted: str) -> tuple[str, str] | None:
    """A verdict without sympy when possible, else None (needs the symbolic check)."""
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
    items = [(_text(r.get("answer")), _text(r.get("completion"))) for r in batch]
    for record, verdict in zip(batch, verifier.verify(items)):
        yield {**record, "strategy": verdict.strategy, "verdict": verdict.verdict,
               "reason": verdict.reason, "predicted": verdict.predicted}


def _text(value) -> str:
    return "" if value is None else str(value)


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
