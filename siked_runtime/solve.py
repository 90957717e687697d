"""Ask an exported student questions: `siked solve MODEL "question"` (or `--file questions.jsonl`).

    with Student("runs/quickstart/final") as student:
        [answer] = student.solve(["Tom has 3 boxes of 12 eggs. How many eggs?"])
        answer["strategy"], answer["solution"], answer["answer"]

MODEL is a directory `siked` exported (`final/model/`, or the run's `final/` above it): its
`siked.json` says how the student was prompted in training, and the prompt is rebuilt from it
exactly (the instruction, the question, the chat template with an empty system turn). A `[pot]`
solution is a program; its answer is what it computes in the verifier's sandbox, never in this
process.
"""

from __future__ import annotations

import json
from pathlib import Path

from siked_runtime.strategies import NAMES, parse_solution

SIKED_JSON = "siked.json"  # as stages/export.py writes it


class NotAStudent(ValueError):
    """A directory that `siked solve` cannot use: it carries no `siked.json`."""


def student_dir(path: str | Path) -> Path:
    """The model directory holding `siked.json`: `path` itself, or `path/model` (a run's `final/`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    for candidate in (path, path / "model"):
        if (candidate / SIKED_JSON).is_file():
            return candidate
    raise NotAStudent(
        f"{path} has no {SIKED_JSON}, so how its student must be prompted is unknown. siked solve needs a model "
        f"exported by a siked run: its final/ directory (e.g. runs/quickstart/final), which holds final/model/"
        f"{SIKED_JSON} and the model card")


def load_format(directory: Path) -> dict:
    fmt = json.loads((directory / SIKED_JSON).read_text())
    if fmt.get("format_version") != 1:
        raise NotAStudent(f"{directory / SIKED_JSON}: format_version {fmt.get('format_version')!r} is not one this "
                          "siked reads (1)")
    return fmt


def user_turn(fmt: dict, question: str) -> str:
    """The user-turn text the student was trained on (`strategies.build_prompt`, as recorded at export)."""
    return fmt["prompt_template"].format(instruction=fmt["instruction"], question=question.strip())


def default_max_new_tokens(directory: Path) -> int:
    config = directory / "generation_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_new_tokens") or 256)
    return 256


class Student:
    """An exported student with its sampler, and a sandbox for its programs (started on first use)."""

    def __init__(self, path: str | Path, backend: str = "transformers", batch_size: int = 16,
                 max_new_tokens: int | None = None, timeout: float = 3.0, dtype: str = "float32"):
        from siked_runtime.samplers import make_sampler

        self.directory = student_dir(path)
        self.format = load_format(self.directory)
        self.max_new_tokens = max_new_tokens or default_max_new_tokens(self.directory)
        self.timeout = timeout
        # float32 by default: a question gets the same greedy answer alone or among others. In bf16
        # the batch beside it changes the rounding and so, now and then, the answer.
        self.sampler = make_sampler(backend, str(self.directory), batch_size=batch_size, dtype=dtype)
        self._pool = None

    def prompt(self, question: str) -> str:
        """The whole prompt string, chat template applied as the samplers apply it in training."""
        from siked_runtime.models import chat_prompt

        text = user_turn(self.format, question)
        return chat_prompt(self.sampler.tokenizer, text) if self.format["chat_template"] else text

    def solve(self, questions: list[str]) -> list[dict]:
        """One answer per question: `{question, strategy, solution, answer, how, problem}`.

        `how` is `stated` (an `Answer:` line), `computed` (a program's value, run in the
        sandbox) or `last number` (an untagged solution); `answer` is None when there is none,
        and `problem` says why.
        """
        completions = self.sampler.generate([self.prompt(q) for q in questions], n=1, temperature=0.0,
                                            max_new_tokens=self.max_new_tokens)
        return [self._answer(q, c[0]) for q, c in zip(questions, completions, strict=True)]

    def _answer(self, question: str, completion: str) -> dict:
        parsed = parse_solution(completion)
        out = {"question": question, "strategy": parsed.strategy, "solution": completion, "answer": None,
               "how": None, "problem": parsed.problem or None}
        if parsed.program is not None:
            result = self.pool().run(parsed.program)
            if result.status == "ok" and result.value is not None:
                out |= {"answer": result.value, "how": "computed", "problem": None}
            else:
                out["problem"] = f"program {result.status}: {result.reason or 'no answer'}"
            if result.output:
                out["program_output"] = result.output
        elif parsed.answer is not None:
            out |= {"answer": parsed.answer, "how": "stated" if parsed.strategy else "last number"}
        return out

    def pool(self):
        if self._pool is None:
            from siked_runtime.verification import SandboxPool

            self._pool = SandboxPool(size=1, timeout=self.timeout)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self.sampler.close()

    def __enter__(self) -> Student:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_answer(answer: dict) -> str:
    """A solved question for a terminal: the question, the strategy, the solution, the answer."""
    strategy = answer["strategy"]
    named = f"{strategy} ({NAMES[strategy]})" if strategy else "none (no strategy tag)"
    how = {"computed": " (computed by running the program in the sandbox)", "last number": " (last number written)",
           "stated": ""}.get(answer["how"] or "", "")
    final = f"{answer['answer']}{how}" if answer["answer"] is not None else f"none ({answer['problem']})"
    solution = "\n".join("  " + line for line in answer["solution"].strip("\n").splitlines()) or "  (empty)"
    return f"Question: {answer['question']}\nStrategy: {named}\nSolution:\n{solution}\nAnswer:   {final}\n"
