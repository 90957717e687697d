"""The `siked` command line.

    siked run RUN.yaml [--dir DIR] [--limit N]   run a DistillationRun on this machine
    siked experiment EXP.yaml [--budget B] [--dir DIR] [--pilot]  a grid of runs at equal compute, compared
    siked stage STAGE --run-uri URI [--iteration N] [--part I]  one stage (or part) of a stored run (a Job's command)
    siked report DIR                             re-render report.json/.md and plots
    siked validate RUN.yaml                      check a manifest, print the resolved spec
    siked schema                                 the spec's openAPIV3Schema (JSON)
    siked verify IN.jsonl --out OUT.jsonl        verdict per completion, summary on stderr
    siked data show PATH [--format F] [--limit N]
    siked data synth --n N --seed S --out FILE
    siked teacher gold|oracle IN --out FILE      offline teachers' solutions
    siked solve MODEL "QUESTION" | --file F [--json]  ask an exported student

Heavy modules are imported inside each command, so `siked --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from siked_runtime import credentials


def _read_jsonl(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path} line {n}: not valid JSON ({exc.msg})")
            if not isinstance(row, dict):
                raise SystemExit(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
            yield row


def _write_jsonl(rows: Iterable[dict], out: str | None) -> int:
    # errors: a lone surrogate (model text can hold one) is written as the JSON escape it came from.
    if out:
        stream = open(out, "w", encoding="utf-8", errors="backslashreplace")
    else:
        stream = sys.stdout
        sys.stdout.reconfigure(errors="backslashreplace")
    count = 0
    try:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    finally:
        if out:
            stream.close()
    return count


# An invalid manifest raises SpecError (a ValueError): `main` prints it, exit code 2.


def cmd_validate(args) -> int:
    import yaml

    from siked_runtime.spec import load_manifest

    run = load_manifest(Path(args.manifest))
    print(yaml.safe_dump(run.to_manifest(), sort_keys=False), end="")
    return 0


def cmd_jobs(args) -> int:
    import dataclasses

    import yaml
    from siked_operator.config import Config
    from siked_operator.preview import preview_jobs

    from siked_runtime.spec import load_manifest

    config = Config.from_env()
    overrides = {"storage_uri": args.storage_uri, "default_image": args.image}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v})
    jobs = preview_jobs(load_manifest(Path(args.manifest)), config, stage=args.stage, iteration=args.iteration,
                        namespace=args.namespace)
    print(yaml.safe_dump_all(jobs, sort_keys=False), end="")
    return 0


def cmd_run(args) -> int:
    from siked_runtime.local_runner import run_local, with_limit
    from siked_runtime.spec import load_manifest

    run = load_manifest(Path(args.manifest))
    if args.limit:
        run = with_limit(run, args.limit)
    credentials.seal([run.spec.teacher.api_key_env])  # nothing this run starts inherits them
    report = run_local(run, args.dir)
    from siked_runtime.console import summary_lines
    from siked_runtime.storage import open_store

    store = open_store(str(args.dir or Path("runs") / run.metadata.name))
    print("\n".join(summary_lines(report, store.url("report.md"))), file=sys.stderr)
    return 0


def cmd_experiment(args) -> int:
    from siked_runtime.experiment import load_experiment, run_experiment

    credentials.seal()
    name, _, _ = load_experiment(args.experiment, args.budget)
    out = Path(args.dir or Path("runs") / name)
    summary = run_experiment(args.experiment, out, args.budget, pilot_only=args.pilot)
    print(f"report: {out / 'experiment.md'}", file=sys.stderr)
    if summary.get("stopped") and not args.pilot:
        print(f"stopped: {summary['stopped']}", file=sys.stderr)
        return 3
    return 0


def cmd_stage(args) -> int:
    from siked_jobs.stage import run_stage_command

    credentials.seal()  # the teacher's key too, once the stage has read the spec
    return run_stage_command(args.stage, args.run_uri, args.iteration, args.part)


def cmd_report(args) -> int:
    from siked_runtime.local_runner import saved_run
    from siked_runtime.report import write_report
    from siked_runtime.storage import open_store

    store = open_store(args.dir)
    run = saved_run(store)
    write_report(run.spec, store, run.metadata.name)
    print(store.get_text("report.md"))
    return 0


def cmd_schema(args) -> int:
    from siked_runtime.crd_schema import spec_schema

    print(json.dumps(spec_schema(), indent=2))
    return 0


def _verify_inputs(path: str) -> list[dict]:
    """Every line of IN.jsonl as a record; a line that is not one becomes an `error` row, never an abort."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                rows.append({"line": n, "error": f"not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})"})
                continue
            if not isinstance(row, dict):
                rows.append({"line": n, "error": f"expected a JSON object, got {type(row).__name__}"})
                continue
            missing = [k for k in ("answer", "completion") if k not in row]
            if missing:
                row = {**row, "error": f"missing {', '.join(missing)}"}
            rows.append(row)
    return rows


