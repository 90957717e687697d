"""One reconcile pass against a local store and a recording stand-in for the Kubernetes API."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from siked_operator.config import Config
from siked_operator.jobs import JobState
from siked_operator.reconcile import (
    cleanup_run,
    reconcile_run,
    resolve_run_uri,
    spec_problems,
    store_spec,
)
from siked_operator.status import Failure

from siked_runtime.graph import StageKey
from siked_runtime.spec import SpecError, validate_spec
from siked_runtime.storage import open_store, publish

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())
T0 = datetime(2026, 3, 1, tzinfo=UTC)
LOG = logging.getLogger("test")


class RecordingKube:
    """Stands in for siked_operator.kube.Kube: remembers what it was asked to do."""

    def __init__(self, refuse=None, owners=None):
        self.created, self.deleted, self.existing = [], [], set()
        self.refuse = refuse          # an ApiException every create raises
        self.owners = owners or {}    # Job name -> owner uid of Jobs that exist already

    def create_job(self, namespace, job):
        name = job["metadata"]["name"]
        self.created.append(name)
        if self.refuse is not None:
            raise self.refuse
        if name in self.existing or name in self.owners:
            return False
        self.existing.add(name)
        return True

    def job_owner(self, namespace, name):
        return self.owners.get(name, "u-1")

    def pod_waiting(self, namespace, name):
        return None

    def delete_job(self, namespace, name):
        self.deleted.append(name)
        return True

    def run_jobs(self, namespace, run):
        return [{"metadata": {"name": n}} for n in sorted(self.existing)]

    def job_failure(self, namespace, name):
        return Failure(1, "boom")


def run_body(tmp_path, **spec_changes):
    spec = {**SMOKE["spec"], **spec_changes}
    return {"apiVersion": "siked.io/v1alpha1", "kind": "DistillationRun",
            "metadata": {"name": "smoke", "namespace": "default", "uid": "u-1", "generation": 1},
            "spec": spec, "status": {}}


@pytest.fixture
def config(tmp_path):
    return Config(storage_uri=(tmp_path / "runs").as_uri())


def test_a_first_pass_stores_the_spec_and_creates_the_first_jobs(tmp_path, config):
    kube = RecordingKube()
    result = reconcile_run(run_body(tmp_path), [], config, kube, T0, LOG)
    assert kube.created == ["smoke-teacher", "smoke-baseline"]
    assert [e.reason for e in result.events] == ["StageStarted", "StageStarted"]
    assert result.patch["phase"] == "Pending" and result.patch["runUri"].endswith("/runs/default/smoke")
    stored = yaml.safe_load(open_store(result.patch["runUri"]).get_text("spec.yaml"))
    assert stored["metadata"] == {"name": "smoke", "namespace": "default", "uid": "u-1"}
    # Nulls survive: `patience: null` means "never stop early", not "the default".
    assert stored["spec"]["iterations"]["earlyStopping"]["patience"] is None
    assert result.seen is not None


def test_a_second_pass_creates_nothing_twice(tmp_path, config):
    kube = RecordingKube()
    body = run_body(tmp_path)
    first = reconcile_run(body, [], config, kube, T0, LOG)
    body["status"] = first.patch
    # The index has not seen the new Jobs yet: creating again meets a 409 and posts no second event.
    again = reconcile_run(body, [], config, kube, T0, LOG)
    assert kube.created.count("smoke-teacher") == 2 and len(kube.existing) == 2
    assert again.events == []


def test_finished_stages_advance_the_run(tmp_path, config):
    kube = RecordingKube()
    body = run_body(tmp_path)
    body["status"] = reconcile_run(body, [], config, kube, T0, LOG).patch
    store = open_store(body["status"]["runUri"])
    publish(store, "teacher", {"rows": 3, "duration_seconds": 1.0})
    teacher = JobState("smoke-teacher", "smoke", StageKey("teacher"), 0, True, True, False, False, finished_at=T0)
    baseline = JobState("smoke-baseline", "smoke", StageKey("baseline"), 0, True, False, False, False)
    result = reconcile_run(body, [teacher, baseline], config, kube, T0, LOG)
    assert kube.created[-1] == "smoke-it0-train"
    assert [e.reason for e in result.events] == ["StageSucceeded", "StageStarted"]
    assert result.patch["phase"] == "Running" and result.patch["progress"] == "1/8"


def test_a_changed_spec_is_refused(tmp_path, config):
    kube = RecordingKube()
    body = run_body(tmp_path)
    body["status"] = reconcile_run(body, [], config, kube, T0, LOG).patch
    edited = run_body(tmp_path, training={"maxSteps": 50})
    edited["metadata"]["generation"] = 2
    edited["status"] = body["status"]
    result = reconcile_run(edited, [], config, kube, T0, LOG)
    valid = next(c for c in result.patch["conditions"] if c["type"] == "SpecValid")
    assert valid["reason"] == "SpecChanged" and "training" in valid["message"]
    assert kube.created == ["smoke-teacher", "smoke-baseline"]
    # Run controls may change: suspending is not a new spec.
    suspended = run_body(tmp_path, suspend=True)
    suspended["metadata"]["generation"] = 3
    suspended["status"] = body["status"]
    assert reconcile_run(suspended, [], config, kube, T0, LOG).patch["phase"] == "Suspended"


def test_an_invalid_spec_gets_a_condition_and_no_jobs(tmp_path, config):
    kube = RecordingKube()
    body = run_body(tmp_path, mixing={"policy": "alpha"})
    result = reconcile_run(body, [], config, kube, T0, LOG)
    assert kube.created == []
    assert result.patch["phase"] == "Failed"
    assert "spec.mixing.alphaSchedule" in result.patch["conditions"][0]["message"]
    assert spec_problems(body, config) == ["spec.mixing.alphaSchedule: is required when mixing.policy is 'alpha'"]


def test_storage_trouble_is_a_condition_and_the_next_pass_retries(tmp_path, monkeypatch):
    for name, value in {"AWS_MAX_ATTEMPTS": "1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    config = Config(storage_uri="s3://runs/prefix", s3_endpoint="http://127.0.0.1:9")
    result = reconcile_run(run_body(tmp_path), [], config, RecordingKube(), T0, LOG)
    [condition] = result.patch["conditions"]
    assert condition["reason"] == "StorageUnavailable" and result.seen is None and result.trouble
    assert [e.reason for e in result.events] == ["StorageUnavailable"]
    # The same outage on the next pass: no status patch, no second event.
    body = run_body(tmp_path)
    body["status"] = result.patch
    again = reconcile_run(body, [], config, RecordingKube(), T0 + timedelta(seconds=5), LOG)
    assert again.patch == {} and again.events == [] and again.trouble


def test_a_job_the_api_refuses_is_a_condition_and_one_event(tmp_path, config):
    from kubernetes.client.exceptions import ApiException

    refusal = ApiException(status=403, reason="Forbidden")
    refusal.body = ('{"kind": "Status", "reason": "Forbidden", "message": "jobs.batch \\"smoke-teacher\\" is '
                    'forbidden: exceeded quota: compute, requested: requests.nvidia.com/gpu=8"}')
    kube = RecordingKube(refuse=refusal)
    body = run_body(tmp_path)
    result = reconcile_run(body, [], config, kube, T0, LOG)
    progressing = next(c for c in result.patch["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "JobCreateFailed" and result.trouble
    assert "creating Job smoke-teacher for teacher failed: 403 Forbidden" in progressing["message"]
    assert "exceeded quota" in progressing["message"]
    assert [e.reason for e in result.events] == ["JobCreateFailed"]
    body["status"] = result.patch
    again = reconcile_run(body, [], config, kube, T0 + timedelta(seconds=5), LOG)
    assert again.events == [] and "conditions" not in again.patch  # same refusal: nothing new to say


def test_a_job_of_our_name_owned_by_someone_else_is_a_conflict(tmp_path, config):
    kube = RecordingKube(owners={"smoke-teacher": "u-0-old-run"})
    foreign = JobState("smoke-teacher", "smoke", StageKey("teacher"), 0, True, True, False, False, finished_at=T0,
                       owner_uid="u-0-old-run")
    result = reconcile_run(run_body(tmp_path), [foreign], config, kube, T0, LOG)
    progressing = next(c for c in result.patch["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "JobConflict" and "u-0-old-run" in progressing["message"]
    assert not any(s.get("phase") == "Succeeded" for s in result.patch["stages"])  # its success is not ours


def test_a_recreated_run_does_not_inherit_the_old_runs_artifacts(tmp_path, config):
    kube = RecordingKube()
    first = reconcile_run(run_body(tmp_path), [], config, kube, T0, LOG)
    publish(open_store(first.patch["runUri"]), "teacher", {"rows": 3})
    again = run_body(tmp_path)
    again["metadata"]["uid"] = "u-2"
    result = reconcile_run(again, [], config, kube, T0, LOG)
    assert result.patch["phase"] == "Failed"
    valid = next(c for c in result.patch["conditions"] if c["type"] == "SpecValid")
    assert valid["reason"] == "StorageInUse" and "uid u-1" in valid["message"]
    assert kube.created == ["smoke-teacher", "smoke-baseline"]  # none for the new run


def test_run_uri():
    spec = validate_spec(SMOKE["spec"])
    assert resolve_run_uri({}, spec, Config(storage_uri="s3://b/runs/"), "ns", "r") == "s3://b/runs/ns/r"
    assert resolve_run_uri({"runUri": "s3://old/ns/r"}, spec, Config(storage_uri="s3://b/runs"), "ns", "r") == \
        "s3://old/ns/r"
    own = validate_spec({**SMOKE["spec"], "storage": {"uri": "s3://mine/x/"}})
    assert resolve_run_uri({"runUri": "s3://old/ns/r"}, own, Config(), "ns", "r") == "s3://mine/x"
    with pytest.raises(SpecError, match="spec.storage.uri"):
        resolve_run_uri({}, spec, Config(), "ns", "r")


def test_store_spec_reports_changed_fields(tmp_path):
    store = open_store(tmp_path.as_uri())
    spec = validate_spec(SMOKE["spec"])
    assert store_spec(store, "smoke", "default", spec) == []
    assert store_spec(store, "smoke", "default", spec) == []
    changed = validate_spec({**SMOKE["spec"], "seed": 7, "backoffLimit": 9, "resources": {"train": {"gpus": 1}}})
    assert store_spec(store, "smoke", "default", changed) == ["seed"]


def test_deleting_a_run_deletes_its_jobs_and_keeps_artifacts_unless_asked(tmp_path, config):
    kube = RecordingKube()
    body = run_body(tmp_path)
    body["status"] = reconcile_run(body, [], config, kube, T0, LOG).patch
    cleanup_run(body, config, kube, LOG)
    assert sorted(kube.deleted) == ["smoke-baseline", "smoke-teacher"]
    assert open_store(body["status"]["runUri"]).exists("spec.yaml")
    body["spec"] = {**body["spec"], "storage": {"deleteOnRunDeletion": True}}
    cleanup_run(body, config, kube, LOG)
    assert open_store(body["status"]["runUri"]).list() == []


def test_ttl_cleanup_through_a_pass(tmp_path, config):
    kube = RecordingKube()
    body = run_body(tmp_path, ttlSecondsAfterFinished=10)
    body["status"] = reconcile_run(body, [], config, kube, T0, LOG).patch
    publish(open_store(body["status"]["runUri"]), "teacher", {"rows": 3})
    teacher = JobState("smoke-teacher", "smoke", StageKey("teacher"), 0, True, True, False, False, finished_at=T0)
    reconcile_run(body, [teacher], config, kube, T0 + timedelta(seconds=11), LOG)
    assert kube.deleted == ["smoke-teacher"]
