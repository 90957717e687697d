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


def _draw(q: str, rnd: int, verdict: str, predicted: str | None = None, completion: str = "x") -> dict:
    return {"id": q, "round": str(rnd), "verdict": verdict, "predicted": predicted, "completion": completion}


def test_budget_samples_both_sides_alike_but_for_the_adaptive_budget_and_the_chosen_dtype() -> None:
    from benchmarks.budget import sample_spec

    ours, fixed = sample_spec(5, 4, 1, True, "float32"), sample_spec(5, 4, 1, False, "float32")
    assert ours.student.dtype == fixed.student.dtype == "float32"
    assert ours.iterations.adaptive_budget and not fixed.iterations.adaptive_budget
    assert (ours.iterations.samples_per_question, ours.iterations.max_correct_per_question) == (4, 1)
    assert ours.datasets.train.synthetic.n - ours.datasets.validation_from_train == 5 and ours.datasets.eval == []
    assert sample_spec(5, 4, 1, True).student.dtype == "auto"


def test_budget_trace_replays_lower_give_up_settings_exactly() -> None:
    from benchmarks.budget_trace import first_failure_signals, hazard, replay, traces

    rows = [  # out of order on purpose; "a" solved at draw 1, "b" at draw 3, "c" never (4 draws)
        _draw("b", 2, "correct", "5", "one two"), _draw("a", 0, "correct", "1"),
        _draw("b", 0, "wrong", "7"), _draw("b", 1, "wrong", "7"),
        *[_draw("c", r, "no_answer" if r == 0 else "wrong", None if r == 0 else str(r)) for r in range(4)],
    ]
    by_q = traces(rows)
    assert [r["round"] for r in by_q["b"]] == ["0", "1", "2"]

    def words(row: dict) -> int:
        return len(row["completion"].split())

    cut = {g: replay(by_q, g, words) for g in (1, 2, 3, 4)}
    assert [cut[g]["questions_solved"] for g in (1, 2, 3, 4)] == [1, 1, 2, 2]
    assert [cut[g]["samples"] for g in (1, 2, 3, 4)] == [3, 5, 7, 8]
    assert cut[3]["tokens"] == 1 + 1 + 1 + 2 + 1 + 1 + 1  # "b"'s correct draw has two words
    assert cut[3]["tokens_per_correct"] == 8 / 2
    assert hazard(by_q, 4) == [
        {"draw": 1, "open": 3, "solved": 1, "rate": 1 / 3}, {"draw": 2, "open": 2, "solved": 0, "rate": 0.0},
        {"draw": 3, "open": 2, "solved": 1, "rate": 0.5}, {"draw": 4, "open": 1, "solved": 0, "rate": 0.0}]
    assert first_failure_signals(by_q) == {
        "first draw wrong": {"solved later": 1, "never solved": 0},
        "first draw no_answer": {"solved later": 0, "never solved": 1},
        "first two wrong, same answer": {"solved later": 1, "never solved": 0},
        "first two wrong, different answers": {"solved later": 0, "never solved": 1}}


def test_tag_margin_summarises_per_family_and_flags_knife_edges() -> None:
    from benchmarks.tag_margin import summarise

    probs = [{"cot": 0.5, "l2m": 0.4, "pot": 0.1},   # top two 0.1 apart: knife-edge
             {"cot": 0.1, "l2m": 0.1, "pot": 0.8},
             {"cot": 0.2, "l2m": 0.7, "pot": 0.1}]
    out = summarise(probs, ["a", "a", "b"])
    assert out["a"]["n"] == 2 and out["all"]["n"] == 3
    assert out["a"]["mean"] == pytest.approx({"cot": 0.3, "l2m": 0.25, "pot": 0.45})
    assert out["a"]["greedy"] == {"cot": 0.5, "l2m": 0.0, "pot": 0.5}
    assert out["a"]["knife_edge"] == 0.5 and out["b"]["knife_edge"] == 0.0
    assert out["all"]["knife_edge"] == pytest.approx(1 / 3)


def test_tag_probabilities_are_the_models_next_token_odds_after_the_bracket() -> None:
    import torch

    from benchmarks.tag_margin import tag_probabilities
    from siked_runtime.models import chat_prompt, load_student
    from siked_runtime.strategies import STRATEGIES, build_prompt

    model, tokenizer = load_student("builtin:smollm2-135m-instruct", dtype="float32", device="cpu")
    questions = ["Tom has 3 apples and buys 4 more. How many now?", "A van holds 7 people. How many vans for 30?"]
    got = tag_probabilities(model, tokenizer, questions, batch_size=2)  # padded batch
    for question, probs in zip(questions, got):
        ids = tokenizer(chat_prompt(tokenizer, build_prompt(question)) + "[", return_tensors="pt")
        with torch.no_grad():
            logits = model(**ids).logits[0, -1]
        cols = [tokenizer(f"[{s}]", add_special_tokens=False)["input_ids"][1] for s in STRATEGIES]
        expected = torch.softmax(logits[cols], dim=-1).tolist()
        assert [probs[s] for s in STRATEGIES] == pytest.approx(expected, abs=1e-4)
        assert sum(probs.values()) == pytest.approx(1.0)


