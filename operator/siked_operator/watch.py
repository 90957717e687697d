"""The stage Jobs, listed and watched with a server-side label selector.

    jobs = StageJobs(api_client, namespaces=None, on_change=wake)   # None: every namespace
    jobs.start(); await jobs.ready.wait()
    jobs.of(namespace, run) -> list[JobState]

kopf filters a watch by labels on the client, so an operator watching Jobs through
kopf receives, parses and keeps every Job of the cluster. This watches only Jobs
that carry the `siked.io/run` label (the API server filters), one thread per
watched namespace (or one for the cluster), and keeps only their JobStates: a
cache of the API, rebuilt by a fresh list after every error or expired watch.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from siked_operator.jobs import RUN_LABEL, JobState

logger = logging.getLogger(__name__)

SERVER_TIMEOUT = 300  # seconds a watch lasts before the server ends it (and we list again)


class StageJobs:
    def __init__(self, client: kubernetes.client.ApiClient, namespaces: list[str] | None,
                 on_change: Callable[[str, str], None], request_timeout: float = 30.0):
        self.client = client
        self.namespaces = namespaces
        self.on_change = on_change          # called from the watch threads with (namespace, run)
        self.request_timeout = request_timeout
        self.ready = threading.Event()      # every scope has been listed once
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], dict[str, JobState]] = {}
        self._listed: set[str | None] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def of(self, namespace: str, run: str) -> list[JobState]:
        with self._lock:
            return list(self._jobs.get((namespace, run), {}).values())

    def start(self) -> None:
        for scope in self.namespaces or [None]:
            thread = threading.Thread(target=self._loop, args=(scope,), name=f"jobs-{scope or 'all'}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    # --- one scope --------------------------------------------------------------------------------

    def _loop(self, scope: str | None) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                version = self._list(scope)
                delay = 1.0
                self._watch(scope, version)
            except Exception as exc:  # noqa: BLE001 - an outage or an expired version: list again, backing off
                logger.warning(f"watching stage Jobs in {scope or 'all namespaces'}: {exc}; listing again in "
                               f"{delay:.0f}s")
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _call(self, scope: str | None, **kwargs: Any) -> Any:
        batch = kubernetes.client.BatchV1Api(self.client)
        kwargs |= {"label_selector": RUN_LABEL, "_preload_content": False}
        if scope is None:
            return batch.list_job_for_all_namespaces(**kwargs)
        return batch.list_namespaced_job(scope, **kwargs)

    def _list(self, scope: str | None) -> str | None:
        response = self._call(scope, _request_timeout=self.request_timeout)
        listing = json.loads(response.data)
        fresh: dict[tuple[str, str], dict[str, JobState]] = {}
        for item in listing.get("items") or []:
            state = JobState.from_body(item)
            if state is not None:
                fresh.setdefault((item["metadata"]["namespace"], state.run), {})[state.name] = state
        with self._lock:
            gone = [key for key in self._jobs if (scope is None or key[0] == scope) and key not in fresh]
            for key in gone:
                del self._jobs[key]
            self._jobs.update(fresh)
            self._listed.add(scope)
            if len(self._listed) == len(self.namespaces or [None]):
                self.ready.set()
        for key in [*fresh, *gone]:
            self.on_change(*key)
        return (listing.get("metadata") or {}).get("resourceVersion")

    def _watch(self, scope: str | None, version: str | None) -> None:
        response = self._call(scope, watch=True, resource_version=version, allow_watch_bookmarks=True,
                              timeout_seconds=SERVER_TIMEOUT,
                              _request_timeout=(self.request_timeout, SERVER_TIMEOUT + 30))
        try:
            buffer = b""
            for chunk in response.stream(65536, decode_content=False):
                if self._stop.is_set():
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._on_event(json.loads(line))
        finally:
            response.release_conn()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind, body = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiException(status=body.get("code"), reason=body.get("message"))  # e.g. 410 Gone: list again
        if kind == "BOOKMARK":
            return
        state = JobState.from_body(body)
        if state is None:
            return
        key = (body["metadata"]["namespace"], state.run)
        with self._lock:
            jobs = self._jobs.setdefault(key, {})
            if kind == "DELETED":
                jobs.pop(state.name, None)
                if not jobs:
                    del self._jobs[key]
            else:
                jobs[state.name] = state
        self.on_change(*key)
