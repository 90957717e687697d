"""The command-line contract: verify, data show/synth, teacher, validate (real subprocesses)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GSM8K_TEST = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def siked(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "siked_runtime.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_verify_contract(tmp_path):
    rows = [
        {"id": "a", "answer": "72", "completion": "[cot]\n48 + 24 = 72\nAnswer: 72"},
        {"id": "b", "answer": "5", "completion": "[pot]\nanswer = 2 + 2"},
        {"id": "c", "answer": "5", "completion": "[l2m]\nQ: what?\nA: no idea"},
        {"id": "d", "answer": "5", "completion": "[pot]\nwhile True:\n    pass\nanswer = 5"},
        {"id": "e", "answer": "5", "completion": "[pot]\nanswer = 1 / 0"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = siked("verify", src, "--out", tmp_path / "out.jsonl", "--timeout", "1", "--quiet")
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ["a", "b", "c", "d", "e"]
    assert [r["strategy"] for r in out] == ["cot", "pot", "l2m", "pot", "pot"]
    assert [r["verdict"] for r in out] == ["correct", "wrong", "no_answer", "timeout", "error"]
    assert all(r["completion"] == s["completion"] for r, s in zip(out, rows))
    assert "correct" in proc.stderr and "pot" in proc.stderr  # summary table


def test_verify_turns_malformed_input_into_error_rows(tmp_path):
    # One bad line must not cost the batch: every line gets a row, in order, with the reason.
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": "a", "answer": "1", "completion": "[cot]\\nAnswer: 1"}\nnot json\n[1, 2]\n'
                   '{"id": "b", "answer": "1"}\n{"id": "c", "answer": {"x": 1}, "completion": "[cot]\\nAnswer: 1"}\n')
    proc = siked("verify", src, "--out", out, "--quiet")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert proc.returncode == 0
    assert [(r.get("id"), r["verdict"]) for r in rows] == [("a", "correct"), (None, "error"), (None, "error"),
                                                          ("b", "error"), ("c", "error")]
    assert rows[1]["reason"] == "not valid JSON (Expecting value)" and rows[1]["line"] == 2
    assert rows[2]["reason"] == "expected a JSON object, got list"
    assert rows[3]["reason"] == "missing completion" and rows[4]["reason"] == "no gold answer"


def test_verify_explains_the_sandbox_and_enforces_required_layers():
    proc = siked("verify", "--explain-sandbox")
    assert proc.returncode == 0 and "seccomp" in proc.stdout and "landlock" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 7
    proc = siked("verify", "--explain-sandbox", "--require", "nosuch", check=False)
    assert proc.returncode == 2 and "unknown sandbox layer" in proc.stderr


def test_synth_then_oracle_then_verify(tmp_path):
    siked("data", "synth", "--n", 30, "--seed", 3, "--out", tmp_path / "s.jsonl")
    problems = read_jsonl(tmp_path / "s.jsonl")
    assert len(problems) == 30 and all(p["meta"]["graph"] for p in problems)
    siked("teacher", "oracle", tmp_path / "s.jsonl", "--out", tmp_path / "t.jsonl", "--quiet")
    solutions = read_jsonl(tmp_path / "t.jsonl")
    assert len(solutions) == 90 and set(solutions[0]) == {"id", "answer", "strategy", "completion"}
    siked("verify", tmp_path / "t.jsonl", "--out", tmp_path / "v.jsonl", "--quiet")
    assert {r["verdict"] for r in read_jsonl(tmp_path / "v.jsonl")} == {"correct"}


def test_data_show_detects_format():
    if not GSM8K_TEST.exists():
        pytest.skip("shared GSM8K copy not present")
    proc = siked("data", "show", GSM8K_TEST, "--limit", 3)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 3 and records[0]["answer"] == "18"
    assert set(records[0]) == {"id", "question", "answer", "meta"}


def test_data_show_missing_file():
    proc = siked("data", "show", "/nonexistent/data.jsonl", check=False)
    assert proc.returncode == 2 and "/nonexistent/data.jsonl" in proc.stderr


def test_validate_prints_resolved_spec_or_errors(tmp_path):
    proc = siked("validate", ROOT / "examples" / "quickstart.yaml")
    assert "samplesPerQuestion: 4" in proc.stdout and "backoffLimit: 3" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: siked.io/v1alpha1\nkind: DistillationRun\nmetadata: {name: x}\n"
                   "spec: {student: {model: m}, mixing: {policy: alpha, alphaSchedule: [0.5, 2]}}\n")
    proc = siked("validate", bad, check=False)
    assert proc.returncode == 2 and "spec.mixing.alphaSchedule[1]" in proc.stderr
