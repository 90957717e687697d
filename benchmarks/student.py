"""What the model benchmarks share: the quickstart's spec, its teacher rows, and a trained student.

The sampling benchmarks need a student whose solutions end with `Answer:` lines, as the
students of a run do from iteration 0 on. `trained_student` fine-tunes SmolLM2-135M on the
quickstart's oracle-teacher rows for a few steps once and keeps it under the work directory.
"""

from __future__ import annotations

import time
from pathlib import Path

from siked_runtime.spec import DistillationSpec, load_manifest
from siked_runtime.stages.data import train_questions
from siked_runtime.strategies import build_prompt

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart.yaml"


def quickstart_spec() -> DistillationSpec:
    return load_manifest(QUICKSTART).spec


def teacher_rows(spec: DistillationSpec) -> list[dict]:
    """`{prompt, completion}` rows from the oracle teacher, as the train stage builds them.

    The oracle writes every strategy from the problem's computation graph, so its rows are
    correct by construction and need no verification here.
    """
    from siked_runtime.teachers import oracle

    records = train_questions(spec)
    questions = {r["id"]: r["question"] for r in records}
    return [{"prompt": build_prompt(questions[r["id"]]), "completion": r["completion"]}
            for r in oracle.teach(records, spec.strategies)]


def trained_student(work: Path, steps: int, log=print) -> Path:
    """SmolLM2-135M fine-tuned for `steps` steps on the quickstart's teacher rows (cached in `work`)."""
    from siked_runtime.training import train_sft

    out = work / f"student-{steps}steps"
    if (out / "config.json").is_file():
        return out
    spec = quickstart_spec()
    training = spec.training.model_copy(update={"max_steps": steps})
    started = time.perf_counter()
    summary = train_sft(spec.student.model, teacher_rows(spec), out, spec.student, training, seed=0, on_log=lambda _: None)
    log(f"trained the benchmark student ({steps} steps, loss {summary['train_loss']:.3f}) "
        f"in {time.perf_counter() - started:.0f} s: {out}")
    return out
