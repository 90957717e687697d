"""siked's console: status lines, one progress display per stage, and the libraries kept quiet.

    configure(verbose=False)     # once, first thing in the command line: libraries quiet
    log("teacher: kept 270 of 270 solutions")
    with Progress("iter-000/train", total=40, count="step {done}/{total}") as bar:
        bar.update(1, "loss 0.76")

On a terminal a progress display is a live bar (tqdm); anywhere else (a pipe, a file, a Job's
log) it is a plain line every `SIKED_PROGRESS_SECONDS` seconds (default 15) and one at the end,
with counts, the rate and the time left:

    [siked 12:00:41] iter-000/train: step 12/40 · loss 0.76 · 3.1 s/step · ETA 1m27s

Without `--verbose`, the progress bars and warnings of transformers, datasets, TRL, peft and
the GGUF loader are switched off: what remains is siked's own voice. `--verbose` leaves them on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

# Libraries whose progress bars, info lines and warnings a user of siked has no use for.
NOISY_LOGGERS = ("transformers", "datasets", "trl", "peft", "accelerate", "huggingface_hub", "torch",
                 "sentence_transformers", "httpx", "filelock", "urllib3", "botocore")
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' own bars ("Loading weights") follow this one
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # TRL's dataset preparation ("Tokenizing", "Adding EOS")
    # Bars built on plain tqdm (the GGUF loader's). tqdm reads its TQDM_* defaults once, when it is first
    # imported, so this module and the command line import tqdm only after `configure`. Bars that pass
    # disable=False (ours, siked verify's) still show.
    "TQDM_DISABLE": "1",
}


def configure(verbose: bool = False) -> None:
    """Quiet the libraries unless `verbose`. Call before they are imported: some read the
    environment once, at import; those already imported are switched off directly."""
    if verbose:
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"siked")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def log(message: str) -> None:
    """One line in siked's voice on stderr; on a terminal, above any live progress bar."""
    from tqdm import tqdm

    tqdm.write(f"[siked {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)
    sys.stderr.flush()


def duration(seconds: float) -> str:
    """`1h02m`, `1m24s`, `9s`."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def rate(done: float, seconds: float, unit: str) -> str:
    """`3.1 s/step` when slower than one per second, `12.4 sequences/s` when faster."""
    if done <= 0 or seconds <= 0:
        return f"– {unit}/s"
    per_second = done / seconds
    if per_second < 1:
        return f"{seconds / done:.1f} s/{unit}"
    return f"{per_second:.1f} {unit}/s"


def _interval() -> float:
    try:
        return float(os.environ.get("SIKED_PROGRESS_SECONDS", "15"))
    except ValueError:
        return 15.0


class Progress:
    """One stage's progress: a live bar on a terminal, periodic plain lines elsewhere.

    `count` formats the count (`{done}`, `{total}`, `{unit}`); `update(n, detail)` adds `n`
    done and shows `detail` (e.g. the loss) beside it.
    """

    def __init__(self, what: str, total: int, unit: str = "item", count: str = "{done}/{total}",
                 interval: float | None = None, tty: bool | None = None):
        self.what, self.total, self.unit, self.count = what, total, unit, count
        self.done, self.detail = 0, ""
        self.interval = _interval() if interval is None else interval
        self.start = self._last = time.perf_counter()
        self._reported = -1
        tty = sys.stderr.isatty() if tty is None else tty
        self._bar = None
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, disable=False, leave=False,
                             dynamic_ncols=True,
                             bar_format="{desc}: {n_fmt}/{total_fmt} {unit} {bar} {postfix} [{elapsed}<{remaining}]")

    def update(self, n: int = 1, detail: str = "") -> None:
        self.done += n
        self.detail = detail or self.detail
        if self._bar is not None:
            if self._bar.total != self.total:
                self._bar.total = self.total
            self._bar.set_postfix_str(self.detail, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.done >= self.total or now - self._last >= self.interval:
            self._last = now
            self._report()

    def line(self) -> str:
        """The plain progress line (without the `[siked HH:MM:SS]` prefix)."""
        elapsed = time.perf_counter() - self.start
        parts = [f"{self.what}: " + self.count.format(done=self.done, total=self.total, unit=self.unit)]
        if self.detail:
            parts.append(self.detail)
        parts.append(rate(self.done, elapsed, self.unit))
        if self.done < self.total and self.done > 0:
            parts.append(f"ETA {duration(elapsed / self.done * (self.total - self.done))}")
        elif self.done >= self.total:
            parts.append(f"done in {duration(elapsed)}")
        return " · ".join(parts)

    def _report(self) -> None:
        if self.done != self._reported:
            self._reported = self.done
            log(self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            log(self.line())  # the bar leaves no trace; the last line stays
        elif self.done != self._reported and self.done > 0:
            self._report()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def summary_lines(report: dict, report_url: str) -> list[str]:
    """The end of `siked run`: accuracy per set and iteration (untrained and teacher beside), the
    chosen model, where the report is."""
    iterations = report["iterations"]
    sets = sorted({s for it in iterations for s in it["eval"]}, key=lambda s: (s != "validation", s))
    rows = []
    if report["baseline"]:
        rows.append(("untrained", [report["baseline"].get(s) for s in sets]))
    for it in iterations:
        mark = " (best)" if it["iteration"] == report["best_iteration"] else ""
        rows.append((f"iteration {it['iteration']}{mark}", [it["eval"].get(s) for s in sets]))
    if report.get("teacher"):
        rows.append(("teacher", [report["teacher"].get(s) for s in sets]))
    width = max([len("accuracy")] + [len(name) for name, _ in rows])
    cols = [max(len(s), 5) for s in sets]
    lines = ["accuracy".ljust(width) + "  " + "  ".join(s.rjust(c) for s, c in zip(sets, cols))]
    for name, values in rows:
        lines.append(name.ljust(width) + "  " + "  ".join(
            ("–" if v is None else f"{v:.3f}").rjust(c) for v, c in zip(values, cols)))
    lines.append(f"report: {report_url}")
    return lines
