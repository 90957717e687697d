"""SKIntern inside the stages: the teacher's knowledge, and training rows for a share S_t.

    rows = write_knowledge(spec, store, records, solutions)     # teacher stage: teacher/knowledge.jsonl.gz
    builder = PromptBuilder(spec, store)                        # train stages
    rows, stats = builder.rows(teacher_rows, share=0.667)

`PromptBuilder` compresses each question's knowledge to S_t of its tokens (keeping the numbers
its solution uses), adds the ⌊K·S_t⌋ most similar training questions with their teacher
solutions, and measures what that costs in prompt tokens.
"""

from __future__ import annotations

from collections import Counter

from siked_runtime.compression import number_strings
from siked_runtime.graph import TEACHER
from siked_runtime.internalization import examples_at, internalized_prompt
from siked_runtime.knowledge import (
    knowledge_messages,
    knowledge_text,
    oracle_knowledge,
    parse_knowledge,
    rule_knowledge,
)
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import log
from siked_runtime.stages.data import train_questions
from siked_runtime.storage import JOURNAL, Store
from siked_runtime.teachers.journal import Journal

KNOWLEDGE = "teacher/knowledge.jsonl.gz"
# The journal's `strategy` of a knowledge request: apart from the solutions' cot/l2m/pot.
KNOWLEDGE_REQUEST = "knowledge"


def teacher_knowledge(spec: DistillationSpec, records: list[dict], solutions: dict[str, str],
                      journal: Journal) -> list[dict]:
    """One knowledge row per record from the spec's teacher; `solutions` maps id → a verified solution.

    An `openai` teacher's replies go through `journal` as they arrive, as the teacher stage's
    solutions do: a rerun after a crash reuses them instead of paying again. A request that
    failed for good gets the rule-based knowledge, as a malformed reply does."""
    kind = spec.teacher.kind
    if kind == "oracle":
        return [oracle_knowledge(r) if r.get("meta", {}).get("graph") else rule_knowledge(r, solutions.get(r["id"]))
                for r in records]
    if kind == "gold":
        return [rule_knowledge(r, solutions.get(r["id"])) for r in records]
    conversations = [knowledge_messages(r["question"], solutions.get(r["id"])) for r in records]
    if kind == "openai":
        from siked_runtime.teachers.openai_api import Ask, ChatClient, collect

        asks = [Ask(r["id"], KNOWLEDGE_REQUEST, messages) for r, messages in zip(records, conversations, strict=True)]
        batch = collect(ChatClient.from_spec(spec.teacher), asks, 1, journal)
        replies = [(batch.entries[a.id, a.strategy] or [{"text": ""}])[0]["text"] for a in asks]
        log(f"teacher: knowledge replies {len(asks) - len(batch.failures)}/{len(asks)} "
            f"({batch.reused} from the journal, {len(batch.failures)} failed)")
    else:
        from siked_runtime.teachers.local import ask_local

        replies = ask_local(spec.teacher, conversations, spec.sampling, seed=spec.seed,
                            gpus=spec.resources.for_stage("teacher").gpus)
    return [parse_knowledge(r, reply, solutions.get(r["id"])) for r, reply in zip(records, replies, strict=True)]


def write_knowledge(spec: DistillationSpec, store: Store, records: list[dict], kept: list[dict]) -> dict:
    """The teacher stage's knowledge for the training questions, and counts for its manifest."""
    solutions = {}
    for row in kept:  # a cot solution where there is one: it reads closest to the knowledge asked for
        if row["id"] not in solutions or row["strategy"] == "cot":
            solutions[row["id"]] = row["completion"]
    rows = teacher_knowledge(spec, records, solutions, Journal(store, f"{TEACHER}/{JOURNAL}"))
    store.write_jsonl(KNOWLEDGE, rows)
    sources = Counter(r["source"] for r in rows)
    problems = sum(1 for r in rows if r.get("problem"))
    log(f"teacher: knowledge for {len(rows)} questions ({dict(sources)}; {problems} malformed replies replaced)")
    return {"questions": len(rows), "sources": dict(sources), "malformed_replies": problems,
            "knowledge": store.url(KNOWLEDGE)}


