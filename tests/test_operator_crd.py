"""The CRD: generated from the spec model, and every example and status fits it."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from siked_operator.config import Config
from siked_operator.crd import build_crd, render
from siked_operator.jobs import JobState
from siked_operator.phases import ConditionType, Phase, Reason
from siked_operator.status import Failure, RunRef, decide, invalid_status

from siked_runtime.graph import StageKey
from siked_runtime.spec import load_manifest, validate_spec

sys.path.insert(0, str(Path(__file__).parent))
from k8s_tools import pruned  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "distillationrun.yaml"
EXAMPLES = ["examples/smoke.yaml", "examples/gpu-cluster.yaml"]


def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def errors(document: Any, node: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in OAS30Validator(node).iter_errors(document)]


def test_crd_file_is_generated_from_the_model():
    assert CRD_FILE.read_text() == render(), (
        "crds/distillationrun.yaml is out of date: python -m siked_operator.crd > crds/distillationrun.yaml")


def test_crd_file_reads_the_same_in_yaml_1_1():
    """kubectl, helm and kube-apiserver read YAML 1.1, where a bare `n` or `y` is a boolean."""
    yaml_1_1_booleans = re.compile(r"^\s*(?:- )?(?:y|Y|n|N|yes|no|on|off)\s*:", re.MULTILINE)
    assert yaml_1_1_booleans.findall(render()) == []
    assert yaml.safe_load(render())["spec"] == build_crd()["spec"]


def test_crd_names_subresources_and_columns():
    crd = build_crd()
    assert crd["metadata"]["name"] == "distillationruns.siked.io"
    names = crd["spec"]["names"]
    assert names["kind"] == "DistillationRun" and names["shortNames"] == ["dr"]
    [version] = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [("Phase", ".status.phase"), ("Iteration", ".status.iteration"), ("Stage", ".status.stage"),
                       ("Best", ".status.bestIteration"), ("Age", ".metadata.creationTimestamp")]


def test_crd_enums_mirror_the_phase_module():
    status = schema()["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [p.value for p in Phase]
    condition = status["conditions"]["items"]["properties"]
    assert condition["reason"]["enum"] == [r.value for r in Reason]
    assert condition["type"]["enum"] == [t.value for t in ConditionType]


def test_crd_spec_schema_is_structural():
    """Every node has a type (or preserves unknown fields), as kube-apiserver demands of a structural schema."""
    def walk(node: dict[str, Any], path: str) -> list[str]:
        bad = [] if "type" in node or node.get("x-kubernetes-preserve-unknown-fields") else [path]
        for key in ("anyOf", "oneOf", "allOf", "$ref", "const", "title"):
            if key in node:
                bad.append(f"{path}: {key}")
        for name, child in (node.get("properties") or {}).items():
            bad += walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            bad += walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            bad += walk(node["additionalProperties"], f"{path}{{}}")
        return bad

    assert walk(schema(), "") == []


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_validate_against_the_crd(example):
    document = yaml.safe_load((REPO / example).read_text())
    assert errors(document, schema()) == []
    assert pruned(document, schema()) == []
    load_manifest(REPO / example)  # and against the spec model itself


def test_the_crd_rejects_what_the_model_rejects():
    document = yaml.safe_load((REPO / "examples/smoke.yaml").read_text())
    document["spec"]["method"] = "magic"
    document["spec"]["iterations"]["max"] = 1000
    found = errors(document, schema())
    assert any("spec.method" in e for e in found) and any("spec.iterations.max" in e for e in found)
    document = yaml.safe_load((REPO / "examples/smoke.yaml").read_text())
    del document["spec"]["student"]
    assert any("student" in e for e in errors(document, schema()))


def test_statuses_the_operator_writes_fit_the_crd():
    status_node = schema()["properties"]["status"]
    spec = validate_spec(yaml.safe_load((REPO / "examples/smoke.yaml").read_text())["spec"])
    now = datetime(2026, 3, 1, tzinfo=UTC)
    run = RunRef("smoke", "default", 3, "s3://runs/default/smoke")
    failed = JobState("smoke-teacher", "smoke", StageKey("teacher"), 0, True, False, True, False, finished_at=now)
    shares = {"validation": {"cot": 0.5, "l2m": 0.3, "pot": 0.2}}
    done = {
        "teacher": {"rows": 3},
        "baseline": {"accuracy": {"validation": 0.1}, "strategy_shares": shares},
        "iter-000/train": {"rows": 3, "teacher_rows": 3, "self_rows": 0, "alpha": 1.0, "model": "s3://m"},
        "iter-000/eval": {"accuracy": {"validation": 0.2, "synthetic-test": 0.1}, "strategy_shares": shares},
    }
    statuses = [
        decide(run, spec, done, [failed], {}, now, Config(), {"smoke-teacher": Failure(1, "boom")}).status,
        decide(run, spec, {}, [], {}, now, Config()).status,
        invalid_status(run, Reason.INVALID_SPEC, ["spec.student: required field is missing"], {}, now)[0],
    ]
    for status in statuses:
        assert errors(status, status_node) == []
        assert pruned(status, status_node) == []
