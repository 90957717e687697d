"""Multi-process training: how many processes a train stage runs, and the torchrun command that starts them.

    gpus = spec.resources.for_stage("train").gpus
    nodes, per_node = world(spec, gpus)                     # (1, 4) for ddp on a 4-GPU pod
    if needs_launcher(spec, gpus):
        argv = torchrun_argv(spec, gpus, node_rank="$(SIKED_NODE_RANK)", master_addr="demo-it1-train-0.demo",
                             stage_argv=["siked", "stage", "train", "--run-uri", uri, "--iteration", "1"])
    launch_local(spec, "file:///tmp/runs/demo", iteration=0)  # the same on this machine, over 127.0.0.1

Every process torchrun starts runs the whole train stage (`stages.run_stage` → `run_train`).
HF Trainer and accelerate read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and train as one DDP or FSDP group, nccl on GPUs and gloo on CPUs;
rank 0 alone writes the stage's artifacts and publishes its manifest. Nothing here imports
torch: the operator builds its Job commands with these functions.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections import deque

from siked_runtime.spec import DistillationSpec, DistributedStrategy

LOCALHOST = "127.0.0.1"


def process_rank() -> int:
    """This process's global rank when torchrun started it (its RANK variable), else 0."""
    value = os.environ.get("RANK", "0")
    if not value.isdigit():
        raise ValueError(f"RANK must be a process rank (a whole number), got {value!r}")
    return int(value)


def world(spec: DistillationSpec, gpus: int | None) -> tuple[int, int]:
    """(nodes, processes per node) of the train stage.

    `gpus` is the train stage's GPUs per pod (`spec.resources.for_stage("train").gpus`;
    None or 0 without GPUs). Processes per node default to those GPUs, one without; strategy
    `none` is always one process on one node.
    """
    distributed = spec.training.distributed
    if distributed.strategy == DistributedStrategy.none:
        return 1, 1
    per_node = distributed.nproc_per_node or max(gpus or 0, 1)
    return distributed.nodes, per_node


def world_size(spec: DistillationSpec, gpus: int | None) -> int:
    """All training processes together: nodes × processes per node."""
    nodes, per_node = world(spec, gpus)
    return nodes * per_node


def needs_launcher(spec: DistillationSpec, gpus: int | None) -> bool:
    """True when the train stage runs more than one process, so torchrun must start it."""
    return world_size(spec, gpus) > 1


def torchrun_argv(
    spec: DistillationSpec,
    gpus: int | None,
    *,
    node_rank: str,
    master_addr: str,
    stage_argv: list[str],
    master_port: int | None = None,
) -> list[str]:
    """The torchrun command line that runs `stage_argv` in every process of the train stage.

    `node_rank` is this node's index, 0 … nodes-1, as a string so that a Job can pass a
    reference its container expands: Kubernetes expands `$(SIKED_NODE_RANK)` in a container's
    command from the container's environment (an Indexed Job sets it from
    JOB_COMPLETION_INDEX), a shell expands `$JOB_COMPLETION_INDEX`. `master_addr` is the
    host of node 0 (a pod's name under a headless Service, or 127.0.0.1); `master_port`
    defaults to `training.distributed.port`. `stage_argv` is what each process runs:
    `["-m", "siked_jobs.stage", "train", …]` runs a module under torchrun's Python,
    anything else (`["siked", "stage", "train", …]`) is an executable run as it is
    (torchrun's `--no-python`).
    """
    if not stage_argv:
        raise ValueError("stage_argv must name what each process runs, e.g. ['siked', 'stage', 'train', ...]")
    nodes, per_node = world(spec, gpus)
    port = master_port if master_port is not None else spec.training.distributed.port
    argv = [
        "torchrun",
        "--nnodes", str(nodes),
        "--nproc-per-node", str(per_node),
        "--node-rank", node_rank,
        "--master-addr", master_addr,
        "--master-port", str(port),
    ]
    if stage_argv[0] == "-m":
        return [*argv, *stage_argv]
    return [*argv, "--no-python", *stage_argv]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


