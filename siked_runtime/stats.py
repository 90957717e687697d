"""Paired comparisons of two arms on the same questions: bootstrap, McNemar, detectable difference.

Pure functions over 0/1 correctness arrays of shape (seeds, questions), the same questions
in the same order for both arms:

    from siked_runtime.stats import compare
    result = compare(siked, combined)     # {"diff", "ci", "p", "se", "mdd", "mcnemar": [...]}

The bootstrap resamples seeds and questions independently (the two are crossed: every seed
answers every question), so its interval covers both training noise and question sampling.
scipy gives the exact McNemar test (a binomial test on the discordant pairs) and the normal
quantiles; the two-level resampling is written here because scipy.stats.bootstrap resamples
one axis only.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean difference a − b with a percentile interval and a two-sided p-value.

    The p-value is that of the bootstrap distribution shifted to a zero mean (the null of
    no difference): the share of resampled differences at least as far from the observed one
    as the observed one is from zero. It is never reported below 1 / n_boot.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must have the same non-empty shape (seeds, questions), got {a.shape}, {b.shape}")
    d = a - b
    n_seeds, n_questions = d.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    questions = rng.integers(0, n_questions, size=(n_boot, n_questions))
    # The mean over (resampled seeds) × (resampled questions) is the mean over resampled
    # questions of the per-question mean over resampled seeds.
    per_question = d[seeds].mean(axis=1)                               # (n_boot, n_questions)
    boots = np.take_along_axis(per_question, questions, axis=1).mean(axis=1)
    observed = float(d.mean())
    tail = (1 - level) / 2
    lo, hi = np.quantile(boots, [tail, 1 - tail])
    extreme = np.abs(boots - observed) >= abs(observed) - 1e-12
    p = max(float(extreme.mean()), 1.0 / n_boot) if observed != 0 or boots.std() > 0 else 1.0
    return {"diff": observed, "ci": [float(lo), float(hi)], "p": min(p, 1.0), "se": float(boots.std(ddof=1)),
            "n_seeds": n_seeds, "n_questions": n_questions, "n_boot": n_boot}


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar test for one seed: b_ = a right and b wrong, c = a wrong and b right."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(sps.binomtest(only_a, n, 0.5).pvalue)
    return {"a_only": only_a, "b_only": only_b, "p": p}


def minimum_detectable_difference(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at `alpha` detects with `power`, given the
    standard error of the estimated difference: (z_{1−α/2} + z_power) · se."""
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * se)


def compare(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Everything the experiment report states about arm a against arm b."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    result = paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
    result["mdd"] = minimum_detectable_difference(result["se"])
    result["mcnemar"] = [mcnemar(x, y) for x, y in zip(a, b)]
    return result
