"""The spec model as a Kubernetes structural schema (the CRD's openAPIV3Schema).

    python -m siked_runtime.crd_schema > spec-schema.json

pydantic emits JSON Schema with `$ref`/`$defs`, `anyOf` for optionals, `const`
and titles; a CRD accepts none of `$ref`, `$defs`, `const`, `title` and needs a
single `type` per node. This module inlines references and rewrites optionals as
`nullable: true`, so the result is a valid structural schema.
"""

from __future__ import annotations

import json
from typing import Any

from siked_runtime.spec import DistillationSpec

_DROP = {"title", "$defs", "discriminator"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    out = {k: _inline(v, defs) for k, v in node.items() if k not in _DROP}
    if "anyOf" in out:
        options = out.pop("anyOf")
        nullable = any(o.get("type") == "null" for o in options)
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) == 1:
            out = {**rest[0], **out}
        else:
            # e.g. schedule: an enum name or a list of shares. A structural schema
            # needs one type per node, so leave this one untyped; the operator's
            # own validation (the pydantic model) still checks it.
            out["x-kubernetes-preserve-unknown-fields"] = True
        if nullable:
            out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out.get(bound), bool):
            # JSON Schema 2020 writes the bound itself; OpenAPI v3.0 a flag beside minimum/maximum.
            out[limit], out[bound] = out[bound], True
    if out.get("default") is None and "default" in out:
        out.pop("default")
    if out.get("type") == "object" and "additionalProperties" in out and out["additionalProperties"] is False:
        out.pop("additionalProperties")
    if out.get("type") == "object" and out.get("additionalProperties") is True:
        # A Kubernetes object fragment (a Volume, an Affinity): kept as written, checked by the API server.
        out.pop("additionalProperties")
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def spec_schema() -> dict[str, Any]:
    """openAPIV3Schema of `.spec`: defaults, bounds, enums and descriptions from the pydantic model."""
    raw = DistillationSpec.model_json_schema(by_alias=True, mode="validation")
    return _inline(raw, raw.get("$defs", {}))


if __name__ == "__main__":
    print(json.dumps(spec_schema(), indent=2))
