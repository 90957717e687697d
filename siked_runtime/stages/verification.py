"""Verify solution rows in batches, with progress lines; and the sandbox check every verifying stage makes first."""

from __future__ import annotations

from siked_runtime.spec import VerificationSpec
from siked_runtime.stages.common import Rate, log
from siked_runtime.verification import SandboxPool, Verifier, verify_records

BATCH = 512


def verify_rows(rows: list[dict], what: str = "verify", settings: VerificationSpec | None = None) -> list[dict]:
    """Rows `{answer, completion, …}` plus `strategy`, `verdict`, `predicted`, `reason`."""
    settings = settings or VerificationSpec()
    out: list[dict] = []
    rate = Rate(what, len(rows))
    with Verifier(timeout=settings.timeout_seconds, memory_mb=settings.memory_mb,
                  require=settings.require_layers) as verifier:
        for row in verify_records(rows, verifier, batch_size=BATCH):
            out.append(row)
            if len(rows) > BATCH and (len(out) % BATCH == 0 or len(out) == len(rows)):
                rate.update(len(out) - rate.done)
    return out


def check_sandbox(settings: VerificationSpec) -> dict[str, bool]:
    """The sandbox layers this machine gives, logged; raises SandboxUnavailable if a required one is missing."""
    with SandboxPool(size=1, timeout=settings.timeout_seconds, memory_mb=settings.memory_mb,
                     require=settings.require_layers) as pool:
        layers = {name: active for name, (active, _) in pool.layers.items()}
    log("sandbox layers: " + ", ".join(f"{name} {'on' if on else 'OFF'}" for name, on in layers.items())
        + f" (required: {', '.join(settings.require_layers) or 'none'})")
    return layers
