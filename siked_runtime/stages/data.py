"""The questions each stage works on, derived from the spec alone.

Every stage (in any process, on any machine) calls these and gets the same
records: loading is deterministic, the validation split is hash-based, and
synthetic problems come from the spec's seeds. Inside a part of a sharded stage
(`shards.working_on`) both loaders return that part's slice of every set.
"""

from __future__ import annotations

from functools import lru_cache

from siked_runtime.datasets import load_records, split_validation
from siked_runtime.graph import VALIDATION
from siked_runtime.spec import DatasetSpec, DistillationSpec
from siked_runtime.stages.shards import take_part


def load_dataset(ds: DatasetSpec) -> list[dict]:
    if ds.source == "synthetic":
        from siked_runtime.synthetic import generate

        records = generate(ds.synthetic.n, seed=ds.synthetic.seed, families=ds.synthetic.families)
        return records[: ds.limit] if ds.limit else records
    return load_records(ds.source, format=ds.format, limit=ds.limit)


@lru_cache(maxsize=8)
def _cached_json(ds_json: str) -> tuple[dict, ...]:
    return tuple(load_dataset(DatasetSpec.model_validate_json(ds_json)))


def _cached(ds: DatasetSpec) -> tuple[dict, ...]:
    # Keyed by the JSON form: specs holding lists (synthetic families) are not hashable.
    return _cached_json(ds.model_dump_json())


def _split(spec: DistillationSpec) -> tuple[list[dict], list[dict]]:
    train = list(_cached(spec.datasets.train))
    if spec.datasets.validation is not None:
        held = {r["question"] for r in _cached(spec.datasets.validation)}
        return [r for r in train if r["question"] not in held], list(_cached(spec.datasets.validation))
    size = spec.datasets.validation_from_train
    return split_validation(train, int(size) if size >= 1 else float(size), seed=spec.seed)


def train_questions(spec: DistillationSpec) -> list[dict]:
    """Training questions: the train set minus the validation split and anything an eval set holds."""
    held_out = {r["question"] for ds in spec.datasets.eval for r in _cached(ds)}
    return take_part([r for r in _split(spec)[0] if r["question"] not in held_out])


def eval_sets(spec: DistillationSpec) -> dict[str, list[dict]]:
    """The validation split first, then each eval set, by name."""
    sets = {VALIDATION: _split(spec)[1]}
    for ds in spec.datasets.eval:
        sets[ds.name] = list(_cached(ds))
    return {name: take_part(records) for name, records in sets.items()}
