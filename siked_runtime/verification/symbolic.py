"""Symbolic answer checks with math-verify, in worker processes.

    with SymbolicChecker(workers=1, timeout=5.0) as checker:
        checker.check([("\\frac{1}{2}", "0.5"), ("x+1", "1+x")])   # [("correct", ...), ("correct", ...)]

sympy can hang or balloon on hostile input, and math-verify's own timeouts use
signals, so every check runs in a worker process with an alarm, a memory limit and
a wall-clock backstop here: a hung or crashed worker costs one wave, never the
batch. Workers are started with `spawn` (never a fork of a caller holding a model),
after the caller's credentials have left its environment (`credentials.seal`), so a
script that verifies at import time needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

MEMORY_BYTES = 2 << 30


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
    # Like the verifier: its memory and /proc files closed to other processes of its uid.
    from siked_runtime.credentials import forbid_dumps

    forbid_dumps()
    # `9**9**9` must fail with MemoryError here, not take the host's memory.
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    except (ValueError, OSError):
        pass
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


class SymbolicChecker:
    """A lazily started pool of math-verify workers; `check` never raises for one bad pair."""

    def __init__(self, workers: int = 1, timeout: float = 5.0):
        self.workers = max(1, workers)
        self.timeout = timeout
        self._symbolic: ProcessPoolExecutor | None = None

    def close(self) -> None:
        self._stop_symbolic()

    def __enter__(self) -> SymbolicChecker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """(verdict, reason) per (gold, predicted) pair, in order."""
        results: list[tuple[str, str]] = []
        # In waves of one job per worker, so every job gets its whole timeout and a hung
        # one only costs its own wave.
        for start in range(0, len(pairs), self.workers):
            wave = pairs[start:start + self.workers]
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
            futures = [pool.submit(symbolic_check, gold, predicted, self.timeout)
                       for gold, predicted in wave]
        except BrokenProcessPool:
            self._stop_symbolic()
            return [None] * len(wave)
        # The alarm inside the worker fires first; this catches C code that ignores it.
        deadline = time.monotonic() + self.timeout + 2.0
        too_slow = f"symbolic check exceeded {self.timeout:g}s"
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
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_symbolic_worker,
            )
            # Start the workers (and their math-verify import) before any deadline counts.
            for future in [pool.submit(_ready) for _ in range(self.workers)]:
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
