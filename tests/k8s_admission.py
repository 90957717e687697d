"""What kube-apiserver checks before it stores an object, for the test emulator (tests/k8s_tools.py).

    problems = admit(kind, obj, crd_schema=…, namespace_labels=…)   # [] when the object would be stored
    pruned(obj, schema) / prune(obj, schema)                        # a CRD's structural-schema pruning
    psa_restricted_violations(pod_spec)                             # Pod Security `restricted`
    selector_matches("a=b,c in (d,e),!f", labels)                   # label selectors, as list/watch apply them

Built-in kinds are validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an
unknown field is an error, as with `fieldValidation=Strict`), custom resources against their CRD's
openAPIV3Schema after pruning. Names, label keys and values follow apimachinery's validation.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
KUBERNETES = "1.34"
# Kinds whose names are DNS-1123 labels rather than subdomains.
LABEL_NAMED = {"Namespace", "Service"}


# --- names and labels ---------------------------------------------------------------------------


def name_problems(kind: str, name: str | None) -> list[str]:
    if not name:
        return ["metadata.name: Required value"]
    if kind in LABEL_NAMED:
        ok = len(name) <= 63 and DNS_LABEL.match(name)
    else:
        ok = len(name) <= 253 and DNS_SUBDOMAIN.match(name)
    if not ok:
        return [f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 "
                f"{'label' if kind in LABEL_NAMED else 'subdomain'} must consist of lower case alphanumeric "
                "characters, '-' or '.'"]
    if kind == "Job" and (len(name) > 63 or not LABEL_VALUE.match(name)):
        # The Job controller labels its pods with the Job's name (batch.kubernetes.io/job-name).
        return [f"metadata.name: Invalid value: {name!r}: must be no more than 63 characters"]
    return []


def _key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return f"{key!r}: prefix part must be a DNS-1123 subdomain"
    if len(name) > 63 or not LABEL_NAME.match(name):
        return f"{key!r}: name part must consist of alphanumeric characters, '-', '_' or '.'"
    return None


def label_problems(where: str, labels: Any, values: bool = True) -> list[str]:
    out = []
    for key, value in (labels or {}).items():
        problem = _key_problem(key)
        if problem is None and values and (not isinstance(value, str) or len(value) > 63
                                           or not LABEL_VALUE.match(value)):
            problem = f"{value!r}: a valid label must be an empty string or consist of alphanumeric characters, " \
                      "'-', '_' or '.', and must start and end with an alphanumeric character"
        if problem:
            out.append(f"{where}: Invalid value: {problem}")
    return out


def _metadata_problems(kind: str, meta: dict[str, Any]) -> list[str]:
    out = name_problems(kind, meta.get("name"))
    out += label_problems("metadata.labels", meta.get("labels"))
    out += label_problems("metadata.annotations", meta.get("annotations"), values=False)
    return out


# --- label selectors ----------------------------------------------------------------------------

_REQUIREMENT = re.compile(r"\s*(!?)([^,=!\s()]+)(?:\s*(==|=|!=)\s*([^,\s()]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*")


@functools.cache
def parse_selector(selector: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """`a=b,c!=d,e in (f,g),h notin (i),j,!k` -> ((key, operator, values), …)."""
    out, pos = [], 0
    while pos < len(selector):
        m = _REQUIREMENT.match(selector, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unable to parse requirement: {selector[pos:]!r}")
        neg, key, op, value, setop, values = m.groups()
        if neg:
            out.append((key, "!", ()))
        elif op:
            out.append((key, "!=" if op == "!=" else "=", (value,)))
        elif setop:
            out.append((key, setop, tuple(v.strip() for v in values.split(","))))
        else:
            out.append((key, "exists", ()))
        pos = m.end()
        if pos < len(selector) and selector[pos] == ",":
            pos += 1
    return tuple(out)


def selector_matches(selector: str | None, labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    for key, op, values in parse_selector(selector or ""):
        have = labels.get(key)
        ok = {"=": have == values[0] if values else False, "!=": have != values[0] if values else True,
              "in": have in values, "notin": have not in values, "exists": key in labels, "!": key not in labels}[op]
        if not ok:
            return False
    return True


# --- custom resources: pruning and the structural schema ----------------------------------------


def pruned(document: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """Fields kube-apiserver would silently drop from `document`: not in the structural schema's properties."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(document, dict) and node.get("type") == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        for key, value in document.items():
            if props is not None and key in props:
                out += pruned(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += pruned(value, extra, f"{path}.{key}")
            elif props is not None and key not in ("metadata", "apiVersion", "kind"):
                out.append(f"{path}.{key}")
    elif isinstance(document, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(document):
            out += pruned(item, node["items"], f"{path}[{i}]")
    return out


def prune(document: Any, node: dict[str, Any]) -> Any:
    """`document` without the fields `pruned` names (a new object)."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return document
    if isinstance(document, dict) and node.get("type") == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        out = {}
        for key, value in document.items():
            if props is not None and key in props:
                out[key] = prune(value, props[key])
            elif isinstance(extra, dict):
                out[key] = prune(value, extra)
            elif props is None or key in ("metadata", "apiVersion", "kind"):
                out[key] = value
        return out
    if isinstance(document, list) and isinstance(node.get("items"), dict):
        return [prune(item, node["items"]) for item in document]
    return document


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as kube-apiserver applies application/merge-patch+json (a new object)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@functools.cache
def _cr_validator(schema_key: int) -> Any:
    from openapi_schema_validator import OAS30Validator

    return OAS30Validator(_SCHEMAS[schema_key])


_SCHEMAS: dict[int, dict[str, Any]] = {}


def cr_problems(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The CRD's openAPIV3Schema errors of a (pruned) custom resource."""
    _SCHEMAS.setdefault(id(schema), schema)
    body = {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}
    errors = sorted(_cr_validator(id(schema)).iter_errors(body), key=lambda e: list(e.path))
    return [f"{'.'.join(map(str, e.path)) or '<root>'}: Invalid value: {e.message}" for e in errors[:5]]


# --- built-in kinds -----------------------------------------------------------------------------


@functools.cache
def _builtin_validator(kind: str, api_version: str) -> Any:
    """kubernetes-validate's strict schema for a kind, built once (its `validate` re-reads it per call)."""
    import jsonschema
    import kubernetes_validate.utils as kvu
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{kvu.latest_version()}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kvu.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", KUBERNETES)
    definitions = kvu.schema_contents(f"{folder}/_definitions.json", KUBERNETES)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def builtin_problems(obj: dict[str, Any]) -> list[str]:
    try:
        validator = _builtin_validator(obj["kind"], obj["apiVersion"])
    except (KeyError, FileNotFoundError, ValueError):
        return []  # a kind the schemas do not have (e.g. kopf's peering objects): nothing to check
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:5]]


