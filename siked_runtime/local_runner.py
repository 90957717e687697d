"""The local executor: `siked run RUN.yaml [--dir DIR] [--limit N]`.

Runs the stage graph to the end in this process, with artifacts under DIR
(default ./runs/<name>). Progress is only what storage holds, so running the
same command again after a kill continues from the last finished stage; an
interrupted stage starts clean.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import yaml

from siked_runtime.graph import plan
from siked_runtime.report import write_report
from siked_runtime.spec import DistillationRun, DistillationSpec, parse_manifest
from siked_runtime.stages import run_stage
from siked_runtime.stages.common import log
from siked_runtime.storage import Store, list_manifests, open_store

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


def stored_run(store: Store, run: DistillationRun) -> DistillationRun:
    """The run as saved in storage; a different spec for the same directory is refused."""
    if store.exists(SPEC_KEY):
        saved = parse_manifest(yaml.safe_load(store.get_text(SPEC_KEY)), store.url(SPEC_KEY))
        if saved.spec != run.spec:
            raise ValueError(
                f"{store.uri} already holds a run with a different spec; use another --dir, "
                f"or delete the directory to start over"
            )
        return saved
    store.put_text(SPEC_KEY, yaml.safe_dump(run.to_manifest(), sort_keys=False))
    return run


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
        manifest = run_stage(spec, store, key)
        gc.collect()  # each stage loads its own model; let the last one go before the next
        log(f"── {key} done in {manifest.get('duration_seconds', 0):.1f}s")
        write_report(spec, store, run.metadata.name)
    report = write_report(spec, store, run.metadata.name)
    log(f"run {run.metadata.name} finished in {time.perf_counter() - start:.0f}s; best iteration "
        f"{report['best_iteration']} ({p.stop_reason}); report: {store.url('report.md')}")
    return report
