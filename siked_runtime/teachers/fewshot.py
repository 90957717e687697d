"""Few-shot demonstrations per strategy for model teachers (`openai`, `local`).

Two worked problems, each solved in all three formats, so a general-purpose
teacher model learns the exact output format the parser and the student expect.
"""

from __future__ import annotations

from siked_runtime.strategies import build_prompt, format_solution

_EXAMPLES = [
    {
        "question": "A baker makes 24 muffins in the morning and twice as many in the afternoon. "
                    "He sells 50 muffins. How many muffins are left?",
        "answer": 22,
        "cot": "In the afternoon he makes 2 * 24 = 48 muffins.\nIn total he makes 24 + 48 = 72 muffins.\n"
               "After selling 50, 72 - 50 = 22 muffins are left.",
        "l2m": "Q: How many muffins does he make in the afternoon?\nA: 2 * 24 = 48.\n"
               "Q: How many muffins does he make in total?\nA: 24 + 48 = 72.\n"
               "Q: How many muffins are left after selling 50?\nA: 72 - 50 = 22.",
        "pot": "morning = 24\nafternoon = 2 * morning\nsold = 50\nanswer = morning + afternoon - sold",
    },
    {
        "question": "Tickets cost $12 for adults and $7 for children. A family buys 2 adult tickets and "
                    "3 child tickets and pays with a $100 bill. How much change do they get?",
        "answer": 55,
        "cot": "Adult tickets cost 2 * 12 = 24 dollars.\nChild tickets cost 3 * 7 = 21 dollars.\n"
               "Together they cost 24 + 21 = 45 dollars, so the change is 100 - 45 = 55 dollars.",
        "l2m": "Q: How much do the adult tickets cost?\nA: 2 * 12 = 24.\n"
               "Q: How much do the child tickets cost?\nA: 3 * 7 = 21.\n"
               "Q: How much do all tickets cost?\nA: 24 + 21 = 45.\n"
               "Q: How much change do they get?\nA: 100 - 45 = 55.",
        "pot": "adults = 2 * 12\nchildren = 3 * 7\ntotal = adults + children\nanswer = 100 - total",
    },
]


def fewshot_messages(strategy: str) -> list[dict]:
    """Alternating user/assistant chat messages demonstrating `strategy`."""
    messages = []
    for ex in _EXAMPLES:
        messages.append({"role": "user", "content": build_prompt(ex["question"], strategy)})
        messages.append({"role": "assistant", "content": format_solution(strategy, ex[strategy], ex["answer"])})
    return messages


def teacher_messages(question: str, strategy: str) -> list[dict]:
    """Few-shot conversation asking for one strategy; the answer must start with its tag."""
    return [*fewshot_messages(strategy), {"role": "user", "content": build_prompt(question, strategy)}]
