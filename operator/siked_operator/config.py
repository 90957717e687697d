"""The operator's own settings (flags of `siked-operator`, or SIKED_OPERATOR_* variables in the Deployment).

kopf's settings (finalizer, progress storage, event posting) are set in one
`@kopf.on.startup` handler in `siked_operator.handlers`; this object holds what
our handlers need and travels to them in kopf's `memo`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version

from siked_runtime.spec import ResourceSpec


def _default_image() -> str:
    try:
        return f"ghcr.io/siked/siked:{version('siked')}"
    except PackageNotFoundError:
        return "ghcr.io/siked/siked:latest"


@dataclass(frozen=True)
class Config:
    default_image: str = field(default_factory=_default_image)
    # Resources of stage Jobs, under the run's spec.resources (whose default and per-stage entries win).
    default_resources: ResourceSpec = field(default_factory=ResourceSpec)
    # Runs without spec.storage.uri live at <storage_uri>/<namespace>/<name>; unset: such runs are invalid.
    storage_uri: str | None = None
    # S3 endpoint (MinIO, Ceph) for runs that do not name one; the operator reads manifests through it too.
    s3_endpoint: str | None = None
    # Secret with AWS_* keys for stage Jobs of runs without spec.storage.secretRef.
    storage_secret: str | None = None
    service_account: str | None = None
    # Each run is re-derived when one of its Jobs or its spec changes, and at least this often (for
    # retries, deadlines and TTLs that come due); a pass that finds nothing changed costs no API call.
    poll_interval: float = 1.0
    # A stage Job whose pod has not started is looked at this often: its pods say why (unschedulable, image
    # pull, missing Secret), and pod changes do not show in the Job's status.
    pending_check_seconds: float = 10.0
    # A run whose Jobs did not change is re-read from storage this often anyway (artifacts edited by hand).
    resync_seconds: float = 300.0
    # While a run's storage or the API fails, its passes back off: poll_interval * 2**k, capped.
    outage_backoff_max_seconds: float = 30.0
    # Seconds for any one API request (the operator's own calls and kopf's).
    request_timeout: float = 30.0
    # Delay before retry k of a failed stage: base * 2**(k-1), capped.
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 600.0
    stage_command: tuple[str, ...] = ("siked", "stage")
    # Security contexts of stage pods and containers (JSON); unset: Pod Security `restricted` (see
    # siked_operator.jobs). OpenShift's restricted SCC assigns uids itself and wants neither runAsUser nor
    # fsGroup set.
    pod_security_context: dict | None = None
    container_security_context: dict | None = None

    def retry_delay(self, failures: int) -> float:
        """Seconds between the `failures`-th failure of a stage and its next attempt."""
        if failures <= 0:
            return 0.0
        return min(self.retry_backoff_seconds * 2 ** (failures - 1), self.retry_backoff_max_seconds)

    def outage_delay(self, failed_passes: int) -> float:
        """Seconds before the next pass of a run whose last `failed_passes` passes failed."""
        return min(max(self.poll_interval, 0.5) * 2 ** failed_passes, self.outage_backoff_max_seconds)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        """Settings from SIKED_OPERATOR_<FIELD> variables (SIKED_OPERATOR_STORAGE_URI, …); unset: defaults.

        SIKED_OPERATOR_DEFAULT_RESOURCES is JSON shaped like a run's spec.resources.default.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f"SIKED_OPERATOR_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            if f.name == "stage_command":
                values[f.name] = tuple(raw.split())
            elif f.name == "default_resources":
                values[f.name] = ResourceSpec.model_validate_json(raw)
            elif f.name.endswith("_security_context"):
                values[f.name] = json.loads(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        return cls(**values)