class PromptBuilder:
    """Training prompts at any share S_t, for one run; loads the student's tokenizer and compressor once."""

    def __init__(self, spec: DistillationSpec, store: Store):
        from siked_runtime.models import load_tokenizer, resolve_model
        from siked_runtime.retrieval import similar_examples

        self.spec, self.settings = spec, spec.skintern
        if not store.exists(KNOWLEDGE):
            raise ValueError(f"{store.url(KNOWLEDGE)} is missing: the teacher stage writes it when the run "
                             "uses SKIntern (method skintern, or an internalization section)")
        self.knowledge = {r["id"]: r for r in store.read_jsonl(KNOWLEDGE)}
        self.questions = {r["id"]: r["question"] for r in train_questions(spec)}
        self.solutions: dict[str, dict[str, str]] = {}
        for r in store.read_jsonl("teacher/solutions.jsonl.gz"):
            self.solutions.setdefault(r["id"], {}).setdefault(r["strategy"], r["completion"])
        self.pool = [i for i in self.questions if i in self.solutions]  # questions that can serve as examples
        ids = list(self.questions)
        nearest = similar_examples(self.settings.retriever, [self.questions[i] for i in ids],
                                   self.settings.examples, pool=[self.questions[i] for i in self.pool])
        self.neighbours = {i: [self.pool[j] for j in near] for i, near in zip(ids, nearest)}
        self._compressor = None
        self.tokenizer = load_tokenizer(resolve_model(spec.student.model))

    @property
    def compressor(self):
        """Loaded on first use: measuring prompts needs only the tokenizer."""
        if self._compressor is None:
            from siked_runtime.compression import make_compressor

            self._compressor = make_compressor(self.settings.compressor, self.spec.student.model)
        return self._compressor

    def count(self, text: str) -> int:
        """Tokens of `text` alone, under the student's tokenizer."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def prompt_tokens(self, user_text: str) -> int:
        """Tokens of the full chat prompt the student reads for `user_text`."""
        from siked_runtime.models import chat_prompt

        return len(self.tokenizer(chat_prompt(self.tokenizer, user_text), add_special_tokens=False)["input_ids"])

    def example(self, example_id: str, strategy: str) -> tuple[str, str]:
        by_strategy = self.solutions[example_id]
        return self.questions[example_id], by_strategy.get(strategy) or next(iter(by_strategy.values()))

    def prompt(self, question_id: str, strategy: str, share: float, keep: set[str]) -> tuple[str, int, int]:
        """(prompt, knowledge tokens kept, knowledge tokens in full) for one row."""
        row = self.knowledge.get(question_id)
        full = kept = 0
        text = ""
        if row is not None:
            full = sum(self.count(row[f]) for f in ("summary", "knowledge"))
        if row is not None and share > 0:
            text = knowledge_text(row, lambda t: self.compressor.compress(t, share, keep=keep))
            kept = sum(self.count(line.split(": ", 1)[1]) for line in text.splitlines() if ": " in line)
        examples = [self.example(e, strategy) for e in self.neighbours.get(question_id, [])]
        examples = examples[: examples_at(self.settings.examples, share)]
        return internalized_prompt(self.questions[question_id], text, examples), kept, full

    def rows(self, base_rows: list[dict], share: float) -> tuple[list[dict], dict]:
        """`base_rows` ({id, strategy, completion, …}) with their stage-t prompts, and the stage's numbers."""
        out, kept_total, full_total, prompt_tokens, longest = [], 0, 0, 0, 0
        for r in base_rows:
            prompt, kept, full = self.prompt(r["id"], r["strategy"], share, number_strings(r["completion"]))
            kept_total, full_total = kept_total + kept, full_total + full
            tokens = self.prompt_tokens(prompt)
            prompt_tokens, longest = prompt_tokens + tokens, max(longest, tokens)
            out.append({**r, "prompt": prompt})
        limit = self.spec.student.max_seq_length
        if longest >= limit - 8:
            # Truncation would cut the whole completion off such rows, and the trainer drop them.
            raise ValueError(
                f"SKIntern prompts at share {share:.2f} reach {longest} tokens, but student.maxSeqLength is {limit}: "
                f"raise maxSeqLength to at least {longest + 256}, or lower internalization.examples")
        stats = {
            "share": round(share, 4),
            "examples": examples_at(self.settings.examples, share),
            "knowledge_kept": round(kept_total / full_total, 4) if full_total else None,
            "prompt_tokens_per_example": round(prompt_tokens / len(out), 1) if out else None,
        }
        return out, stats
