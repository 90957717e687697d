"""The local executor: `siked run RUN.yaml [--dir DIR] [--limit N]`.

Runs the stage graph to the end in this process, with artifacts under DIR
(default ./runs/<name>). Progress is only what storage holds, so running the
same command again after a kill continues from the last finished stage; an
interrupted stage starts clean.

A sharded stage (`shards: N`) runs its parts side by side, each in a process of its
own (`siked stage STAGE … --part I`), as many at once as this machine
has CPUs for; a part that fails is redone alone by the next `siked run`. A train stage
with `training.distributed` over several processes runs under torchrun here
(`distributed.launch_local`, gloo on CPUs).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import yaml

from siked_runtime import credentials
from siked_runtime.graph import TRAIN, StageKey, plan
from siked_runtime.report import write_report
from siked_runtime.spec import DistillationRun, DistillationSpec, parse_manifest
from siked_runtime.stages import run_stage
from siked_runtime.stages.common import log
from siked_runtime.stages.shards import part_prefix, shard_count
from siked_runtime.storage import Store, list_manifests, open_store, read_manifest

SPEC_KEY = "spec.yaml"


def with_limit(run: DistillationRun, limit: int) -> DistillationRun:
    """The run with every set capped at `limit` questions (a new object).

    A validation split carved from train counts as a set of its own: train keeps `limit`
    questions after giving up at most `limit` to validation.
    """
    d = run.spec.datasets
    carved = d.validation_from_train
    if d.validation is None and carved >= 1:
        carved = min(carved, limit)
        train_limit = limit + int(carved)
    else:
        train_limit = limit

    def cap(ds, limit=limit):
        n = min(ds.limit or limit, limit)
        update = {"limit": n}
        if ds.source == "synthetic":
            update["synthetic"] = ds.synthetic.model_copy(update={"n": min(ds.synthetic.n, limit)})
        return ds.model_copy(update=update)

    datasets = d.model_copy(update={
        "validation_from_train": carved,
        "train": cap(d.train, train_limit),
        "validation": cap(d.validation) if d.validation else None,
        "eval": [cap(e) for e in d.eval],
    })
    return run.model_copy(update={"spec": run.spec.model_copy(update={"datasets": datasets})})


def saved_run(store: Store) -> DistillationRun:
    """The run a run directory holds (its `spec.yaml`); a clear error when it is not one."""
    if not store.exists(SPEC_KEY):
        raise FileNotFoundError(f"{store.url(SPEC_KEY)} not found: not a run directory")
    return parse_manifest(yaml.safe_load(store.get_text(SPEC_KEY)), store.url(SPEC_KEY))


def stored_run(store: Store, run: DistillationRun) -> DistillationRun:
    """The run as saved in storage; a different spec for the same directory is refused."""
    if store.exists(SPEC_KEY):
        saved = saved_run(store)
        if saved.spec != run.spec:
            raise ValueError(
                f"{store.uri} already holds a run with a different spec; use another --dir, "
                f"or delete the directory to start over"
            )
        return saved
    store.put_text(SPEC_KEY, yaml.safe_dump(run.to_manifest(), sort_keys=False))
    return run


# --- sharded stages: parts side by side ------------------------------------------------------


class PartsFailed(RuntimeError):
    """Parts of a sharded stage failed; the next run redoes only those."""


@dataclass
class _Running:
    index: int
    process: subprocess.Popen
    log: Path
    started: float


def _cpus() -> int:
    """CPUs this process may use (its affinity and cgroup quota)."""
    from siked_runtime.verification.sandbox import available_cpus

    return available_cpus()


def _part_env(spec: DistillationSpec, threads: int) -> dict[str, str]:
    """A part's environment: ours, the credentials `siked run` sealed away (a part is our own stage
    command, which seals them again), and its share of the CPUs for torch's threads."""
    env = dict(os.environ)
    for name in (*credentials.S3_VARIABLES, spec.teacher.api_key_env):
        value = credentials.get(name)
        if value is not None:
            env[name] = value
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def _tail(path: Path, lines: int = 15) -> str:
    with open(path, errors="replace") as f:
        return "\n".join(line.rstrip("\n") for line in deque(f, maxlen=lines))