# --- Pod Security `restricted` ------------------------------------------------------------------

_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}


def psa_restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the `restricted` Pod Security Standard (v1.25+) rejects in a pod spec; [] when it passes."""
    out = []
    psc = pod.get("securityContext") or {}
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or []),
                  *(pod.get("ephemeralContainers") or [])]
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(f"host namespaces ({flag}=true)")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            out.append(f"restricted volume types (volume {volume.get('name')!r} uses {', '.join(sorted(kinds))})")
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        out.append("runAsUser=0 (pod)")
    if pod_seccomp == "Unconfined":
        out.append("seccompProfile (pod must not set type Unconfined)")
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c.get("name")
        if sc.get("privileged"):
            out.append(f"privileged (container {name!r})")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"allowPrivilegeEscalation != false (container {name!r})")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"unrestricted capabilities (container {name!r} must drop ALL)")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"unrestricted capabilities (container {name!r} adds {caps['add']})")
        if sc.get("runAsNonRoot") is False or (not pod_non_root and sc.get("runAsNonRoot") is not True):
            out.append(f"runAsNonRoot != true (container {name!r})")
        if sc.get("runAsUser") == 0:
            out.append(f"runAsUser=0 (container {name!r})")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined" or (seccomp is None and pod_seccomp not in ("RuntimeDefault", "Localhost")):
            out.append(f"seccompProfile (container {name!r} must set type RuntimeDefault or Localhost)")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"hostPort (container {name!r})")
    return out


# --- all of it ----------------------------------------------------------------------------------


def admit(obj: dict[str, Any], *, crd_schema: dict[str, Any] | None = None,
          namespace_labels: dict[str, str] | None = None) -> list[str]:
    """Why kube-apiserver would refuse to store `obj` (422 Invalid, or 403 Forbidden for Pod Security)."""
    kind = obj.get("kind", "")
    problems = _metadata_problems(kind, obj.get("metadata") or {})
    if crd_schema is not None:
        problems += cr_problems(obj, crd_schema)
    else:
        problems += builtin_problems(obj)
    if kind == "Pod" and (namespace_labels or {}).get("pod-security.kubernetes.io/enforce") == "restricted":
        violations = psa_restricted_violations(obj.get("spec") or {})
        if violations:
            problems.append("pods violate PodSecurity \"restricted:latest\": " + ", ".join(violations))
    if kind == "Job":
        template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        problems += label_problems("spec.template.metadata.labels", template.get("labels"))
    return problems