def cmd_verify(args) -> int:
    from siked_runtime.verification import SandboxUnavailable

    credentials.seal(sweep=True)  # verifying needs no credential: no process it starts inherits one
    require = [name for name in (args.require or "").split(",") if name]
    try:
        return _verify(args, require)
    except SandboxUnavailable as exc:
        print(f"siked verify: {exc}", file=sys.stderr)
        return 2


def _verify(args, require: list[str]) -> int:
    from tqdm import tqdm

    from siked_runtime.verification import SandboxPool, Verifier, format_summary, summarize, verify_records
    from siked_runtime.verification.policy import LAYERS

    unknown = [name for name in require if name not in LAYERS]
    if unknown:
        raise ValueError(f"unknown sandbox layer(s) {', '.join(unknown)}; expected some of {', '.join(LAYERS)}")

    if args.explain_sandbox:
        with SandboxPool(size=1, timeout=args.timeout) as pool:
            print(pool.explain())
            missing = [name for name in require if not pool.layers[name][0]]
        if missing:
            print(f"missing required layer(s): {', '.join(missing)}", file=sys.stderr)
        return 1 if missing else 0
    if args.input is None:
        raise SystemExit("siked verify: IN.jsonl is required (or --explain-sandbox)")
    rows = _verify_inputs(args.input)
    good = [row for row in rows if "error" not in row]
    start = time.perf_counter()
    with Verifier(timeout=args.timeout, require=require) as verifier:
        print("sandbox: " + ", ".join(f"{name} {'on' if on else 'OFF'}" for name, (on, _) in
                                      verifier.sandbox.layers.items()), file=sys.stderr)
        verified = iter(list(tqdm(verify_records(good, verifier), total=len(good), unit="item", desc="verify",
                                  file=sys.stderr, disable=args.quiet)))
    out_rows = [next(verified) if "error" not in row else
                {**{k: v for k, v in row.items() if k != "error"},
                 "strategy": None, "verdict": "error", "reason": row["error"], "predicted": None}
                for row in rows]
    _write_jsonl(out_rows, args.out)
    summary = summarize(out_rows)
    print(format_summary(summary), file=sys.stderr)
    print(f"{len(rows)} items in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0


def cmd_data_show(args) -> int:
    from siked_runtime.datasets import load_records

    _write_jsonl(load_records(args.path, format=args.format, limit=args.limit), None)
    return 0


def cmd_data_synth(args) -> int:
    from siked_runtime.synthetic import generate

    families = args.families.split(",") if args.families else None
    n = _write_jsonl(generate(args.n, seed=args.seed, families=families), args.out)
    print(f"wrote {n} synthetic problems to {args.out or 'stdout'}", file=sys.stderr)
    return 0


def cmd_teacher(args) -> int:
    from tqdm import tqdm

    from siked_runtime.datasets import load_records
    from siked_runtime.teachers import gold, oracle

    teach = {"gold": gold.teach, "oracle": oracle.teach}[args.kind]
    records = load_records(args.input, format=args.format, limit=args.limit)
    strategies = tuple(args.strategies.split(","))
    rows = tqdm(teach(records, strategies), desc=f"{args.kind} teacher", unit="solution", file=sys.stderr,
                disable=args.quiet)
    n = _write_jsonl(rows, args.out)
    print(f"wrote {n} solutions for {len(records)} questions to {args.out or 'stdout'}", file=sys.stderr)
    return 0


def _solve_questions(args) -> list[dict]:
    if args.file:
        rows = list(_read_jsonl(args.file))
        missing = [n for n, row in enumerate(rows, 1) if not isinstance(row.get("question"), str)]
        if missing:
            raise ValueError(f"{args.file}: record {missing[0]} has no \"question\" text")
        return rows
    if not args.question:
        raise SystemExit("siked solve: give a question, or --file questions.jsonl")
    return [{"question": args.question}]


def cmd_solve(args) -> int:
    from siked_runtime.solve import Student, format_answer, student_dir

    student_dir(args.model)  # refuse a directory without siked.json before loading anything
    rows = _solve_questions(args)
    with Student(args.model, backend=args.backend, max_new_tokens=args.max_new_tokens, dtype=args.dtype) as student:
        answers = student.solve([row["question"] for row in rows])
    for row, answer in zip(rows, answers):
        if args.json:
            print(json.dumps({**({"id": row["id"]} if "id" in row else {}), **answer}, ensure_ascii=False))
        else:
            print(format_answer(answer))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siked", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true",
                        help="let the libraries' progress bars and warnings through (transformers, datasets, TRL)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a DistillationRun manifest on this machine")
    p.add_argument("manifest")
    p.add_argument("--dir", help="artifact directory or URI (default: ./runs/<name>)")
    p.add_argument("--limit", type=int, help="cap the questions of every dataset at N")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("experiment", help="run a grid of DistillationRuns at equal compute and compare them")
    p.add_argument("experiment", help="an Experiment manifest, e.g. examples/experiment.yaml")
    p.add_argument("--budget", help="one of the experiment's budgets, e.g. small")
    p.add_argument("--dir", help="output directory (default: ./runs/<name>); rerun to resume")
    p.add_argument("--pilot", action="store_true",
                   help="train the first seed's iteration 0, evaluate it per family with each strategy forced, "
                        "print the gate and stop")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("stage", help="run one stage of a stored run and publish its manifest (a stage Job's command)")
    p.add_argument("stage", help="teacher, baseline, teacher-eval, reference, sample, train, eval or export")
    p.add_argument("--run-uri", required=True, help="the run's prefix: s3://bucket/prefix or file:///path")
    p.add_argument("--iteration", type=int, help="iteration of sample, train and eval")
    p.add_argument("--part", type=int, help="only this part of a sharded stage (default: the pod's "
                   "JOB_COMPLETION_INDEX when the stage is sharded)")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("report", help="re-render a run's report from its stage manifests")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("validate", help="validate a DistillationRun manifest and print it resolved")
    p.add_argument("manifest")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("jobs", help="print the Job manifests the operator would create for a run (YAML)")
    p.add_argument("manifest", help="DistillationRun YAML")
    p.add_argument("--stage", help="only this stage (teacher, train, eval, sample, …)")
    p.add_argument("--iteration", type=int, help="only this iteration")
    p.add_argument("--namespace", help="the run's namespace (default: the manifest's, else default)")
    p.add_argument("--storage-uri", help="the operator's storage default, for runs without spec.storage.uri")
    p.add_argument("--image", help="the operator's default stage image, for runs without spec.image")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("schema", help="print the spec's openAPIV3Schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("verify", help="verify completions against gold answers")
    p.add_argument("input", nargs="?", help="JSONL with id, answer (gold) and completion per line")
    p.add_argument("--out", help="output JSONL (default: stdout)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per program or symbolic check")
    p.add_argument("--require", metavar="LAYERS",
                   help="comma-separated sandbox layers to insist on (seccomp, landlock, netns, nondumpable, "
                        "no_new_privs, rlimits, separate_uid); refuses to run without them")
    p.add_argument("--explain-sandbox", action="store_true",
                   help="print which sandbox layers are active on this machine, and exit (1 if --require fails)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("show", help="print normalised records as JSONL")
    p.add_argument("path")
    p.add_argument("--format", choices=["gsm8k", "svamp", "asdiv", "multiarith", "synthetic"])
    p.add_argument("--limit", type=int)
    p.set_defaults(func=cmd_data_show)
    p = data.add_parser("synth", help="generate synthetic word problems")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", help="comma-separated families (default: all)")
    p.add_argument("--out", help="output JSONL (default: stdout)")
    p.set_defaults(func=cmd_data_synth)

    p = sub.add_parser("teacher", help="offline teachers' solutions")
    p.add_argument("kind", choices=["gold", "oracle"])
    p.add_argument("input", help="dataset path (gsm8k/svamp for gold, synthetic for oracle)")
    p.add_argument("--out", help="output JSONL (default: stdout)")
    p.add_argument("--format", choices=["gsm8k", "svamp", "asdiv", "multiarith", "synthetic"])
    p.add_argument("--limit", type=int)
    p.add_argument("--strategies", default="cot,l2m,pot")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("solve", help="answer questions with a student a run exported (its final/ directory)")
    p.add_argument("model", help="a run's final/ directory, or the model directory holding siked.json")
    p.add_argument("question", nargs="?", help="the question (or --file)")
    p.add_argument("--file", help="JSONL with a \"question\" (and optionally \"id\") per line")
    p.add_argument("--json", action="store_true", help="one JSON object per question instead of text")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--max-new-tokens", type=int, help="token limit (default: the model's generation config)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "auto"], default="float32",
                   help="weights dtype: float32 (default) answers a question the same whether it is asked alone "
                        "or in a file; auto (bf16 on GPUs and on CPUs with native bf16) is faster, but a greedy "
                        "answer can change with the questions batched beside it")
    p.set_defaults(func=cmd_solve)
    return parser


def main(argv: list[str] | None = None) -> int:
    from siked_runtime.console import configure

    command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    # --verbose is accepted after the command too (`siked run x.yaml --verbose`).
    verbose = "--verbose" in argv
    args = build_parser().parse_args([a for a in argv if a != "--verbose"])
    if command_line:  # quiets libraries process-wide: a caller passing argv (a test) keeps its own setup
        configure(verbose=verbose)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"siked {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