class LaunchError(RuntimeError):
    """A process of a torchrun-started stage failed: `rank` and its `exit_code` (None if unknown)."""

    def __init__(self, message: str, rank: int | None, exit_code: int | None):
        super().__init__(message)
        self.rank = rank
        self.exit_code = exit_code


# torchrun with `--tee 3` prefixes every line of local rank N with "[defaultN]:".
_RANK_LINE = re.compile(r"^\[default(\d+)\]:(.*)$")
# Its failure report ends with the first failure: "rank      : 1 (local_rank: 1)" / "exitcode  : 3 (pid: …)".
_ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)", re.MULTILINE)
_ROOT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)


def _stage_summary(text: str) -> dict | None:
    """The JSON summary line `siked stage` leaves (see siked_jobs.stage), or None for any other line."""
    if not text.startswith("{"):
        return None
    try:
        summary = json.loads(text)
    except ValueError:
        return None
    return summary if isinstance(summary, dict) and "status" in summary else None


class _Output:
    """Sorts torchrun's merged output: rank 0's lines go to the console, the rest is kept for errors."""

    def __init__(self):
        self.tails: dict[int, deque[str]] = {}
        self.summaries: dict[int, dict] = {}
        self.launcher: deque[str] = deque(maxlen=200)

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        match = _RANK_LINE.match(line)
        if match is None:
            self.launcher.append(line)
            return
        rank, text = int(match.group(1)), match.group(2)
        summary = _stage_summary(text)
        if summary is not None:
            self.summaries[rank] = summary
        elif rank == 0:
            print(text, file=sys.stderr, flush=True)
        self.tails.setdefault(rank, deque(maxlen=20)).append(text)

    def failure(self, what: str, size: int, returncode: int) -> LaunchError:
        report = "\n".join(self.launcher)
        root = report[report.rfind("Root Cause"):] if "Root Cause" in report else ""
        rank = _ROOT_RANK.search(root)
        code = _ROOT_EXIT.search(root)
        rank = int(rank.group(1)) if rank else None
        code = int(code.group(1)) if code else None
        error = (self.summaries.get(rank) or {}).get("error")
        if error is None and rank in self.tails:
            error = "\n".join(self.tails[rank])
        if error is None:
            error = "\n".join(list(self.launcher)[-20:])
        who = f"rank {rank} of {size}" if rank is not None else f"torchrun (exit {returncode})"
        exit_part = f" exited with code {code}" if code is not None else " failed"
        return LaunchError(f"{what}: {who}{exit_part}: {error}", rank, code)


def launch_local(spec: DistillationSpec, run_uri: str, iteration: int) -> None:
    """Run train[iteration] of the stored run at `run_uri` in several processes on this machine.

    torchrun starts `nproc_per_node` processes (`python -m siked_jobs.stage train …`, so the
    run's `spec.yaml` must be stored), which rendezvous on 127.0.0.1 at a free port. Rank 0's
    output streams to stderr; the other ranks' are shown only when one of them fails. Raises
    `LaunchError` naming the failing rank and its exit code (siked_jobs' codes: 2 permanent,
    75 retryable). A multi-node spec needs a cluster and is refused.
    """
    gpus = spec.resources.for_stage("train").gpus
    nodes, per_node = world(spec, gpus)
    if nodes > 1:
        raise ValueError(f"training.distributed.nodes is {nodes}: a multi-node train stage runs on a cluster "
                         "(one pod per node); on one machine set nodes to 1 and nprocPerNode to the processes")
    stage_argv = ["-m", "siked_jobs.stage", "train", "--run-uri", run_uri, "--iteration", str(iteration)]
    argv = torchrun_argv(spec, gpus, node_rank="0", master_addr=LOCALHOST, stage_argv=stage_argv,
                         master_port=free_port())
    output = _Output()
    with tempfile.TemporaryDirectory(prefix="siked-torchrun-") as logs:
        # torchrun as a module of this interpreter, so its processes run in this environment.
        command = [sys.executable, "-m", "torch.distributed.run", "--tee", "3", "--log-dir", logs, *argv[1:]]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) as process:
            for line in process.stdout:
                output.feed(line)
            returncode = process.wait()
    if returncode != 0:
        raise output.failure(f"train[{iteration}]", nodes * per_node, returncode)
