"""Sharded stages: slicing, the part's store, and merged parts that equal the unsharded stage."""

from __future__ import annotations

import shutil

import pytest

from siked_runtime.graph import StageKey
from siked_runtime.models import resolve_model
from siked_runtime.spec import validate_spec
from siked_runtime.stages import run_stage, shards
from siked_runtime.stages.data import eval_sets, train_questions
from siked_runtime.storage import list_manifests, open_store, read_manifest

TIMING = {"seconds", "duration_seconds", "part_seconds", "published_at", "parts", "solutions", "predictions",
          "knowledge"}


def spec_of(**patch):
    patch.setdefault("student", {"model": "builtin:tiny-random", "dtype": "float32"})
    patch.setdefault("datasets", {
        "train": {"name": "train", "source": "synthetic", "synthetic": {"n": 11, "seed": 1}},
        "validationFromTrain": 5,
        "eval": [{"name": "test", "source": "synthetic", "synthetic": {"n": 7, "seed": 2}}],
    })
    # The fixed budget: the adaptive one shares savings within a part only (stages/shards.py).
    patch.setdefault("iterations", {"samplesPerQuestion": 2, "temperature": 1.0, "adaptiveBudget": False})
    patch.setdefault("sampling", {"batchSize": 16, "maxNewTokens": 12})
    patch.setdefault("evaluation", {"batchSize": 16, "maxNewTokens": 12})
    return validate_spec(patch)


def numbers(manifest: dict) -> dict:
    """A manifest without times and URIs: what a merged stage must share with the unsharded one."""
    return {k: v for k, v in manifest.items() if k not in TIMING}


@pytest.mark.parametrize("n,count", [(10, 3), (3, 3), (2, 5), (0, 2), (17, 4)])
def test_parts_are_contiguous_and_hold_every_item_once(n, count):
    ranges = [shards.part_range(n, count, i) for i in range(count)]
    assert [i for r in ranges for i in r] == list(range(n))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


def test_part_rejects_an_index_outside_the_stage():
    with pytest.raises(ValueError, match="part must be in 0…2"):
        shards.Part(3, 3)


def test_data_loaders_slice_inside_a_part():
    spec = spec_of()
    whole, sets = train_questions(spec), eval_sets(spec)
    sliced = []
    for i in range(3):
        with shards.working_on(shards.Part(i, 3)):
            sliced.append((train_questions(spec), eval_sets(spec)))
    assert [r for part, _ in sliced for r in part] == whole
    for name in sets:
        assert [r for _, part in sliced for r in part[name]] == sets[name]
    assert train_questions(spec) == whole  # outside the block: everything again


def test_part_store_moves_only_the_stage_keys(tmp_path):
    store = open_store(str(tmp_path))
    part = shards.PartStore(store, "teacher", 2)
    part.write_jsonl("teacher/all.jsonl.gz", [{"a": 1}])
    part.put_text("teacher/journal/x.jsonl", "{}\n")
    part.put_text("spec.yaml", "kind: x\n")
    assert store.list() == ["spec.yaml", "teacher/parts/2/all.jsonl.gz", "teacher/parts/2/journal/x.jsonl"]
    assert part.list("teacher") == ["teacher/all.jsonl.gz", "teacher/journal/x.jsonl"]
    assert part.read_jsonl("teacher/all.jsonl.gz") == [{"a": 1}]
    assert part.url("teacher/all.jsonl.gz").endswith("/teacher/parts/2/all.jsonl.gz")
    assert part.url("teacherx/a").endswith("/teacherx/a")


def test_sharded_teacher_equals_the_unsharded_one(tmp_path):
    whole = open_store(str(tmp_path / "whole"))
    sharded = open_store(str(tmp_path / "sharded"))
    expected = run_stage(spec_of(), whole, StageKey("teacher"))
    spec = spec_of(teacher={"kind": "oracle", "shards": 3})
    first = run_stage(spec, sharded, StageKey("teacher"), part=1)
    assert first["part"] == 1 and read_manifest(sharded, "teacher") is None  # one part done: no stage yet
    merged = run_stage(spec, sharded, StageKey("teacher"))  # the other two parts, then the merge
    assert numbers(merged) == numbers(expected) and merged["parts"] == 3
    assert read_manifest(sharded, "teacher/parts/1")["published_at"] == first["published_at"]  # not redone
    for name in ("all.jsonl.gz", "solutions.jsonl.gz"):
        assert sharded.read_jsonl(f"teacher/{name}") == whole.read_jsonl(f"teacher/{name}")
    assert list(list_manifests(sharded)) == ["teacher"]


