import math

import pytest

from siked_runtime.scoring import accuracy, accuracy_by_strategy, kl_divergence, strategy_shares

ROWS = [
    {"strategy": "cot", "verdict": "correct"},
    {"strategy": "cot", "verdict": "wrong"},
    {"strategy": "pot", "verdict": "correct"},
    {"strategy": None, "verdict": "no_answer"},
]


def test_accuracy_and_shares():
    assert accuracy(ROWS) == 0.5
    assert accuracy([]) is None
    assert strategy_shares(ROWS) == {"cot": 0.5, "l2m": 0.0, "pot": 0.25}
    assert accuracy_by_strategy(ROWS) == {"cot": 0.5, "l2m": None, "pot": 1.0}


def test_kl_divergence():
    p = {"cot": 0.5, "l2m": 0.25, "pot": 0.25}
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    q = {"cot": 0.25, "l2m": 0.25, "pot": 0.5}
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert kl_divergence(p, q, eps=0) == pytest.approx(expected)
    assert kl_divergence(p, q) > 0 and kl_divergence(q, p) > 0
    assert math.isfinite(kl_divergence({"cot": 1.0}, {"pot": 1.0}))
    # an untagged student is far from tagged training data, not equal to it
    assert kl_divergence(p, {"cot": 0.0, "l2m": 0.0, "pot": 0.0}) > 5
