"""The DistillationRun CustomResourceDefinition, generated from the spec model.

    python -m siked_operator.crd > crds/distillationrun.yaml

`spec` comes from the pydantic model (`siked_runtime.crd_schema.spec_schema`),
`status` from the fields `siked_operator.status` writes, and the phase and
reason enums from `siked_operator.phases`. A test fails when the committed
file drifts from this output.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import yaml

from siked_operator.phases import ConditionType, Phase, Reason
from siked_runtime.crd_schema import spec_schema
from siked_runtime.spec import API_VERSION, KIND

GROUP, VERSION = API_VERSION.split("/")
PLURAL, SINGULAR, SHORT_NAME = "distillationruns", "distillationrun", "dr"


def _str(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _int(description: str) -> dict[str, Any]:
    return {"type": "integer", "description": description}


def _num(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "number", "description": description, **extra}


def _map(description: str, values: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "description": description, "additionalProperties": values}


def _time(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "date-time", "description": description}


def _obj(description: str, properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out = {"type": "object", "description": description, "properties": properties}
    if required:
        out["required"] = required
    return out


def status_schema() -> dict[str, Any]:
    number = {"type": "number"}
    condition = _obj("A Kubernetes-style condition.", {
        "type": _str("Condition type.", enum=[t.value for t in ConditionType]),
        "status": _str("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": _str("Machine-readable reason.", enum=[r.value for r in Reason]),
        "message": _str("Human-readable details."),
        "lastTransitionTime": _time("When the status last changed."),
        "observedGeneration": _int("The run's generation this condition was computed for."),
    }, required=["type", "status"])
    failure = _obj("The last failed attempt of the stage.", {
        "job": _str("Name of the failed Job."),
        "exitCode": _int("Exit code of the stage container (2: permanent, 75: retryable)."),
        "reason": _str("Reason of the Job's Failed condition."),
        "message": _str("The stage's error, from its termination message."),
        "time": _time("When the attempt failed."),
        "permanent": {"type": "boolean", "description": "Whether retrying cannot help."},
    })
    stage = _obj("One stage of the run and its Jobs.", {
        "name": _str("Stage and iteration, e.g. train[1]."),
        "stage": _str("Stage name."),
        "iteration": _int("Iteration of per-iteration stages."),
        "phase": _str("Phase of the stage.", enum=[p.value for p in Phase if p != Phase.SUSPENDED]),
        "job": _str("Current or last Job of the stage."),
        "attempts": _int("Jobs started for the stage so far."),
        "failedJobs": {"type": "array", "items": {"type": "string"}, "description": "Failed attempts' Jobs."},
        "lastFailure": failure,
        "durationSeconds": _num("Run time of the successful attempt."),
        "completionTime": _time("When the stage's manifest was published."),
    }, required=["name", "stage", "phase"])
    result = _obj("Results of one evaluated iteration (numbers only, never samples).", {
        "iteration": _int("Iteration."),
        "alpha": _num("α: teacher rows / all training rows (unset for iteration 0)."),
        "rows": _int("Training rows."),
        "teacherRows": _int("Teacher rows in the training data."),
        "selfRows": _int("Student (self-generated) rows in the training data."),
        "samples": _int("Student samples drawn."),
        "correctSamples": _int("Student samples verified correct."),
        "sampleAccuracy": _num("Correct samples / samples."),
        "accuracy": _map("Accuracy per evaluation set (validation included).", number),
        "strategyShares": _map("Share of the student's validation solutions per strategy.", number),
        "trainLoss": _num("Final training loss."),
        "modelUri": _str("Where the iteration's model is stored."),
        "regressed": {"type": "boolean", "description": "Validation accuracy fell by more than the tolerance."},
    }, required=["iteration"])
    return _obj("Observed state of the run, derived from its Jobs and stage manifests.", {
        "phase": _str("Pending, Running, Suspended, Succeeded or Failed.", enum=[p.value for p in Phase]),
        "stage": _str("Stage(s) running now."),
        "iteration": _int("Iteration the run is in."),
        "progress": _str("Stages done / stages planned, e.g. 5/8."),
        "runUri": _str("Storage prefix of the run's artifacts."),
        "startTime": _time("When the operator started the run."),
        "completionTime": _time("When the run succeeded or failed."),
        "bestIteration": _int("Iteration with the best validation accuracy."),
        "stopReason": _str("Why no further iteration starts."),
        "modelUri": _str("The final (best) model."),
        "baseline": _map("Accuracy of the untrained student per evaluation set.", number),
        "results": {"type": "array", "items": result, "description": "Results per evaluated iteration."},
        "stages": {"type": "array", "items": stage, "description": "Stages started or done."},
        "conditions": {"type": "array", "items": condition, "description": "Conditions of the run.",
                       "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        "observedGeneration": _int("The generation of the spec the status reflects."),
        "nextCheckTime": _time("When a retry, deadline or cleanup is next due."),
    })


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the run."},
    {"name": "Iteration", "type": "integer", "jsonPath": ".status.iteration", "description": "Current iteration."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "description": "Stage(s) running now."},
    {"name": "Best", "type": "integer", "jsonPath": ".status.bestIteration",
     "description": "Best iteration by validation accuracy."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": "A distillation run: a teacher's multi-step solutions distilled into a student model, "
                       "one Kubernetes Job per stage.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/name": "siked"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": [SHORT_NAME], "categories": ["siked"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


HEADER = "# Generated by `python -m siked_operator.crd` from the spec model; do not edit by hand.\n"


class _Dumper(yaml.SafeDumper):
    """Quotes y and n too: kubectl, helm and kube-apiserver read YAML 1.1, where a bare `n` is false."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))


def render() -> str:
    return HEADER + yaml.dump(build_crd(), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


if __name__ == "__main__":
    sys.stdout.write(render())
