"""DDP on CPU: SFT tokens/s of 2 torchrun processes (gloo) against 1 process, same global batch.

    python -m benchmarks.ddp [--quick]           # prints the measurement as JSON

Both sides fine-tune SmolLM2-135M with the quickstart's LoRA, batch size (8 rows per
optimizer step in both: 2 processes take 4 each) and autocast dtype on its oracle-teacher
rows, through `training.build_trainer`. The single process uses every core (torch's default
threads); torchrun gives each of its 2 processes one thread (its OMP_NUM_THREADS default).
Each side runs in fresh processes; tokens/s counts real tokens over the steps after the
first (warm-up) one, summed over the processes, over the slowest process's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import Measurement, ratio_met

GOAL = ">=1.3"  # 2 processes on 2 cores, against one process on both


def _worker(out: Path, steps: int) -> None:
    """One training process: time `steps` measured steps and leave its tokens and seconds in `out`."""
    from benchmarks.sft import _Counting, _measure, _StepTimes
    from benchmarks.student import quickstart_spec, teacher_rows
    from siked_runtime.training import build_trainer

    spec = quickstart_spec()
    training = spec.training.model_copy(update={"max_steps": steps + 1})
    with tempfile.TemporaryDirectory(prefix="siked-bench-ddp-") as scratch:
        trainer = build_trainer(spec.student.model, teacher_rows(spec), spec.student, training, seed=0,
                                output_dir=scratch)
        result = _measure(trainer, _Counting(trainer.data_collator), _StepTimes())
    rank = os.environ.get("RANK", "0")
    (out / f"rank-{rank}.json").write_text(json.dumps({**result, "world_size": trainer.args.world_size}))


def _side(processes: int, steps: int) -> dict:
    """Run the worker in `processes` fresh processes (torchrun for more than one); their totals."""
    from siked_runtime.distributed import free_port

    with tempfile.TemporaryDirectory(prefix="siked-bench-ddp-out-") as out:
        worker = ["-m", "benchmarks.ddp", "--worker", out, "--steps", str(steps)]
        if processes == 1:
            command = [sys.executable, *worker]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                       "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *worker]
        subprocess.run(command, check=True, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
        ranks = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank-*.json"))]
    tokens = sum(r["tokens"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    return {"processes": len(ranks), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "world_size": ranks[0]["world_size"]}


def run(quick: bool) -> list[Measurement]:
    """DDP 2 processes vs 1 process, SFT real tokens/s on this machine's CPU."""
    from benchmarks.student import quickstart_spec
    from siked_runtime.training import compute_dtype

    steps = 3 if quick else 10
    spec = quickstart_spec()
    single = _side(1, steps)
    ddp = _side(2, steps)
    context = {"model": "SmolLM2-135M-Instruct LoRA", "device": f"cpu ({os.cpu_count()} cores)", "n": steps,
               "global_batch_size": spec.training.batch_size, "max_seq_length": spec.student.max_seq_length,
               "autocast": str(compute_dtype(spec.student, "cpu")), "load_average": os.getloadavg()[0],
               "seconds": {"ours": round(ddp["seconds"], 2), "baseline": round(single["seconds"], 2)},
               "tokens": {"ours": ddp["tokens"], "baseline": single["tokens"]},
               "world_size": {"ours": ddp["world_size"], "baseline": single["world_size"]},
               # Several processes train with TRL's loss (training.build_trainer): the compact head bypasses DDP.
               "loss": {"ours": "TRL SFTTrainer", "baseline": "CompletionLossTrainer (completion positions only)"}}
    m = Measurement("D1", "SFT real tokens/s, DDP 2 processes (gloo) vs 1 process, same global batch",
                    ddp["tokens_per_s"], single["tokens_per_s"], "tokens/s", GOAL, False, context)
    m.met = ratio_met(m.ratio, GOAL)
    return [m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a training process's output directory
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(Path(args.worker), args.steps)
        return
    print(json.dumps([m.as_json() for m in run(args.quick)], indent=1))


if __name__ == "__main__":
    main()
