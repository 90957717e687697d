"""Sharded stages: a stage's questions split into parts that run apart and merge into one stage.

    shard_count(spec, "sample")                 # spec.sampling.shards
    part_range(10, 3, 1)                        # range(3, 6): part 1 of 3 of ten questions
    with working_on(Part(1, 3)):
        train_questions(spec)                   # the part's slice (stages/data.py asks `take_part`)
    merge_when_complete(spec, store, key)       # the stage manifest once every part is done, else None

Parts are contiguous ranges in question order, so the parts in order hold every question
exactly once, in the unsharded order. Part i of the stage at `<prefix>` writes its artifacts
and its own manifest under `<prefix>/parts/<i>/` (`storage.clear_stage` keeps finished parts
when the stage is rerun, so a failed part is redone alone). Whoever finishes the last part
merges: it reads every part's rows, recomputes the stage's numbers from them as the unsharded
stage computes them, writes the stage's own artifacts and publishes the stage manifest. A
merge is deterministic, so two parts finishing at once and both merging write the same thing.

With a deterministic backend (the oracle or gold teacher; the student in float32 with the
transformers sampler, whose samples are seeded per question by stages/generation.py) the
merged rows equal the unsharded stage's. The sample stage's adaptive budget shares what a
question leaves unused with the other questions of its part only, so under it a sharded
stage samples differently (as correctly) from an unsharded one.
"""

from __future__ import annotations

import builtins
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from siked_runtime.graph import BASELINE, EVAL, SAMPLE, TEACHER, TEACHER_EVAL, StageKey
from siked_runtime.spec import DistillationSpec
from siked_runtime.storage import PARTS, Store, publish, read_manifest

T = TypeVar("T")


def shard_count(spec: DistillationSpec, stage: str) -> int:
    """How many parts the stage runs in (1: not sharded). Baseline and teacher-eval score the eval sets as
    eval does, so they follow `evaluation.shards`."""
    return {
        TEACHER: spec.teacher.shards,
        SAMPLE: spec.sampling.shards,
        EVAL: spec.evaluation.shards,
        BASELINE: spec.evaluation.shards,
        TEACHER_EVAL: spec.evaluation.shards,
    }.get(stage, 1)


@dataclass(frozen=True)
class Part:
    """Part `index` (0-based) of a stage split into `count` parts."""

    index: int
    count: int

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"part must be in 0…{self.count - 1} (the stage has {self.count} parts), got {self.index}")


