"""The DistillationRun spec: defaults, manifest loading, and errors that name the field."""

import json

import pytest
import yaml

from siked_runtime.crd_schema import spec_schema
from siked_runtime.spec import (
    API_VERSION,
    DistillationSpec,
    SpecError,
    load_manifest,
    parse_manifest,
    validate_spec,
)


def manifest(**spec):
    spec.setdefault("student", {"model": "builtin:tiny-random"})
    return {"apiVersion": API_VERSION, "kind": "DistillationRun", "metadata": {"name": "demo"}, "spec": spec}


def test_minimal_manifest_gets_documented_defaults():
    run = parse_manifest(manifest())
    spec = run.spec
    assert spec.method == "siked"
    assert spec.strategies == ["cot", "l2m", "pot"]
    assert spec.teacher.kind == "oracle"
    assert spec.student.finetune == "lora" and spec.student.lora.rank == 16
    assert spec.iterations.max == 3 and spec.iterations.samples_per_question == 4
    assert spec.mixing.policy == "all"
    assert spec.datasets.train.source == "synthetic"
    assert spec.backoff_limit == 3 and spec.suspend is False


def test_iteration0_steps_apply_to_iteration_0_only():
    training = parse_manifest(manifest(training={"maxSteps": 15, "iteration0Steps": 45})).spec.training
    assert [training.for_iteration(t).max_steps for t in (0, 1, 2)] == [45, 15, 15]
    assert training.for_iteration(0).iteration0_steps is None
    plain = parse_manifest(manifest(training={"maxSteps": 15})).spec.training
    assert plain.for_iteration(0) is plain and plain.for_iteration(0).max_steps == 15
    with pytest.raises(SpecError, match="iteration0Steps"):
        parse_manifest(manifest(training={"iteration0Steps": 0}))


def test_yaml_file_roundtrip(tmp_path):
    text = yaml.safe_dump(manifest(mixing={"policy": "alpha", "alphaSchedule": [0.9, 0.5, 0.2]}))
    path = tmp_path / "run.yaml"
    path.write_text(text)
    run = load_manifest(path)
    assert run.metadata.name == "demo"
    assert [run.spec.alpha_for(t) for t in (0, 1, 2, 3, 7)] == [None, 0.9, 0.5, 0.2, 0.2]
    # the resolved manifest loads back to the same spec
    again = parse_manifest(json.loads(json.dumps(run.to_manifest())))
    assert again.spec == run.spec


def test_explicit_null_survives_the_resolved_manifest():
    run = parse_manifest(manifest(iterations={"earlyStopping": {"patience": None}}))
    again = parse_manifest(yaml.safe_load(yaml.safe_dump(run.to_manifest())))
    assert again.spec.iterations.early_stopping.patience is None
    assert again.spec == run.spec


def test_multi_document_yaml_picks_the_run(tmp_path):
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s3}\n---\n" + yaml.safe_dump(manifest())
    assert load_manifest(text).metadata.name == "demo"


def test_last_iteration_per_method():
    assert validate_spec({"student": {"model": "m"}, "iterations": {"max": 5}}).last_iteration == 5
    assert validate_spec({"student": {"model": "m"}, "method": "distill"}).last_iteration == 0
    assert validate_spec({"student": {"model": "m"}, "method": "skintern"}).last_iteration == 3
    sk = validate_spec({"student": {"model": "m"}, "method": "skintern", "internalization": {"stages": 2}})
    assert sk.last_iteration == 1


def test_resources_merge_stage_overrides():
    spec = validate_spec({
        "student": {"model": "m"},
        "resources": {"default": {"cpu": "2", "memory": "8Gi", "queueName": "q"}, "train": {"gpus": 1, "memory": "32Gi"}},
    })
    train = spec.resources.for_stage("train")
    assert (train.cpu, train.memory, train.gpus, train.queue_name) == ("2", "32Gi", 1, "q")
    assert spec.resources.for_stage("eval").memory == "8Gi"
    assert spec.resources.default.memory == "8Gi"  # not mutated