def test_parts_are_not_stages_while_the_stage_is_unfinished(tmp_path):
    store = open_store(str(tmp_path))
    spec = spec_of(teacher={"kind": "oracle", "shards": 2})
    run_stage(spec, store, StageKey("teacher"), part=0)
    assert not any(prefix.startswith("teacher") for prefix in list_manifests(store))


def _model_for_sampling(store) -> None:
    """iter-000/train's model without training it: the built-in tiny student, copied in place."""
    shutil.copytree(resolve_model("builtin:tiny-random"), store.root / "iter-000" / "train" / "model")


def test_sharded_sample_stage_draws_what_the_unsharded_one_draws(tmp_path):
    whole = open_store(str(tmp_path / "whole"))
    sharded = open_store(str(tmp_path / "sharded"))
    for store in (whole, sharded):
        _model_for_sampling(store)
    expected = run_stage(spec_of(), whole, StageKey("sample", 1))
    spec = spec_of(sampling={"batchSize": 16, "maxNewTokens": 12, "shards": 3})
    assert run_stage(spec, sharded, StageKey("sample", 1), part=2)["questions"] == 2
    merged = run_stage(spec, sharded, StageKey("sample", 1))
    rows = sharded.read_jsonl("iter-001/sample/all.jsonl.gz")
    assert rows == whole.read_jsonl("iter-001/sample/all.jsonl.gz")
    assert len({r["completion"] for r in rows}) > len(rows) // 2  # samples, not one completion repeated
    assert sharded.read_jsonl("iter-001/sample/correct.jsonl.gz") == whole.read_jsonl("iter-001/sample/correct.jsonl.gz")
    assert numbers(merged) == numbers(expected) and merged["questions"] == 6


def test_a_failed_part_is_redone_alone(tmp_path, monkeypatch):
    store = open_store(str(tmp_path))
    _model_for_sampling(store)
    spec = spec_of(sampling={"batchSize": 16, "maxNewTokens": 12, "shards": 3})
    key = StageKey("sample", 1)
    run_stage(spec, store, key, part=0)
    from siked_runtime.stages import generation

    def broken(*args, **kwargs):
        raise ConnectionError("the node went away")

    with monkeypatch.context() as m:
        m.setattr(generation.StudentGenerator, "generate", broken)
        with pytest.raises(ConnectionError):
            run_stage(spec, store, key, part=1)
    store.put_text("iter-001/sample/parts/1/all.jsonl.gz.leftover", "half")  # what the failure left behind
    before = read_manifest(store, "iter-001/sample/parts/0")
    run_stage(spec, store, key, part=2)
    assert read_manifest(store, key.prefix) is None  # part 1 is missing: nobody merges
    merged = run_stage(spec, store, key, part=1)
    assert merged["parts"] == 3 and merged["questions"] == 6
    assert read_manifest(store, "iter-001/sample/parts/0") == before
    assert not store.exists("iter-001/sample/parts/1/all.jsonl.gz.leftover")


def test_sharded_baseline_scores_the_sets_as_the_unsharded_one(tmp_path):
    whole = open_store(str(tmp_path / "whole"))
    sharded = open_store(str(tmp_path / "sharded"))
    expected = run_stage(spec_of(), whole, StageKey("baseline"))
    spec = spec_of(evaluation={"batchSize": 16, "maxNewTokens": 12, "shards": 3})
    merged = run_stage(spec, sharded, StageKey("baseline"))
    for name in ("validation", "test"):
        key = f"baseline/predictions-{name}.jsonl.gz"
        assert sharded.read_jsonl(key) == whole.read_jsonl(key)
    assert numbers(merged) == numbers(expected) and merged["n"] == {"validation": 5, "test": 7}


def test_a_part_of_an_unsharded_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not sharded"):
        run_stage(spec_of(), open_store(str(tmp_path)), StageKey("teacher"), part=0)
