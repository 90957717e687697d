"""The stage graph: given the spec and what is done, what runs next.

Pure planning, no I/O. Both executors (the local runner and the Kubernetes
operator) call `plan(spec, done)` with the manifests they found in storage and
do what it says; neither keeps its own notion of progress.

    teacher ─► train[0] ─► eval[0] ─► sample[1] ─► train[1] ─► eval[1] ─► … ─► export
    baseline, teacher-eval (optional) run beside them and need nothing;
    reference (method skintern) needs the teacher and runs beside the chain.

`done` maps a stage's storage prefix (`teacher`, `iter-001/sample`, …) to its
manifest. Eval manifests carry `{"accuracy": {"validation": p, "<set>": p, …}}`;
the planner reads only the validation accuracy, to stop early and to pick the
best iteration (never a test set).

Methods:
  siked     iterations 0..iterations.max; iteration t ≥ 1 samples from model t-1
  distill   iteration 0 only (teacher data, one pass)
  skintern  internalization.stages training stages chained on the same weights, no
            sampling; the schedule always runs to its end (knowledge is only fully
            removed at the last stage), and the last stage is the run's model.
            `reference` trains standard distillation for as many epochs, for the
            report's comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from siked_runtime.spec import DistillationSpec, Method

VALIDATION = "validation"
# Stage names; the order is the order stages of one iteration run in.
TEACHER, BASELINE, TEACHER_EVAL, REFERENCE, SAMPLE, TRAIN, EVAL, EXPORT = (
    "teacher", "baseline", "teacher-eval", "reference", "sample", "train", "eval", "export",
)
STAGES = (TEACHER, BASELINE, TEACHER_EVAL, REFERENCE, SAMPLE, TRAIN, EVAL, EXPORT)
ITERATION_STAGES = (SAMPLE, TRAIN, EVAL)


@dataclass(frozen=True, order=True)
class StageKey:
    """One node of the graph: a stage, and its iteration for per-iteration stages."""

    stage: str
    iteration: int | None = None

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; expected one of {', '.join(STAGES)}")
        if (self.stage in ITERATION_STAGES) != (self.iteration is not None):
            raise ValueError(f"stage {self.stage!r} {'needs' if self.stage in ITERATION_STAGES else 'takes no'} iteration")
        if self.iteration is not None and self.iteration < 0:
            raise ValueError(f"iteration must be ≥ 0, got {self.iteration}")

    @property
    def prefix(self) -> str:
        """Where the stage's artifacts and manifest live under the run URI."""
        if self.iteration is None:
            return "final" if self.stage == EXPORT else self.stage
        return f"iter-{self.iteration:03d}/{self.stage}"

    @classmethod
    def from_prefix(cls, prefix: str) -> StageKey:
        prefix = prefix.strip("/")
        if prefix == "final":
            return cls(EXPORT)
        if prefix.startswith("iter-") and "/" in prefix:
            it, stage = prefix.split("/", 1)
            try:
                return cls(stage, int(it.removeprefix("iter-")))
            except ValueError:
                pass
        elif prefix in STAGES:
            return cls(prefix)
        raise ValueError(f"not a stage prefix: {prefix!r}")

    def __str__(self) -> str:
        return self.stage if self.iteration is None else f"{self.stage}[{self.iteration}]"


@dataclass(frozen=True)
class IterationResult:
    iteration: int
    validation: float
    improved: bool        # beat the best earlier iteration by more than minDelta
    regressed: bool       # fell below the previous iteration by more than the tolerance


@dataclass(frozen=True)
class Plan:
    runnable: tuple[StageKey, ...]           # stages whose inputs are done and which are not
    finished: bool                           # the export stage is done
    stop_reason: str | None                  # why no further iteration starts (None while it may)
    last_iteration: int | None               # the final iteration, once the stop is decided
    best_iteration: int | None               # by validation accuracy among evaluated iterations
    iterations: tuple[IterationResult, ...] = field(default=())

    @property
    def next(self) -> StageKey | None:
        return self.runnable[0] if self.runnable else None


def validation_accuracy(manifest: Mapping) -> float:
    try:
        return float(manifest["accuracy"][VALIDATION])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"eval manifest has no accuracy.{VALIDATION}: {dict(manifest)!r:.200}") from None