INVALID = [
    # (spec patch, field path that must be named, words of the reason)
    ({"iterations": {"max": -1}}, "spec.iterations.max", "greater than or equal to 0"),
    ({"iterations": {"max": "three"}}, "spec.iterations.max", "integer"),
    ({"strategies": ["cot", "tot"]}, "spec.strategies[1]", "unknown strategy 'tot'"),
    ({"strategies": []}, "spec.strategies", "at least 1"),
    ({"mixing": {"policy": "alpha", "alphaSchedule": [0.9, 1.4]}}, "spec.mixing.alphaSchedule[1]", "1.4"),
    ({"mixing": {"policy": "alpha"}}, "spec.mixing.alphaSchedule", "required"),
    ({"mixing": {"policy": "sometimes"}}, "spec.mixing.policy", "'all', 'adaptive', 'self', 'alpha' or 'teacher'"),
    ({"student": None}, "spec.student", "valid dictionary"),
    ({"student": {"finetune": "lora"}}, "spec.student.model", "required"),
    ({"storage": {"uri": "ftp://host/x"}}, "spec.storage.uri", "file:// or s3://"),
    ({"storage": {"uri": "s3://"}}, "spec.storage.uri", "file:// or s3://"),
    ({"storage": {"endpoint": "minio:9000"}}, "spec.storage.endpoint", "http(s) URL"),
    ({"teacher": {"kind": "openai", "model": "gpt"}}, "spec.teacher.endpoint", "required"),
    ({"teacher": {"kind": "local"}}, "spec.teacher.model", "required"),
    ({"teacher": {"temperature": -0.1}}, "spec.teacher.temperature", "greater than or equal to 0"),
    ({"training": {"learningRate": 0}}, "spec.training.learningRate", "greater than 0"),
    ({"training": {"lrScheduler": "warm"}}, "spec.training.lrScheduler", "must be one of"),
    ({"resources": {"train": {"memory": "16 gigs"}}}, "spec.resources.train.memory", "Kubernetes quantity"),
    ({"datasets": {"train": {"name": "t", "source": "gs://b/k"}}}, "spec.datasets.train.source", "gs://"),
    ({"datasets": {"train": {"name": "t", "source": "synthetic"}, "eval": [
        {"name": "a", "source": "x"}, {"name": "a", "source": "y"}]}}, "spec.datasets.eval", "unique"),
    ({"datasets": {"train": {"name": "t", "source": "synthetic"}, "validationFromTrain": 1.5}},
     "spec.datasets.validationFromTrain", "fraction"),
    ({"iterations": {"targetAccuracy": 1.5}}, "spec.iterations.targetAccuracy", "less than or equal to 1"),
    ({"method": "skintern", "internalization": {"stages": 3, "schedule": [1, 0.5]}},
     "spec.internalization.schedule", "needs 3 shares"),
    ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy", "Always"),
    ({"backoffLimit": -2}, "spec.backoffLimit", "greater than or equal to 0"),
    ({"iteratons": {"max": 2}}, "spec.iteratons", "unknown field"),
    ({"training": {"distributed": {"nodes": 2}}}, "spec.training.distributed.strategy", "ddp or fsdp"),
    ({"training": {"distributed": {"strategy": "zero3"}}}, "spec.training.distributed.strategy", "'none', 'ddp' or"),
    ({"sampling": {"shards": 0}}, "spec.sampling.shards", "greater than or equal to 1"),
    ({"sampling": {"vllm": {"gpuMemoryUtilization": 1.5}}}, "spec.sampling.vllm.gpuMemoryUtilization", "less than"),
    ({"teacher": {"maxFailureShare": 2}}, "spec.teacher.maxFailureShare", "less than or equal to 1"),
    ({"teacher": {"pricing": {"inputPerMillion": 1}}}, "spec.teacher.pricing.outputPerMillion", "required"),
]


@pytest.mark.parametrize("patch,path,reason", INVALID, ids=[p for _, p, _ in INVALID])
def test_invalid_manifest_names_the_field(patch, path, reason):
    data = manifest(**patch)
    if data["spec"].get("student") is None:
        data["spec"].pop("student")
        data["spec"]["student"] = None
    with pytest.raises(SpecError) as info:
        parse_manifest(data)
    lines = [p for p in info.value.problems if p.startswith(path + ":")]
    assert lines, f"no error for {path}: {info.value.problems}"
    assert reason in lines[0], lines[0]


def test_metadata_and_header_errors():
    bad = manifest()
    bad["apiVersion"] = "siked.io/v2"
    bad["metadata"]["name"] = "Not_A_Label"
    with pytest.raises(SpecError) as info:
        parse_manifest(bad)
    text = str(info.value)
    assert "apiVersion: must be 'siked.io/v1alpha1', got 'siked.io/v2'" in text
    assert "metadata.name: must be a DNS-1123 subdomain" in text


def test_all_errors_reported_at_once():
    with pytest.raises(SpecError) as info:
        parse_manifest(manifest(iterations={"max": -1}, strategies=["x"], backoffLimit=-1))
    assert len(info.value.problems) == 3


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(SpecError, match="not valid YAML"):
        load_manifest("spec: [unclosed\nfoo: bar")
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_manifest(["a"])


def test_spec_is_immutable():
    spec = validate_spec({"student": {"model": "m"}})
    with pytest.raises(Exception):
        spec.iterations.max = 9


def test_schema_is_structural():
    schema = spec_schema()
    text = json.dumps(schema)
    for forbidden in ('"$ref"', '"anyOf"', '"title"', '"const"', '"$defs"'):
        assert forbidden not in text
    props = schema["properties"]
    assert schema["required"] == ["student"]
    assert props["iterations"]["properties"]["max"]["minimum"] == 0
    assert props["mixing"]["properties"]["policy"]["enum"] == ["all", "adaptive", "self", "alpha", "teacher"]
    assert props["mixing"]["properties"]["alphaSchedule"]["items"]["maximum"] == 1.0
    assert props["storage"]["properties"]["uri"]["nullable"] is True
    lr = props["training"]["properties"]["learningRate"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True

    def walk(node, path="spec"):
        if isinstance(node, dict):
            if "properties" in node or "items" in node:
                assert "type" in node, path
            if "description" not in node and path.count(".") and "x-kubernetes-preserve-unknown-fields" not in node:
                assert path.endswith("]") or "items" in path or "additionalProperties" in path, f"{path} has no description"
            for k, v in node.get("properties", {}).items():
                walk(v, f"{path}.{k}")
            if isinstance(node.get("items"), dict):
                walk(node["items"], f"{path}.items")
    walk(schema)


def test_defaults_match_schema_defaults():
    spec = DistillationSpec(student={"model": "m"})
    schema = spec_schema()["properties"]
    assert schema["iterations"]["properties"]["samplesPerQuestion"]["default"] == spec.iterations.samples_per_question
    assert schema["training"]["properties"]["learningRate"]["default"] == spec.training.learning_rate