def test_forced_tag_compares_on_the_first_questions_of_each_family() -> None:
    from benchmarks.forced_tag import first_per_family, own_choice

    records = [{"id": str(i), "meta": {"family": "ab"[i % 2]}} for i in range(7)]
    chosen = first_per_family(records, 2)
    assert [r["id"] for r in chosen] == ["0", "1", "2", "3"]
    predictions = {"0": {"verdict": "correct"}, "1": {"verdict": "wrong", "completion": "[cot]\n2 + 2 = 5.\nAnswer: 5"},
                   "2": {"verdict": "wrong"}, "3": {"verdict": "correct"}}
    own = own_choice(predictions, chosen)
    assert {f: {k: c[k] for k in ("correct", "n", "accuracy")} for f, c in own.items()} == {
        "a": {"correct": 1, "n": 2, "accuracy": 0.5}, "b": {"correct": 1, "n": 2, "accuracy": 0.5}}
    assert own["b"]["claims"]["arithmetic_false"] == 1 and own["b"]["claims"]["wrong_with_false_claim"] == 1


def test_batch_mix_summarises_what_the_steps_saw() -> None:
    from benchmarks.batch_mix import chosen, summarise

    rows = [{"id": "q1", "strategy": "cot", "source": "teacher"}, {"id": "q1", "strategy": "pot", "source": "self"},
            {"id": "q2", "strategy": "pot", "source": "teacher"}, {"id": "q3", "strategy": "l2m", "source": "teacher"}]
    steps = [{"rows": [0, 1], "tokens": 10, "learning_rate": 3.0}, {"rows": [1, 3], "tokens": 7, "learning_rate": 1.0}]
    out = summarise(rows, steps, {"q1": "a", "q3": "b"})
    assert out["file"] == {"cot": 0.25, "l2m": 0.25, "pot": 0.5}
    assert out["seen"] == {"cot": 0.25, "l2m": 0.25, "pot": 0.5} and out["seen_rows"] == 4
    assert out["distinct_seen"] == 3 and out["self_seen"] == 2 and out["tokens"] == 17
    assert out["lr_weighted"] == {"cot": 0.375, "l2m": 0.125, "pot": 0.5}  # (3, 1, 3 + 1) / 8
    assert out["families"] == {"a": {"seen_rows": 3, "seen": {"cot": 0.333, "l2m": 0.0, "pot": 0.667}},
                               "b": {"seen_rows": 1, "seen": {"cot": 0.0, "l2m": 1.0, "pot": 0.0}}}
    predictions = [{"id": "t1", "strategy": "pot"}, {"id": "t2", "strategy": "cot"}, {"id": "t3", "strategy": "pot"}]
    assert chosen(predictions, {"t1": "a", "t2": "a", "t3": "all"}) == {
        "all": {"n": 3, "cot": 0.333, "l2m": 0.0, "pot": 0.667}, "a": {"n": 2, "cot": 0.5, "l2m": 0.0, "pot": 0.5}}


def test_batch_mix_replays_the_trainers_own_batches(tmp_path: Path) -> None:
    """The replay draws exactly the batches a real training run of the same rows and seed trains on."""
    from benchmarks.batch_mix import replay_batches
    from siked_runtime.models import resolve_model
    from siked_runtime.spec import LoraSpec, StudentSpec, TrainingSpec
    from siked_runtime.strategies import build_prompt, format_solution
    from siked_runtime.training import train_sft

    tiny = resolve_model("builtin:tiny-random", cache_dir=tmp_path / "models")
    rows = []
    for i in range(10):  # three strategies of different lengths, so batches group by length
        strategy = ("cot", "l2m", "pot")[i % 3]
        body = " then ".join([f"add {i}"] * (1 + 3 * (i % 3)))
        rows.append({"prompt": build_prompt(f"Question {i}: what is {i} + {i}?"), "strategy": strategy,
                     "completion": format_solution(strategy, body, 2 * i)})
    # No dropout: the replay skips the forward passes, so it is exact past the first epoch only
    # when the steps draw no random numbers (the shipped examples train LoRA without dropout).
    student = StudentSpec(model="builtin:tiny-random", finetune="lora", lora=LoraSpec(dropout=0.0))
    training = TrainingSpec(max_steps=4, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, lr_scheduler="linear")
    trained = train_sft(tiny, rows, tmp_path / "model", student, training, seed=3)
    steps = replay_batches(tiny, rows, student, training, seed=3)
    assert len(steps) == trained["steps"] == 4
    assert sum(s["tokens"] for s in steps) == trained["tokens"]
    # Ten rows in batches of four: one epoch is three steps (4, 4, 2), each row exactly once.
    assert [len(s["rows"]) for s in steps[:3]] == [4, 4, 2]
    assert sorted(i for s in steps[:3] for i in s["rows"]) == list(range(10))
    assert [s["learning_rate"] for s in steps] == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])


