"""The few Kubernetes API calls the handlers make, on plain dicts.

kopf watches the runs and `siked_operator.watch` the Jobs; these calls create,
read and delete stage Jobs, and read the pods of failed or waiting ones. Every
call has a timeout. Label selectors are sent to the server and
applied again here, so a server that ignores them (or a cache) cannot make us
touch another run's Jobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from siked_operator.jobs import CONTAINER, RUN_LABEL, run_label
from siked_operator.status import Failure, PodWaiting
from siked_runtime.spec import API_VERSION

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "distillationruns"


def api_client() -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG, ~/.kube/config)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data or b"{}")


def _matches(obj: dict[str, Any], labels: dict[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


@dataclass
class Kube:
    client: kubernetes.client.ApiClient
    # Seconds for any one request: an API server that stopped answering must not hang a run's driver.
    timeout: float = 30.0

    @property
    def batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self.client)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.client)

    def _create(self, create: Any, namespace: str, body: dict[str, Any]) -> bool:
        """`create(namespace, body)` unless an object of its name exists; True when this call created it."""
        try:
            create(namespace, body, _preload_content=False, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def create_job(self, namespace: str, job: dict[str, Any]) -> bool:
        """Create the Job unless one with its name exists; True when this call created it."""
        return self._create(self.batch.create_namespaced_job, namespace, job)

    def create_service(self, namespace: str, service: dict[str, Any]) -> bool:
        """Create the Service unless one with its name exists; True when this call created it."""
        return self._create(self.core.create_namespaced_service, namespace, service)

    def job_owner(self, namespace: str, name: str) -> str | None:
        """The uid of the Job's controlling owner: "" when it has none, None when the Job is gone."""
        try:
            job = _json(self.batch.read_namespaced_job(name, namespace, _preload_content=False,
                                                       _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        refs = (job.get("metadata") or {}).get("ownerReferences") or []
        return next((r.get("uid") or "" for r in refs if r.get("controller")), "")

    def delete_job(self, namespace: str, name: str) -> bool:
        """Delete a Job and (by background propagation) its pods; False when it was already gone."""
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background",
                                             _preload_content=False, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def run_jobs(self, namespace: str, run_name: str) -> list[dict[str, Any]]:
        labels = {RUN_LABEL: run_label(run_name)}
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items = _json(self.batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False,
                                                     _request_timeout=self.timeout)).get("items") or []
        return [job for job in items if _matches(job, labels)]

    def patch_run_status(self, namespace: str, name: str, patch: dict[str, Any]) -> str | None:
        """Merge-patch the run's status; returns the run's new resourceVersion (None when the run is gone)."""
        try:
            response = kubernetes.client.CustomObjectsApi(self.client).patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": patch},
                _content_type="application/merge-patch+json", _preload_content=False,
                _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return (_json(response).get("metadata") or {}).get("resourceVersion")

    def _job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """The Job's pods, oldest first."""
        selector = f"batch.kubernetes.io/job-name={job_name}"
        items = _json(self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False,
                                                    _request_timeout=self.timeout)).get("items") or []
        pods = [p for p in items if _matches(p, {"batch.kubernetes.io/job-name": job_name})]
        return sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")

    def pod_waiting(self, namespace: str, job_name: str) -> PodWaiting | None:
        """Why the Job's newest pod has not started: unschedulable, or its container waiting (image pull, …)."""
        for pod in reversed(self._job_pods(namespace, job_name)):
            status = pod.get("status") or {}
            for cs in status.get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                    return PodWaiting(waiting["reason"], (waiting.get("message") or "")[:1024])
            for c in status.get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("status") == "False":
                    return PodWaiting(c.get("reason") or "Unschedulable", (c.get("message") or "")[:1024])
            return None  # only the newest pod counts
        return None

    def job_failure(self, namespace: str, job_name: str) -> Failure:
        """Exit code and termination message of the Job's first failed pod, else of its last pod (empty when
        the pods are gone). An Indexed Job's other pods may have succeeded, or been stopped by the failure."""
        ended = []
        for pod in self._job_pods(namespace, job_name):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
                if cs.get("name") == CONTAINER and terminated:
                    ended.append(terminated)
        failed = sorted((t for t in ended if t.get("exitCode")), key=lambda t: t.get("finishedAt") or "")
        terminated = failed[0] if failed else ended[-1] if ended else None
        if terminated is None:
            return Failure()
        return Failure(exit_code=terminated.get("exitCode"), message=_failure_message(terminated))


def _failure_message(terminated: dict[str, Any]) -> str | None:
    """The stage's own error from its JSON summary; else the kubelet's reason (OOMKilled, Error)."""
    message = (terminated.get("message") or "").strip()
    if message:
        try:
            summary = json.loads(message.splitlines()[-1])
        except (ValueError, IndexError):
            return message[-1024:]
        if isinstance(summary, dict) and summary.get("error"):
            return str(summary["error"])
        return message[-1024:]
    return terminated.get("reason")