def score_iterations(spec: DistillationSpec, accuracies: list[float]) -> tuple[IterationResult, ...]:
    """Mark each evaluated iteration as an improvement and/or a regression."""
    min_delta = spec.iterations.early_stopping.min_delta
    results, best = [], None
    for t, acc in enumerate(accuracies):
        improved = best is None or acc > best + min_delta
        regressed = t > 0 and acc < accuracies[t - 1] - spec.iterations.regression_tolerance
        results.append(IterationResult(t, acc, improved, regressed))
        best = acc if best is None else max(best, acc)
    return tuple(results)


def best_iteration(results: tuple[IterationResult, ...]) -> int | None:
    """Highest validation accuracy; the earliest iteration wins ties (less training, same quality)."""
    if not results:
        return None
    return max(results, key=lambda r: (r.validation, -r.iteration)).iteration


def stop_reason(spec: DistillationSpec, results: tuple[IterationResult, ...]) -> str | None:
    """Why the run should start no further iteration after the evaluated ones, or None."""
    if not results:
        return None
    last = results[-1]
    if last.iteration >= spec.last_iteration:
        return f"reached the last iteration ({spec.last_iteration})"
    if spec.method == Method.skintern:
        return None  # the knowledge schedule must run to the end
    target = spec.iterations.target_accuracy
    if target is not None and last.validation >= target:
        return f"validation accuracy {last.validation:.4f} reached the target {target}"
    patience = spec.iterations.early_stopping.patience
    if patience is not None:
        stale = 0
        for r in reversed(results):
            if r.improved:
                break
            stale += 1
        if stale >= patience:
            return f"no validation improvement for {stale} iteration(s) (patience {patience})"
    return None


def _evaluated(done: Mapping[str, Mapping]) -> list[float]:
    """Validation accuracies of iterations 0, 1, … as long as they are contiguous."""
    out = []
    while (manifest := done.get(StageKey(EVAL, len(out)).prefix)) is not None:
        out.append(validation_accuracy(manifest))
    return out


def plan(spec: DistillationSpec, done: Mapping[str, Mapping]) -> Plan:
    """What runs next, given the manifests of the finished stages (keyed by prefix)."""
    is_done = lambda key: key.prefix in done  # noqa: E731
    results = score_iterations(spec, _evaluated(done))
    reason = stop_reason(spec, results)
    best = best_iteration(results)
    if spec.method == Method.skintern and reason is not None:
        best = results[-1].iteration  # the schedule's product is its last, question-only stage
    last = results[-1].iteration if reason is not None else None

    wanted: list[StageKey] = [StageKey(TEACHER)]
    if spec.evaluation.baseline:
        wanted.append(StageKey(BASELINE))
    if spec.evaluation.teacher:
        wanted.append(StageKey(TEACHER_EVAL))
    runnable = [k for k in wanted if not is_done(k)]
    if spec.method == Method.skintern and spec.skintern.reference:
        wanted.append(StageKey(REFERENCE))
        if is_done(StageKey(TEACHER)) and not is_done(StageKey(REFERENCE)):
            runnable.append(StageKey(REFERENCE))

    # The iteration chain: the first iteration whose stages are not all done.
    t = len(results)
    if reason is None and t <= spec.last_iteration:
        chain_ready = is_done(StageKey(TEACHER)) if t == 0 else True
        needs_sample = spec.method == Method.siked and t >= 1
        sample, train, evaluate = StageKey(SAMPLE, t) if needs_sample else None, StageKey(TRAIN, t), StageKey(EVAL, t)
        if not chain_ready:
            pass
        elif sample is not None and not is_done(sample):
            runnable.append(sample)
        elif not is_done(train):
            runnable.append(train)
        else:
            runnable.append(evaluate)

    finished = is_done(StageKey(EXPORT))
    if reason is not None and not finished and all(is_done(k) for k in wanted):
        runnable.append(StageKey(EXPORT))
    return Plan(
        runnable=tuple(runnable),
        finished=finished,
        stop_reason=reason,
        last_iteration=last,
        best_iteration=best,
        iterations=results,
    )