def part_range(n: int, count: int, index: int) -> range:
    """The positions of part `index` of `count` among `n` items: contiguous, sizes differing by at most one."""
    return range(index * n // count, (index + 1) * n // count)


_CURRENT: ContextVar[Part | None] = ContextVar("siked_part", default=None)


@contextmanager
def working_on(part: Part | None) -> Iterator[None]:
    """Within the block the stage's data loaders return the part's slice, and stages write under the part."""
    token = _CURRENT.set(part)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_part() -> Part | None:
    return _CURRENT.get()


def take_part(items: Sequence[T]) -> list[T]:
    """The current part's slice of `items` (all of them outside a part)."""
    part = _CURRENT.get()
    if part is None:
        return list(items)
    return [items[i] for i in part_range(len(items), part.count, part.index)]


def part_prefix(prefix: str, index: int) -> str:
    return f"{prefix}/{PARTS}/{index}"


def output_prefix(prefix: str) -> str:
    """Where a stage writes: its own prefix, or its part's folder while working on a part."""
    part = _CURRENT.get()
    return prefix if part is None else part_prefix(prefix, part.index)


# --- the teacher's store ----------------------------------------------------------------------


class PartStore(Store):
    """`store` with the keys under one stage's folder moved into one of its parts' folders.

    The teacher stage writes fixed keys (`teacher/solutions.jsonl.gz`, its journal under
    `teacher/journal/`); given this store, part 2 writes (and reads back) `teacher/parts/2/…`
    instead, while every other key (the run's spec, other stages) is the run's own.
    """

    def __init__(self, store: Store, prefix: str, index: int):
        self.inner, self.stage, self.part = store, prefix.strip("/"), part_prefix(prefix.strip("/"), index)

    def _key(self, key: str) -> str:
        clean = key.strip("/")
        if clean == self.stage or clean.startswith(self.stage + "/"):
            return self.part + clean[len(self.stage):]
        return key

    def _back(self, key: str) -> str:
        return self.stage + key[len(self.part):] if key.startswith(self.part + "/") else key

    @property
    def uri(self) -> str:
        return self.inner.uri

    def child(self, prefix: str) -> Store:
        return self.inner.child(self._key(prefix))

    def url(self, key: str) -> str:
        return self.inner.url(self._key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(self._key(key), data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(self._key(key))

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._key(key))

    def delete(self, key: str) -> None:
        self.inner.delete(self._key(key))

    def list(self, prefix: str = "") -> builtins.list[str]:
        return [self._back(k) for k in self.inner.list(self._key(prefix))]

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(self._key(prefix))

    def upload_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        self.inner.upload_file(self._key(key), local_path)

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        self.inner.download_file(self._key(key), local_path)

    def _writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        return self.inner._writer(self._key(key))

    def _reader(self, key: str) -> AbstractContextManager[BinaryIO]:
        return self.inner._reader(self._key(key))


def stage_store(store: Store, key: StageKey, part: Part) -> Store:
    """The store a part's stage function gets: the teacher's keys moved into its part; others write under
    `output_prefix` themselves (and read models in place, which a wrapped local store could not)."""
    return PartStore(store, key.prefix, part.index) if key.stage == TEACHER else store


# --- merging ----------------------------------------------------------------------------------


def _rows(store: Store, key: StageKey, count: int, name: str) -> list[dict]:
    """Every part's rows of artifact `name`, part after part (the unsharded order)."""
    return [row for i in range(count) for row in store.read_jsonl(f"{part_prefix(key.prefix, i)}/{name}")]


def _sum(parts: list[dict], field: str) -> Any:
    values = [p.get(field) for p in parts]
    return sum(values) if all(isinstance(v, (int, float)) for v in values) else None


def _summed_extras(parts: list[dict], known: set[str]) -> dict[str, Any]:
    """Fields the merge does not recompute, summed where they are counts (or maps of counts) in every part:
    what a stage adds to its manifest later (a teacher's token usage) is not lost in a sharded run."""
    out: dict[str, Any] = {}
    for field in parts[0].keys() - known:
        values = [p.get(field) for p in parts]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[field] = sum(values)
        elif all(isinstance(v, dict) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                             for x in v.values()) for v in values):
            total: Counter = Counter()
            for v in values:
                total.update(v)
            out[field] = dict(total)
    return out


def _merge_knowledge(store: Store, key: StageKey, parts: list[dict]) -> dict | None:
    from siked_runtime.stages.internalize import KNOWLEDGE

    if not all(p.get("knowledge") for p in parts):
        return None
    name = KNOWLEDGE.removeprefix(key.prefix + "/")
    store.write_jsonl(KNOWLEDGE, _rows(store, key, len(parts), name))
    sources: Counter = Counter()
    for p in parts:
        sources.update(p["knowledge"].get("sources") or {})
    return {"questions": sum(p["knowledge"]["questions"] for p in parts), "sources": dict(sources),
            "malformed_replies": sum(p["knowledge"].get("malformed_replies", 0) for p in parts),
            "knowledge": store.url(KNOWLEDGE)}


def _merge_teacher(spec: DistillationSpec, store: Store, key: StageKey, parts: list[dict]) -> dict:
    from siked_runtime.stages.teacher import keep_correct, per_strategy

    verified = _rows(store, key, len(parts), "all.jsonl.gz")
    # Questions of different parts are different, so keeping per question and strategy over all rows
    # keeps exactly what each part kept.
    kept = keep_correct(verified, spec.teacher.max_correct_per_strategy)
    store.write_jsonl(f"{key.prefix}/all.jsonl.gz", verified)
    store.write_jsonl(f"{key.prefix}/solutions.jsonl.gz", kept)
    knowledge = _merge_knowledge(store, key, parts)
    manifest = {
        "questions": _sum(parts, "questions"),
        "raw_rows": len(verified),
        "rows": len(kept),
        "questions_solved": len({r["id"] for r in kept}),
        "strategies": per_strategy(verified),
        "solutions": store.url(f"{key.prefix}/solutions.jsonl.gz"),
        **({"knowledge": knowledge} if knowledge else {}),
        "seconds": _sum(parts, "seconds"),
    }
    return _summed_extras(parts, set(manifest) | _PART_FIELDS) | manifest


def _merge_sample(spec: DistillationSpec, store: Store, key: StageKey, parts: list[dict]) -> dict:
    from siked_runtime.stages.sample import sample_manifest

    all_rows = _rows(store, key, len(parts), "all.jsonl.gz")
    kept = _rows(store, key, len(parts), "correct.jsonl.gz")
    store.write_jsonl(f"{key.prefix}/all.jsonl.gz", all_rows)
    store.write_jsonl(f"{key.prefix}/correct.jsonl.gz", kept)
    manifest = sample_manifest(spec, store, key.iteration, questions=_sum(parts, "questions"), all_rows=all_rows,
                               kept=kept, tokens=_sum(parts, "generated_tokens"),
                               rounds=max(p["rounds"] for p in parts))
    return manifest | {"seconds": _sum(parts, "seconds")}


def _merge_sets(spec: DistillationSpec, store: Store, key: StageKey, parts: list[dict]) -> dict:
    from siked_runtime.stages.evaluate import publish_sets, with_kl

    scored = {name: _rows(store, key, len(parts), f"predictions-{name}.jsonl.gz") for name in parts[0]["predictions"]}
    manifest = publish_sets(store, key.prefix, scored)
    if "model" in parts[0]:
        manifest |= {"model": parts[0]["model"], "generated_tokens": _sum(parts, "generated_tokens"),
                     "seconds": _sum(parts, "seconds")}
    return with_kl(spec, store, key.iteration, manifest) if key.stage == EVAL else manifest


_MERGE = {TEACHER: _merge_teacher, SAMPLE: _merge_sample, EVAL: _merge_sets, BASELINE: _merge_sets,
          TEACHER_EVAL: _merge_sets}
# What `run_stage` adds to a part's manifest: the merge writes its own.
_PART_FIELDS = {"stage", "iteration", "part", "parts", "sandbox_layers", "duration_seconds", "published_at"}


def finished_parts(store: Store, key: StageKey, count: int) -> list[dict | None]:
    """Each part's manifest, None for a part that is not done."""
    return [read_manifest(store, part_prefix(key.prefix, i)) for i in range(count)]


def merge_when_complete(spec: DistillationSpec, store: Store, key: StageKey) -> dict | None:
    """Publish the stage's merged manifest when every part is done ("the last one merges"); None until then."""
    count = shard_count(spec, key.stage)
    parts = finished_parts(store, key, count)
    if any(p is None for p in parts):
        return None
    manifest = _MERGE[key.stage](spec, store, key, parts)
    durations = [p.get("duration_seconds") or 0.0 for p in parts]
    manifest = {"stage": key.stage, "iteration": key.iteration, **manifest, "parts": count,
                **({"sandbox_layers": parts[0]["sandbox_layers"]} if "sandbox_layers" in parts[0] else {}),
                # Parts run side by side: the stage took about as long as its slowest part.
                "duration_seconds": round(max(durations), 3), "part_seconds": round(sum(durations), 3)}
    return publish(store, key.prefix, manifest)
