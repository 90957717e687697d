"""SKIntern's progressive schedule: training prompts that carry less knowledge stage by stage.

    shares(spec.skintern)              # [1.0, 0.667, 0.333, 0.0] for the default linear T = 4
    examples_at(2, 0.667)              # 1: ⌊K·S_t⌋ similar examples
    internalized_prompt(q, knowledge, [(q1, solution1)])

At stage t the prompt holds the teacher's knowledge for the question compressed to a share
S_t of its tokens (`compression`), the ⌊K·S_t⌋ most similar training questions with their
teacher solutions (`retrieval`), then the ordinary prompt (`strategies.build_prompt`). At
S_t = 0 that is the ordinary prompt alone, the one the student sees at inference, so the
last stage trains on exactly what inference asks.

Schedules for T stages, t = 0 … T-1 (each starts at 1 and ends at 0):
  linear               S_t = 1 - t/(T-1)                          1, .67, .33, 0
  exponential          S_t = (2^(T-1-t) - 1) / (2^(T-1) - 1)       1, .43, .14, 0  (drops early)
  inverse-exponential  S_t = 1 - (2^t - 1) / (2^(T-1) - 1)         1, .86, .57, 0  (drops late)
  or an explicit list of T shares.
"""

from __future__ import annotations

import math

from siked_runtime.spec import InternalizationSpec, Schedule
from siked_runtime.strategies import build_prompt


def shares(spec: InternalizationSpec) -> list[float]:
    """S_t for every stage of the schedule."""
    if isinstance(spec.schedule, list):
        return [float(s) for s in spec.schedule]
    T = spec.stages
    if T == 1:
        return [0.0]  # one stage: no knowledge to take away, train on the inference prompt
    schedule = Schedule(spec.schedule)
    if schedule == Schedule.linear:
        return [1 - t / (T - 1) for t in range(T)]
    top = 2 ** (T - 1) - 1
    if schedule == Schedule.exponential:
        return [(2 ** (T - 1 - t) - 1) / top for t in range(T)]
    return [1 - (2**t - 1) / top for t in range(T)]


def examples_at(k: int, share: float) -> int:
    """⌊K·S_t⌋, robust to shares such as 2/3 stored as 0.6666…7."""
    return math.floor(k * share + 1e-9)


def example_block(question: str, solution: str) -> str:
    return f"Example question: {question.strip()}\nExample solution:\n{solution.strip()}"


def internalized_prompt(question: str, knowledge: str, examples: list[tuple[str, str]]) -> str:
    """Knowledge, then examples, then the ordinary prompt; nothing but the latter when both are empty."""
    parts = [knowledge.strip()] if knowledge.strip() else []
    parts += [example_block(q, s) for q, s in examples]
    parts.append(build_prompt(question))
    return "\n\n".join(parts)