def test_batch_invariance_compares_each_question_alone_and_batched():
    from benchmarks.batch_invariance import measure, same_share

    assert same_share([["a", "b"], ["c", "d"]], [["a", "x"], ["c", "d"]]) == 0.75
    questions = ["What is 2 + 3?", "A farmer has 12 cows and buys 7 more. How many cows?", "Sam reads 5 pages a day."]
    result = measure("float32", questions, k=2, max_new_tokens=8, model="builtin:tiny-random")
    assert result["dtype"] == "float32" and result["questions"] == 3 and result["k"] == 2
    # float32: the same logits to rounding, so the same samples and answers alone as in one batch
    assert result["max_logit_difference"] < 1e-3
    assert result["samples_identical"] == result["greedy_identical"] == result["same_first_token"] == 1.0


def test_quickstart_routing_takes_every_tied_best_strategy_from_the_saved_pilot(tmp_path: Path) -> None:
    import yaml

    from benchmarks.quickstart_seeds import best_strategies
    from benchmarks.student import QUICKSTART
    from siked_runtime.spec import parse_manifest

    run = parse_manifest(yaml.safe_load(QUICKSTART.read_text()), "quickstart")
    cell = lambda c, n=30: {"correct": c, "n": n, "accuracy": c / n}  # noqa: E731
    table = {"piecewise": {"cot": cell(8), "l2m": cell(8), "pot": cell(3)},
             "big_arithmetic": {"cot": cell(0), "l2m": cell(0), "pot": cell(20)}}
    (tmp_path / "routing-pilot-1.json").write_text(json.dumps({"iteration": 1, "table": table}))
    best = best_strategies(run, tmp_path, 1)   # read back: nothing is generated
    assert best["piecewise"]["best"] == ["cot", "l2m"]
    assert best["big_arithmetic"]["best"] == ["pot"]
    assert best["piecewise"]["accuracy"]["pot"] == pytest.approx(0.1) and best["piecewise"]["n"] == 30


def test_quickstart_routing_share_counts_questions_routed_to_one_of_their_familys_best() -> None:
    from benchmarks.quickstart_seeds import routing

    best = {"big_arithmetic": {"best": ["pot"]}, "piecewise": {"best": ["cot", "l2m"]}}
    family = {"q1": "big_arithmetic", "q2": "big_arithmetic", "q3": "piecewise", "q4": "piecewise"}
    first = {"q1": {"strategy": "cot"}, "q2": {"strategy": "pot"}, "q3": {"strategy": "pot"}, "q4": {"strategy": "cot"}}
    final = {"q1": {"strategy": "pot"}, "q2": {"strategy": "pot"}, "q3": {"strategy": "l2m"}, "q4": {"strategy": None}}
    r = routing(best, family, first, final, seed=0)
    assert (r["iteration0"], r["final"]) == (0.5, 0.75)
    assert r["change"]["diff"] == pytest.approx(0.25) and r["change"]["ci"][0] <= 0.25 <= r["change"]["ci"][1]


def test_quickstart_reference_is_pooled_over_seeds_and_questions_paired() -> None:
    from benchmarks.quickstart_seeds import pooled

    def seed(siked, combined):
        return {"combined": {"sets": {"synthetic-test": {"n": len(siked), "siked_correct": siked,
                                                         "combined_correct": combined}}}}

    # Seed 0: SIKeD solves 3 questions combined misses; seed 1: combined solves 1 SIKeD misses.
    results = [seed([1, 1, 1, 0], [0, 0, 0, 0]), seed([0, 1, 0, 1], [1, 1, 0, 1])]
    d = pooled(results, "synthetic-test")
    assert d["diff"] == pytest.approx((3 - 1) / 8)
    assert pooled(results[:1], "synthetic-test") is None          # one seed: nothing to pool
    assert pooled(results + [seed([1], [0])], "synthetic-test") is None  # unequal sets cannot pair
