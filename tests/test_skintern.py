"""SKIntern: the schedule, knowledge writers, the compressor, retrieval, and a run end to end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from siked_runtime.graph import REFERENCE, TEACHER, StageKey, plan
from siked_runtime.internalization import examples_at, internalized_prompt, shares
from siked_runtime.knowledge import facts_for, knowledge_text, oracle_knowledge, parse_knowledge, rule_knowledge
from siked_runtime.retrieval import RETRIEVERS, similar_examples
from siked_runtime.spec import DistillationSpec, InternalizationSpec, load_manifest
from siked_runtime.strategies import INSTRUCTION, build_prompt
from siked_runtime.synthetic import generate
from chat_server import send_choices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "builtin:smollm2-135m-instruct"

# --- the schedule ------------------------------------------------------------------------------


def test_linear_schedule_is_the_papers():
    assert shares(InternalizationSpec()) == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert [examples_at(2, s) for s in shares(InternalizationSpec())] == [2, 1, 0, 0]
    assert [examples_at(3, s) for s in shares(InternalizationSpec())] == [3, 2, 1, 0]


@pytest.mark.parametrize("stages", [2, 3, 4, 7])
def test_every_schedule_starts_full_ends_empty_and_decreases(stages):
    for schedule in ("linear", "exponential", "inverse-exponential"):
        s = shares(InternalizationSpec(stages=stages, schedule=schedule))
        assert len(s) == stages and s[0] == 1 and s[-1] == 0
        assert all(a > b for a, b in zip(s, s[1:])), (schedule, s)


def test_exponential_drops_early_and_inverse_exponential_late():
    linear = shares(InternalizationSpec(schedule="linear"))
    assert all(e < l for e, l in zip(shares(InternalizationSpec(schedule="exponential"))[1:-1], linear[1:-1]))
    assert all(i > l for i, l in zip(shares(InternalizationSpec(schedule="inverse-exponential"))[1:-1], linear[1:-1]))


def test_explicit_schedule_and_its_length_check():
    assert shares(InternalizationSpec(stages=3, schedule=[1.0, 0.5, 0.0])) == [1.0, 0.5, 0.0]
    assert shares(InternalizationSpec(stages=1)) == [0.0]
    with pytest.raises(ValidationError, match="needs 4 shares"):
        InternalizationSpec(stages=4, schedule=[1.0, 0.0])
    with pytest.raises(ValidationError, match="compressor"):
        InternalizationSpec(compressor="zip")
    with pytest.raises(ValidationError, match="retriever"):
        InternalizationSpec(retriever="grep")


def test_share_zero_prompt_is_the_inference_prompt():
    q = "Ann has 3 apples. How many?"
    assert internalized_prompt(q, "", []) == build_prompt(q)
    full = internalized_prompt(q, "Knowledge: A dozen is 12.", [("Bo has 2 pens. How many?", "[cot]\nAnswer: 2")])
    assert full.startswith("Knowledge: A dozen is 12.") and full.endswith(build_prompt(q))
    assert "Example question: Bo has 2 pens." in full


# --- knowledge ---------------------------------------------------------------------------------


def test_oracle_knowledge_names_the_steps_the_operations_and_the_word_facts():
    record = next(r for r in generate(40, seed=3, families=["equal_groups"]) if "dozen" in r["question"])
    k = oracle_knowledge(record)
    assert "A dozen is 12." in k["knowledge"]
    for node in record["meta"]["graph"]:
        assert node["text"] in k["summary"]
    assert len(k["knowledge"].split(". ")) == len(set(k["knowledge"].split(". ")))  # no sentence twice
    with pytest.raises(ValueError, match="meta.graph"):
        oracle_knowledge({"id": "x", "question": "q"})


def test_rule_knowledge_reads_operators_from_the_solution():
    k = rule_knowledge({"id": "g1", "question": "She buys 2 dozen eggs for a week."},
                       "[cot]\n2 * 12 = 24 eggs.\n24 / 7 is not whole, so 24 - 3 = 21.\nAnswer: 21")
    assert "A dozen is 12." in k["knowledge"] and "A week has 7 days." in k["knowledge"]
    assert "Equal groups" in k["knowledge"] and "Sharing equally" in k["knowledge"] and "Taking away" in k["knowledge"]
    assert "Combining" not in k["knowledge"]
    assert facts_for("Nothing special here.") == []


def test_model_replies_are_parsed_and_malformed_ones_replaced():
    record = {"id": "q", "question": "Tom has half a dozen eggs."}
    reply = "**Learning summary:** Find the eggs first.\n\n**Supplementary knowledge:** A dozen is 12."
    k = parse_knowledge(record, reply)
    assert k == {"id": "q", "summary": "Find the eggs first.", "knowledge": "A dozen is 12.", "source": "teacher"}
    bad = parse_knowledge(record, "The answer is 6.")
    assert bad["source"] == "rules" and "A dozen is 12." in bad["knowledge"] and "lacks" in bad["problem"]
    assert knowledge_text(k) == "Summary: Find the eggs first.\nKnowledge: A dozen is 12."
    assert knowledge_text(k, lambda t: "") == ""


class KnowledgeServer(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    requests = 0

    def do_POST(self):
        type(self).requests += 1
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = body["messages"][-1]["content"]
        text = ("Learning summary: Count the groups.\nSupplementary knowledge: A pair is 2."
                if "pairs" in prompt else "I cannot help with that.")
        send_choices(self, [text])


def test_openai_teacher_writes_knowledge_over_http(tmp_path):
    from siked_runtime.stages.internalize import teacher_knowledge
    from siked_runtime.storage import open_store
    from siked_runtime.teachers.journal import Journal

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), KnowledgeServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        spec = DistillationSpec.model_validate({
            "method": "skintern", "student": {"model": "builtin:tiny-random"},
            "teacher": {"kind": "openai", "model": "t", "endpoint": f"http://127.0.0.1:{httpd.server_address[1]}/v1"}})
        records = [{"id": "a", "question": "He has 3 pairs of socks."}, {"id": "b", "question": "She has 5 pens."}]
        rows = teacher_knowledge(spec, records, {"a": "[cot]\n3 * 2 = 6\nAnswer: 6"},
                                 Journal(open_store(tmp_path.as_uri()), "teacher/journal"))
    finally:
        httpd.shutdown()
    assert rows[0]["source"] == "teacher" and rows[0]["knowledge"] == "A pair is 2."
    assert rows[1]["source"] == "rules" and rows[1]["problem"]


def test_knowledge_replies_are_journaled_and_never_paid_twice(tmp_path):
    """A rerun of the teacher stage (after a crash past the knowledge requests) reuses the journal."""
    from siked_runtime.stages.internalize import teacher_knowledge
    from siked_runtime.storage import open_store
    from siked_runtime.teachers.journal import Journal

    KnowledgeServer.requests = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), KnowledgeServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    store = open_store(tmp_path.as_uri())
    try:
        spec = DistillationSpec.model_validate({
            "method": "skintern", "student": {"model": "builtin:tiny-random"},
            "teacher": {"kind": "openai", "model": "t", "endpoint": f"http://127.0.0.1:{httpd.server_address[1]}/v1"}})
        records = [{"id": "a", "question": "He has 3 pairs of socks."}, {"id": "b", "question": "She has 5 pens."}]
        first = teacher_knowledge(spec, records, {}, Journal(store, "teacher/journal"))
        paid = KnowledgeServer.requests
        again = teacher_knowledge(spec, records, {}, Journal(store, "teacher/journal"))
    finally:
        httpd.shutdown()
    assert paid == 2 and KnowledgeServer.requests == 2  # the second pass sent nothing
    assert again == first and first[0]["knowledge"] == "A pair is 2." and first[1]["source"] == "rules"
    assert store.list("teacher/journal")  # kept in the stage's storage, where a rerun finds it


# --- compression -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compressor():
    from siked_runtime.compression import make_compressor

    return make_compressor("self-information", STUDENT)


def _texts():
    return [knowledge_text(oracle_knowledge(r)) for r in generate(6, seed=5, families=["equal_groups", "unit_rates"])]


@pytest.mark.slow
@pytest.mark.parametrize("share", [0.67, 0.33])
def test_compressor_keeps_about_the_share_of_tokens(compressor, share):
    for text in _texts():
        kept = compressor.count(compressor.compress(text, share))
        assert abs(kept / compressor.count(text) - share) <= 0.08, (share, text)


@pytest.mark.slow
def test_compressor_keeps_every_number_it_is_asked_to(compressor):
    from siked_runtime.compression import number_strings

    for text in _texts():
        needed = number_strings(text)
        out = compressor.compress(text, 0.2, keep=needed)
        assert needed <= number_strings(out), (needed, out)
        assert compressor.count(out) < compressor.count(text)


@pytest.mark.slow
def test_compressor_drops_the_least_informative_words_and_keeps_lines(compressor):
    text = _texts()[0]
    out = compressor.compress(text, 0.5)
    kept_words = out.split()
    scores = compressor.word_scores(text)
    kept = [info for word, info, _ in scores if word in kept_words]
    dropped = [info for word, info, _ in scores if word not in kept_words and word.rstrip(".:;") not in kept_words]
    assert kept and dropped and sum(kept) / len(kept) > 1.5 * sum(dropped) / len(dropped)
    assert len(out.splitlines()) == len(text.splitlines())
    assert all(line.rstrip()[-1] in ".;:" for line in out.splitlines())  # sentences keep their end marks
    assert compressor.compress(text, 1.0) == text and compressor.compress(text, 0.0) == ""


def test_unknown_compressor_and_missing_llmlingua_are_reported():
    from siked_runtime.compression import LLMLinguaCompressor, make_compressor

    with pytest.raises(ValueError, match="unknown compressor"):
        make_compressor("gzip", STUDENT)
    try:
        import llmlingua  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install llmlingua"):
            LLMLinguaCompressor()


# --- retrieval ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", RETRIEVERS)
def test_no_question_retrieves_itself_or_its_duplicate(kind):
    questions = [r["question"] for r in generate(24, seed=4, families=["short_story", "big_arithmetic"])]
    questions.append(questions[0])  # a duplicate of question 0
    nearest = similar_examples(kind, questions, k=3)
    for i, near in enumerate(nearest):
        assert len(near) == 3 and i not in near
        assert all(questions[j] != questions[i] for j in near)


@pytest.mark.parametrize("kind", RETRIEVERS)
def test_the_closest_paraphrase_comes_first(kind):
    pool = ["Mia buys 3 boxes of 12 pencils and gives away 5 pencils. How many pencils are left?",
            "A factory makes 1,250 cars a day for 31 days. How many cars does it make?",
            "A tap fills 250 ml per second. How many litres in 2 minutes?"]
    query = ["Leo buys 4 boxes of 10 pencils and gives away 7 pencils. How many pencils are left?"]
    assert similar_examples(kind, query, k=2, pool=pool)[0][0] == 0


def test_unknown_retriever():
    with pytest.raises(ValueError, match="unknown retriever"):
        similar_examples("grep", ["a b", "c d"], k=1)


# --- the stage graph ---------------------------------------------------------------------------


def _spec(**internalization) -> DistillationSpec:
    return DistillationSpec.model_validate({"method": "skintern", "student": {"model": "builtin:tiny-random"},
                                            "internalization": internalization})


def test_reference_runs_after_the_teacher_beside_the_chain_and_export_waits_for_it():
    spec = _spec(stages=2)
    assert StageKey(REFERENCE) not in plan(spec, {}).runnable
    done = {"teacher": {}, "baseline": {}}
    assert set(plan(spec, done).runnable) == {StageKey(REFERENCE), StageKey("train", 0)}
    done |= {"iter-000/train": {}, "iter-000/eval": {"accuracy": {"validation": 0.9}},
             "iter-001/train": {}, "iter-001/eval": {"accuracy": {"validation": 0.1}}}
    assert plan(spec, done).runnable == (StageKey(REFERENCE),)  # the schedule ran out; export waits
    assert plan(spec, done | {"reference": {}}).runnable == (StageKey("export"),)
    assert plan(spec, done).best_iteration == 1  # the last stage, though stage 0 scored higher
    assert StageKey(REFERENCE) not in plan(_spec(stages=2, reference=False), {"teacher": {}}).runnable


# --- a run end to end --------------------------------------------------------------------------


@pytest.mark.slow
def test_skintern_run_end_to_end(tmp_path):
    from siked_runtime.local_runner import run_local
    from siked_runtime.storage import list_manifests, open_store

    run = load_manifest(ROOT / "examples" / "smoke.yaml")
    spec = run.spec.model_copy(update={
        "method": "skintern", "strategies": ["cot"],
        "student": run.spec.student.model_copy(update={"max_seq_length": 768}),
        "internalization": InternalizationSpec(stages=3, examples=2, epochs_per_stage=1)})
    run = run.model_copy(update={"spec": spec})
    report = run_local(run, tmp_path)
    done = list_manifests(open_store(str(tmp_path)))
    assert {"teacher", REFERENCE, "iter-002/eval", "final"} <= set(done) and "iter-001/sample" not in done
    stages = [done[f"iter-00{t}/train"]["internalization"][0] for t in range(3)]
    assert [s["share"] for s in stages] == [1.0, 0.5, 0.0]
    assert [s["examples"] for s in stages] == [2, 1, 0]
    assert stages[0]["knowledge_kept"] == 1.0 and stages[2]["knowledge_kept"] == 0.0
    assert stages[0]["prompt_tokens_per_example"] > stages[1]["prompt_tokens_per_example"] \
        > stages[2]["prompt_tokens_per_example"]
    assert done["iter-001/train"]["base_model"].endswith("iter-000/train/model")
    tokens = done[REFERENCE]["inference_prompt_tokens"]
    assert tokens["knowledge_augmented"] > tokens["question_only"] > 0
    assert done[REFERENCE]["epochs"] == 3
    markdown = (tmp_path / "report.md").read_text()
    assert "## SKIntern schedule" in markdown and "standard CoT distillation (3 epochs)" in markdown
    assert "knowledge-augmented" in markdown
    assert report["skintern"]["reference"]["accuracy"]["validation"] is not None
    # the last stage trains on exactly the inference prompt; the first carries knowledge and examples
    store = open_store(str(tmp_path))
    last = list(store.read_jsonl("iter-002/train/data.jsonl.gz"))
    first = list(store.read_jsonl("iter-000/train/data.jsonl.gz"))
    assert last and all(r["prompt"].startswith(INSTRUCTION) for r in last)
    assert all(r["prompt"].startswith("Summary: ") and "Example question:" in r["prompt"] for r in first)


def test_prompts_longer_than_max_seq_length_are_refused_before_training(tmp_path):
    from siked_runtime.stages import run_stage
    from siked_runtime.storage import open_store

    spec = load_manifest(ROOT / "examples" / "smoke.yaml").spec.model_copy(update={
        "method": "skintern", "internalization": InternalizationSpec(examples=2)})  # maxSeqLength 256
    store = open_store(str(tmp_path))
    run_stage(spec, store, StageKey(TEACHER))
    with pytest.raises(ValueError, match=r"student.maxSeqLength is 256: raise maxSeqLength to at least \d+"):
        run_stage(spec, store, StageKey("train", 0))
    assert not (tmp_path / "iter-000" / "train" / "manifest.json").exists()
