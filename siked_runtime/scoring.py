"""Scores of an evaluation: accuracy, strategy shares, KL between strategy distributions.

Pure functions over verified rows (`{"strategy": "cot"|…|None, "verdict": "correct"|…}`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Mapping

from siked_runtime.strategies import STRATEGIES


def accuracy(rows: Iterable[Mapping]) -> float | None:
    rows = list(rows)
    return sum(r["verdict"] == "correct" for r in rows) / len(rows) if rows else None


def strategy_shares(rows: Iterable[Mapping]) -> dict[str, float]:
    """Share of each strategy among rows (untagged rows count in the denominator only)."""
    rows = list(rows)
    counts = Counter(r.get("strategy") for r in rows)
    return {s: (counts[s] / len(rows) if rows else 0.0) for s in STRATEGIES}


def accuracy_by_strategy(rows: Iterable[Mapping]) -> dict[str, float | None]:
    rows = list(rows)
    return {s: accuracy(r for r in rows if r.get("strategy") == s) for s in STRATEGIES}


def kl_divergence(p: Mapping[str, float], q: Mapping[str, float], eps: float = 1e-6) -> float:
    """KL(p ‖ q) in nats over the strategies plus "untagged", smoothed by `eps` and renormalised.

    Shares need not sum to 1: what is missing is the untagged share (a student
    that writes no tag at all is far from any tagged training distribution).
    Smoothing keeps it finite when one side never uses a strategy the other has.
    """
    def buckets(d: Mapping[str, float]) -> list[float]:
        tagged = [d.get(s, 0.0) for s in STRATEGIES]
        return [x + eps for x in [*tagged, max(0.0, 1.0 - sum(tagged))]]

    ps, qs = buckets(p), buckets(q)
    zp, zq = sum(ps), sum(qs)
    return sum((a / zp) * math.log((a / zp) / (b / zq)) for a, b in zip(ps, qs) if a > 0)
