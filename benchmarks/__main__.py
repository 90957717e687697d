"""Run benchmarks: each measures ours and a baseline in the same run.

    python -m benchmarks all --quick --out benchmarks/results/cpu.jsonl
    python -m benchmarks p1 --student runs/bench/student-12steps

Prints one JSON line per measurement as it is taken (`--out` also appends them to a file),
then a table of all of them. `--quick` sizes everything so that `all` fits in about 20 minutes on
2 CPU cores, P5 (the quickstart, about 6.5 minutes) included.

P1 and P6 sample from a fine-tuned student: `--student DIR`, else the quickstart's
iteration-1 model when P5 ran first in the same call (as in `all`), else one trained once
with the quickstart's recipe and kept under `--work`.

    p1  sampling tokens/s: TransformersSampler vs generate() one prompt at a time   goal >= 3x
    p2  SFT tokens/s: our trainer vs a padded HF Trainer                            goal >= 1.5x
    p3  PoT programs verified/s: warm pool vs a subprocess per program             goal >= 10x, >= 500/s
    p5  quickstart wall time                                                        goal <= 600 s
    p6  tokens per correct self-sample: adaptive budget vs fixed k                  goal <= 0.6x
    p7  sample stage wall time: 2 parts side by side vs 1 part (and seeded sampling's cost)
    d1  SFT tokens/s: DDP, 2 torchrun processes (gloo) vs 1 process, same global batch

The operator benchmark needs kubectl and a Kubernetes API emulator; it is not part of
`all` and runs on its own: python benchmarks/operator_bench.py.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from benchmarks.report import Measurement, emit, machine, table

NAMES = ["p1", "p2", "p3", "p5", "p6", "p7", "d1"]
STUDENT_STEPS = 20  # the quickstart's iteration 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=[*NAMES, "all"], help="one benchmark, or all of them")
    parser.add_argument("--quick", action="store_true", help="small sizes: `all` in about 20 minutes on 2 cores")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--work", type=Path, default=Path("runs/bench"),
                        help="where the trained student and logs are kept (default runs/bench)")
    parser.add_argument("--student", type=Path, help="a fine-tuned student directory, instead of training one")
    parser.add_argument("--sample-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="P6: the student's dtype while sampling (float32 makes a question's j-th draw the same "
                             "in both runs; in bf16 the questions batched beside it can change it)")
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_one(name: str, args: argparse.Namespace, device: str, student) -> list[Measurement]:
    if name == "p1":
        from benchmarks import sampling

        return sampling.run(student(), device, args.quick)
    if name == "p2":
        from benchmarks import sft

        return sft.run(device, args.quick)
    if name == "p3":
        from benchmarks import pot

        return pot.run(device, args.quick)
    if name == "p5":
        from benchmarks import quickstart

        return quickstart.run(device, args.work)
    if name == "p7":
        from benchmarks import shards

        return shards.run(args.quick)
    if name == "d1":
        from benchmarks import ddp

        return ddp.run(args.quick)
    from benchmarks import budget

    return budget.run(student(), device, args.quick, args.sample_dtype)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = NAMES if args.name == "all" else [args.name]
    # P5 first: its iteration-1 model is the student P1 and P6 sample from.
    names = sorted(names, key=["p5", "p3", "p1", "p2", "p6", "p7", "d1"].index)
    device = machine()
    trained: list[Path] = []

    def student() -> Path:
        if args.student:
            return args.student
        if not trained:
            from benchmarks.quickstart import STUDENT
            from benchmarks.student import trained_student

            from_quickstart = args.work / STUDENT
            if "p5" in done and (from_quickstart / "config.json").is_file():
                trained.append(from_quickstart)
            else:
                trained.append(trained_student(args.work, STUDENT_STEPS, log=_log))
            _log(f"student: {trained[0]}")
        return trained[0]

    started = time.perf_counter()
    measurements: list[Measurement] = []
    done: list[str] = []
    failed: list[str] = []
    for name in names:
        _log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            for m in run_one(name, args, device, student):
                emit(m, args.out)
                measurements.append(m)
        except Exception:  # noqa: BLE001 - one broken benchmark should not hide the others' numbers
            traceback.print_exc()
            failed.append(name)
        done.append(name)
        _log(f"{name} took {time.perf_counter() - t0:.0f} s")
    print()
    print(table(measurements))
    print(f"\n{device}; {time.perf_counter() - started:.0f} s in all" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
