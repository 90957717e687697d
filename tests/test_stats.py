"""Paired statistics against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from siked_runtime.stats import compare, mcnemar, minimum_detectable_difference, paired_bootstrap


def paired(plus: int, minus: int, ties: int) -> tuple[np.ndarray, np.ndarray]:
    """One seed: `plus` questions only a solves, `minus` only b solves, `ties` both solve."""
    a = np.array([1] * plus + [0] * minus + [1] * ties)
    b = np.array([0] * plus + [1] * minus + [1] * ties)
    return a[None, :], b[None, :]


def test_bootstrap_matches_the_normal_theory_of_a_paired_difference():
    # d = +1 on 200, −1 on 100, 0 on 700 of 1000 questions: mean 0.1, var 0.3 − 0.01 = 0.29.
    a, b = paired(200, 100, 700)
    r = paired_bootstrap(a, b, n_boot=20_000, seed=1)
    se = np.sqrt(0.29 / 1000)
    assert r["diff"] == pytest.approx(0.1)
    assert r["se"] == pytest.approx(se, rel=0.05)
    assert r["ci"][0] == pytest.approx(0.1 - 1.96 * se, abs=0.004)
    assert r["ci"][1] == pytest.approx(0.1 + 1.96 * se, abs=0.004)
    assert r["p"] == 1 / 20_000  # z ≈ 5.9: nothing as extreme in 20,000 draws

    # A difference of one standard error is not significant: p ≈ 2·(1 − Φ(1)) ≈ 0.32.
    a, b = paired(55, 45, 100)
    r = paired_bootstrap(a, b, n_boot=20_000, seed=2)
    z = 0.05 / np.sqrt((0.5 - 0.0025) / 200)
    assert r["p"] == pytest.approx(2 * (1 - sps.norm.cdf(z)), abs=0.03)
    assert r["ci"][0] < 0 < r["ci"][1]


def test_bootstrap_edge_cases():
    same = np.ones((3, 50))
    r = paired_bootstrap(same, same)
    assert (r["diff"], r["ci"], r["p"]) == (0.0, [0.0, 0.0], 1.0)
    r = paired_bootstrap(np.ones((2, 40)), np.zeros((2, 40)))
    assert r["diff"] == 1.0 and r["ci"] == [1.0, 1.0] and r["p"] == 1 / 10_000
    with pytest.raises(ValueError, match="same non-empty shape"):
        paired_bootstrap(np.ones((2, 3)), np.ones((2, 4)))


def test_seed_noise_widens_the_interval():
    # Seed 0: a wins 30 questions; seed 1: b wins 30. Same mean as no difference at all,
    # but a run-to-run swing that only resampling seeds can see.
    a = np.array([[1] * 30 + [0] * 70, [0] * 30 + [0] * 70])
    b = np.array([[0] * 30 + [0] * 70, [1] * 30 + [0] * 70])
    r = paired_bootstrap(a, b, seed=3)
    assert r["diff"] == 0.0
    assert r["ci"][1] - r["ci"][0] > 0.4  # questions alone would give about ±0.1


def test_mcnemar_exact_binomial():
    a, b = paired(10, 0, 50)
    assert mcnemar(a[0], b[0]) == {"a_only": 10, "b_only": 0, "p": pytest.approx(2 * 0.5 ** 10)}
    a, b = paired(7, 7, 10)
    assert mcnemar(a[0], b[0])["p"] == 1.0
    assert mcnemar(np.ones(5), np.ones(5)) == {"a_only": 0, "b_only": 0, "p": 1.0}


def test_minimum_detectable_difference_and_compare():
    assert minimum_detectable_difference(0.01) == pytest.approx(0.028, abs=0.0005)  # (1.96 + 0.84) · se
    a, b = paired(30, 10, 60)
    r = compare(np.repeat(a, 3, axis=0), np.repeat(b, 3, axis=0), n_boot=2000)
    assert len(r["mcnemar"]) == 3 and r["mdd"] == pytest.approx(minimum_detectable_difference(r["se"]))
    assert r["diff"] == pytest.approx(0.2) and r["ci"][0] > 0
