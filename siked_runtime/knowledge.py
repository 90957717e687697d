"""Teacher knowledge for SKIntern: per question, a learning summary and supplementary knowledge.

    {"id": "synth-1-3", "summary": "Work it out one quantity at a time: …",
     "knowledge": "A dozen is 12. Equal groups: total = number of groups * size of each group.",
     "source": "oracle"}

SKIntern (arXiv 2409.13183) has the teacher write, for each question, a *learning summary*
(the general thought steps) and *supplementary knowledge* (formulas, definitions). Writers:

* `oracle_knowledge` — synthetic problems: the steps come from the computation graph, the
  formulas from the operations it uses, the facts from the words in the question;
* `rule_knowledge` — any question with a worked solution (the `gold` teacher): formulas from
  the operators the solution uses, facts from the question's words;
* model teachers (`openai`, `local`): `knowledge_messages` asks for both parts, and
  `parse_knowledge` reads the reply. A reply without both parts gets the rule-based
  knowledge instead, marked `source: rules`, so no question is left without knowledge.
"""

from __future__ import annotations

import re

# Word → fact: what a student must know to turn the question's words into numbers.
FACTS: tuple[tuple[str, str], ...] = (
    (r"\bdozens?\b", "A dozen is 12."),
    (r"\bhalf\b|\bhalves\b", "Half of an amount is the amount / 2."),
    (r"\bthird\b", "A third of an amount is the amount / 3."),
    (r"\bquarter\b", "A quarter of an amount is the amount / 4."),
    (r"\btwice\b|\bdouble\b", "Twice an amount is 2 * the amount."),
    (r"\btriple\b|\bthree times\b", "Three times an amount is 3 * the amount."),
    (r"\bpairs?\b", "A pair is 2."),
    (r"\bweeks?\b", "A week has 7 days."),
    (r"\bhours?\b", "An hour has 60 minutes."),
    (r"\bminutes?\b.*\bseconds?\b|\bseconds?\b.*\bminutes?\b", "A minute has 60 seconds."),
    (r"\bmillilit(?:re|er)s?\b|\bml\b", "A litre is 1000 millilitres."),
    (r"\bgrams?\b.*\bkilo|\bkilo.*\bgrams?\b", "A kilogram is 1000 grams."),
    (r"\bpercent\b|%", "p% of an amount is the amount * p / 100."),
    (r"\bchange\b", "The change is the money paid minus the cost."),
    (r"\byears?\b.*\bmonths?\b|\bmonths?\b.*\byears?\b", "A year has 12 months."),
)

OPERATIONS = {
    "add": "Combining amounts: total = the sum of the parts.",
    "sub": "Taking away: what is left = the starting amount - the amount removed.",
    "mul": "Equal groups: total = number of groups * size of each group.",
    "div": "Sharing equally: each share = total / number of shares.",
    "pct": "A percentage: p% of an amount = amount * p / 100.",
}
_OPERATORS = {"+": "add", "-": "sub", "*": "mul", "×": "mul", "/": "div", "÷": "div", "%": "pct"}


def facts_for(question: str) -> list[str]:
    text = question.lower()
    return [fact for pattern, fact in FACTS if re.search(pattern, text)]


def _join(*parts: list[str]) -> str:
    seen: list[str] = []
    for part in parts:
        for sentence in part:
            if sentence not in seen:
                seen.append(sentence)
    return " ".join(seen)


def oracle_knowledge(record: dict) -> dict:
    """Knowledge for a synthetic record, from its computation graph."""
    graph = record.get("meta", {}).get("graph")
    if not graph:
        raise ValueError(f"record {record.get('id')!r} has no meta.graph: oracle knowledge needs synthetic problems")
    steps = [n["text"] for n in graph]
    summary = "Work it out one quantity at a time"
    summary += (": first find " + "; then ".join(steps[:-1]) + "; finally " if len(steps) > 1 else ": find ") + f"{steps[-1]}."
    ops = [OPERATIONS[n["op"]] for n in graph if n["op"] in OPERATIONS]
    return {"id": record["id"], "summary": summary, "knowledge": _join(facts_for(record["question"]), ops),
            "source": "oracle"}


def rule_knowledge(record: dict, solution: str | None = None) -> dict:
    """Knowledge from the question's words and the operators of a worked solution (if any)."""
    ops = []
    if solution:
        for line in solution.splitlines():
            for symbol in re.findall(r"(?<=[\w)\s])\s*([-+*/×÷%])\s*(?=[\w(])", line):
                op = OPERATIONS[_OPERATORS[symbol]]
                if op not in ops:
                    ops.append(op)
        n = sum(1 for line in solution.splitlines() if "=" in line)
        summary = (f"Break the problem into {n} steps: find each intermediate quantity from the numbers given, "
                   "then combine them into the answer.") if n > 1 else "Find the quantity asked for from the numbers given."
    else:
        summary = "List what is given and what is asked, find each intermediate quantity, then combine them."
    return {"id": record["id"], "summary": summary, "knowledge": _join(facts_for(record["question"]), ops),
            "source": "rules"}


def knowledge_text(row: dict, shorten=None) -> str:
    """The knowledge block of a training prompt; `shorten(text)` compresses each part's content.

    The part labels are template, not knowledge: they stay while anything of their part does.
    """
    parts = []
    for label, field in (("Summary", "summary"), ("Knowledge", "knowledge")):
        text = row[field].strip()
        text = shorten(text) if shorten and text else text
        if text:
            parts.append(f"{label}: {text}")
    return "\n".join(parts)


# --- model teachers --------------------------------------------------------------------------

KNOWLEDGE_INSTRUCTION = (
    "You are teaching a small model to solve math word problems. For the problem below, write two parts and "
    "nothing else:\n"
    "Learning summary: the general thought steps that solve problems like this one (2-3 sentences).\n"
    "Supplementary knowledge: the formulas, definitions and unit facts it needs (1-4 short sentences).\n"
    "Do not state the final answer."
)
_PARTS = re.compile(
    r"learning summary\s*[:：]\s*(?P<summary>.+?)\s*supplementary knowledge\s*[:：]\s*(?P<knowledge>.+)",
    re.IGNORECASE | re.DOTALL,
)


def knowledge_messages(question: str, solution: str | None = None) -> list[dict]:
    """The chat asking a model teacher for a question's knowledge (given its verified solution, if any)."""
    text = f"{KNOWLEDGE_INSTRUCTION}\n\nProblem: {question.strip()}"
    if solution:
        text += f"\n\nA correct solution:\n{solution.strip()}"
    return [{"role": "user", "content": text}]


def parse_knowledge(record: dict, reply: str, solution: str | None = None) -> dict:
    """The two parts of a model teacher's reply; rule-based knowledge when a part is missing."""
    match = _PARTS.search(reply or "")
    if match:
        # Markdown emphasis around the headings ("**Learning summary:**") is not content.
        summary = " ".join(match["summary"].strip(" *#\n").split())
        knowledge = " ".join(match["knowledge"].strip(" *#\n").split())
        if summary and knowledge:
            return {"id": record["id"], "summary": summary, "knowledge": knowledge, "source": "teacher"}
    fallback = rule_knowledge(record, solution)
    fallback["problem"] = f"teacher reply lacks 'Learning summary:' / 'Supplementary knowledge:': {reply!r:.120}"
    return fallback
