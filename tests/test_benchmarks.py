"""The benchmark suite's plumbing: argument parsing, JSON lines and the table, and P3 at a tiny size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import parse_args
from benchmarks.report import Measurement, emit, ratio_met, table

REPO = Path(__file__).resolve().parents[1]


def test_parse_args():
    args = parse_args(["all", "--quick", "--out", "r.jsonl"])
    assert (args.name, args.quick, args.out, args.student) == ("all", True, Path("r.jsonl"), None)
    assert parse_args(["p6", "--student", "s"]).student == Path("s")
    with pytest.raises(SystemExit):
        parse_args(["p4"])


def test_ratio_met():
    assert ratio_met(3.2, ">=3") and not ratio_met(2.9, ">=3")
    assert ratio_met(0.5, "<=0.6") and not ratio_met(0.61, "<=0.6")
    with pytest.raises(ValueError, match="goal"):
        ratio_met(1.0, "3")


def test_emit_writes_the_json_line_and_appends_to_the_file(tmp_path, capsys):
    m = Measurement("P3", "programs/s", ours=9921.04, baseline=162.0, unit="programs/s", goal=">=10", met=True,
                    context={"n": 2000, "device": "cpu"})
    out = tmp_path / "results" / "r.jsonl"
    emit(m, out)
    emit(m, out)
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    assert printed == {"id": "P3", "what": "programs/s", "ours": 9921.0, "baseline": 162.0, "unit": "programs/s",
                       "ratio": 61.2, "goal": ">=10", "met": True, "n": 2000, "device": "cpu"}
    assert [json.loads(line) for line in out.read_text().splitlines()] == [printed, printed]


def test_table_has_a_row_per_measurement():
    rows = [Measurement("P1", "sampling", 300.0, 100.0, "tokens/s", ">=3", True),
            Measurement("P6", "budget", 50.0, 100.0, "tokens/correct", "<=0.6", True)]
    lines = table(rows).splitlines()
    assert len(lines) == 4
    assert "| P1 " in lines[2] and "3.0x" in lines[2] and "0.5x" in lines[3]


def test_p3_measures_both_sides_at_a_tiny_size():
    from benchmarks import pot

    [m] = pot.run("cpu", quick=True, n=60, baseline_n=4)
    assert m.id == "P3" and m.ours > 0 and m.baseline > 0
    assert m.as_json()["n"] == 60 and m.as_json()["baseline_n"] == 4


def test_the_scripts_still_run():
    for argv in (["-m", "benchmarks", "--help"], ["benchmarks/verify_bench.py", "--n", "40", "--baseline-n", "2"]):
        done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["id"] == "P3"


def test_finished_share_counts_solutions_cut_at_their_answer_line() -> None:
    from benchmarks.sampling import finished_share
    from siked_runtime.samplers import cut_finished

    texts = [cut_finished("[cot]\n2 + 3 = 5\nAnswer: 5\nQuestion: next"), "[cot]\n2 + 3 =", "[pot]\nanswer = 5"]
    assert finished_share(texts) == 1 / 3