def _start_part(store: Store, key: StageKey, index: int, env: dict[str, str], logs: Path) -> _Running:
    argv = [sys.executable, "-m", "siked_runtime.cli", "stage", key.stage, "--run-uri", store.uri, "--part", str(index)]
    if key.iteration is not None:
        argv += ["--iteration", str(key.iteration)]
    path = logs / f"part-{index}.log"
    with open(path, "wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return _Running(index, process, path, time.perf_counter())


def run_parts(spec: DistillationSpec, store: Store, key: StageKey, every: float = 30.0) -> dict:
    """Run the parts of a sharded stage that are not done, side by side; returns the stage's manifest.

    Progress: a line when a part starts or ends, and every `every` seconds each running part's
    latest line. A failed part's output ends up in PartsFailed's message.
    """
    count = shard_count(spec, key.stage)
    todo = [i for i in range(count) if read_manifest(store, part_prefix(key.prefix, i)) is None]
    # One part per CPU: a part is mostly decoding or verifying, each of which keeps a CPU busy.
    at_once = max(1, min(len(todo), _cpus()))
    env = _part_env(spec, threads=max(1, _cpus() // at_once))
    log(f"{key}: {count} parts, {count - len(todo)} done before; running {len(todo)}, {at_once} at a time")
    running: list[_Running] = []
    failed: list[str] = []
    shown = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="siked-parts-") as logs:
        while todo or running:
            while todo and len(running) < at_once:
                running.append(_start_part(store, key, todo.pop(0), env, Path(logs)))
            time.sleep(0.2)
            for r in [r for r in running if r.process.poll() is not None]:
                running.remove(r)
                took = time.perf_counter() - r.started
                if r.process.returncode == 0:
                    done = sum(read_manifest(store, part_prefix(key.prefix, i)) is not None for i in range(count))
                    log(f"{key}: part {r.index} done in {took:.0f}s ({done}/{count} parts done)")
                else:
                    failed.append(f"part {r.index} exited with {r.process.returncode} after {took:.0f}s:\n"
                                  f"{_tail(r.log)}")
                    log(f"{key}: part {r.index} FAILED (exit {r.process.returncode})")
            if running and time.perf_counter() - shown >= every:
                shown = time.perf_counter()
                for r in running:
                    log(f"{key}: part {r.index}: {_tail(r.log, 1)[-200:]}")
    if failed:
        raise PartsFailed(f"{key}: {len(failed)} of {count} parts failed; run again to redo only them\n"
                          + "\n".join(failed))
    # The last part merged; should its merge have been lost, every part is done and this merges.
    return run_stage(spec, store, key)


def _run_key(spec: DistillationSpec, store: Store, key: StageKey) -> dict:
    """Run one stage here: its parts side by side, torchrun's processes for distributed training, else in
    this process."""
    from siked_runtime.distributed import launch_local, needs_launcher

    if shard_count(spec, key.stage) > 1:
        return run_parts(spec, store, key)
    if key.stage == TRAIN and needs_launcher(spec, spec.resources.for_stage(TRAIN).gpus):
        launch_local(spec, store.uri, key.iteration)
        manifest = read_manifest(store, key.prefix)
        if manifest is None:
            raise RuntimeError(f"{key}: every torchrun process exited cleanly, but rank 0 published no manifest")
        return manifest
    return run_stage(spec, store, key)


def run_local(run: DistillationRun, run_dir: str | Path | None = None) -> dict:
    store = open_store(str(run_dir or Path("runs") / run.metadata.name))
    run = stored_run(store, run)
    spec: DistillationSpec = run.spec
    log(f"run {run.metadata.name}: method {spec.method}, artifacts in {store.uri}")
    start = time.perf_counter()
    while True:
        done = list_manifests(store)
        p = plan(spec, done)
        if p.finished:
            break
        key = p.next
        log(f"── {key} ── ({len(done)} stages done)")
        manifest = _run_key(spec, store, key)
        gc.collect()  # each stage loads its own model; let the last one go before the next
        log(f"── {key} done in {manifest.get('duration_seconds', 0):.1f}s")
        write_report(spec, store, run.metadata.name)
    report = write_report(spec, store, run.metadata.name)
    log(f"run {run.metadata.name} finished in {time.perf_counter() - start:.0f}s; best iteration "
        f"{report['best_iteration']} ({p.stop_reason}); report: {store.url('report.md')}")
    return report
