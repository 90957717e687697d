"""siked's console: progress lines, the final summary, and a run's console as a Job's log shows it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from siked_runtime.console import Progress, duration, rate, summary_lines
from tests.smoke_cli import ROOT, smoke_cli_run

MAX_LINE = 200
# What library output looks like: a Trainer log dict, a tqdm bar, a Python warning.
RAW_DICT = re.compile(r"\{'\w+': ")
TQDM_BAR = re.compile(r"\d+%\|")
WARNING = re.compile(r"\b\w*Warning\b|^WARNING|^warnings\.warn")


def console_problems(text: str) -> list[str]:
    """Why `text` is not a console in siked's voice (empty when it is)."""
    problems = []
    if "\r" in text:
        problems.append("carriage return (a progress bar drawn into a log)")
    for n, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_LINE:
            problems.append(f"line {n} has {len(line)} characters: {line[:80]}…")
        for what, pattern in (("raw library dict", RAW_DICT), ("tqdm bar", TQDM_BAR), ("warning", WARNING)):
            if pattern.search(line):
                problems.append(f"line {n}, {what}: {line[:120]}")
    return problems


LIBRARY_BAR = """
import sys
from siked_runtime.cli import main
sys.argv = ["siked", *sys.argv[1:], "schema"]
main()
from tqdm.auto import tqdm  # what the GGUF loader draws its bar with
list(tqdm(range(3), desc="Converting and de-quantizing GGUF tensors"))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_progress_bars_only_with_verbose(verbose):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", LIBRARY_BAR, *(["--verbose"] if verbose else [])],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert ("de-quantizing GGUF tensors" in proc.stderr) is verbose


def test_durations_and_rates_read_like_a_person_wrote_them():
    assert [duration(s) for s in (9.4, 84, 3720)] == ["9s", "1m24s", "1h02m"]
    assert rate(12, 37.2, "step") == "3.1 s/step"
    assert rate(300, 10, "sequence") == "30.0 sequence/s"


def test_progress_without_a_terminal_writes_plain_lines_with_count_rate_and_eta(capsys):
    bar = Progress("iter-000/train", 4, unit="step", count="step {done}/{total}", interval=0, tty=False)
    bar.update(1, "loss 0.76")
    bar.update(3, "loss 0.51")
    bar.close()  # nothing new to say: no repeated last line
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\[siked \d\d:\d\d:\d\d\] iter-000/train: step 1/4 · loss 0\.76 · "
                        r"[\d.]+ (s/step|step/s) · ETA \d+s", lines[0]), lines[0]
    assert re.fullmatch(r".* iter-000/train: step 4/4 · loss 0\.51 · .* · done in \d+s", lines[1]), lines[1]


def test_progress_on_a_terminal_is_a_live_bar_that_leaves_one_line(capsys):
    bar = Progress("iter-000/eval validation", 3, unit="sequence", count="{done}/{total} sequences", tty=True)
    for _ in range(3):
        bar.update(1, "96 tokens (40 tok/s)")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" in err and "iter-000/eval validation: 3/3 sequence" in err  # the bar, redrawn in place
    assert re.search(r"\[siked [\d:]+\] iter-000/eval validation: 3/3 sequences · 96 tokens \(40 tok/s\) · .* · done in",
                     err.splitlines()[-1])


def test_progress_lines_are_periodic_not_per_update(capsys):
    bar = Progress("sample[1]", 1000, interval=3600, tty=False)
    for _ in range(999):
        bar.update(1)
    assert capsys.readouterr().err == ""  # nothing until the interval has passed…
    bar.update(1)
    assert "sample[1]: 1000/1000 · " in capsys.readouterr().err  # …or the work is done


def test_summary_shows_accuracy_per_set_with_references_and_the_report():
    report = {"baseline": {"validation": 0.0, "synthetic-test": 0.05}, "teacher": {"validation": 1.0},
              "best_iteration": 1,
              "iterations": [{"iteration": 0, "eval": {"validation": 0.1, "synthetic-test": 0.2}},
                             {"iteration": 1, "eval": {"validation": 0.3, "synthetic-test": 0.4}}]}
    lines = summary_lines(report, "file:///runs/q/report.md")
    assert lines[0].split() == ["accuracy", "validation", "synthetic-test"]
    assert lines[1].split() == ["untrained", "0.000", "0.050"]
    assert lines[3].split() == ["iteration", "1", "(best)", "0.300", "0.400"]
    assert lines[4].split() == ["teacher", "1.000", "–"]
    assert lines[-1] == "report: file:///runs/q/report.md"


def test_committed_quickstart_console_reads_like_a_product():
    text = (ROOT / "examples" / "quickstart-console.txt").read_text()
    assert console_problems(text) == []
    assert re.search(r"iter-000/train: step 30/30 · loss [\d.]+ · [\d.]+ s/step · done in ", text)
    assert "report: file://" in text and "accuracy" in text


@pytest.mark.slow
def test_a_run_without_a_terminal_logs_only_siked_lines():
    run = smoke_cli_run()
    assert run.returncode == 0, run.stderr[-3000:]
    assert console_problems(run.stderr) == []
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert all(line.startswith("[siked ") for line in lines[:-5]), [l for l in lines if not l.startswith("[siked")]
    assert re.search(r"\] iter-000/train: step 2/2 · loss [\d.]+ · [\d.]+ (s/step|step/s) · done in \d+s$", run.stderr, re.M)
    assert re.search(r"\] iter-000/eval validation: 4/4 sequences · \d+ tokens", run.stderr)
    # the summary: the accuracy table and where the report is
    assert lines[-5].split() == ["accuracy", "validation", "synthetic-test"]
    assert lines[-4].split()[0] == "untrained" and lines[-1] == f"report: file://{run.dir}/report.md"
