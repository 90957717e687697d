"""Verify solution rows in batches, with progress lines (one Verifier per call)."""

from __future__ import annotations

from siked_runtime.stages.common import Rate
from siked_runtime.verify import Verifier, verify_records

BATCH = 512


def verify_rows(rows: list[dict], what: str = "verify") -> list[dict]:
    """Rows `{answer, completion, …}` plus `strategy`, `verdict`, `predicted`, `reason`."""
    out: list[dict] = []
    rate = Rate(what, len(rows))
    with Verifier() as verifier:
        for row in verify_records(rows, verifier, batch_size=BATCH):
            out.append(row)
            if len(rows) > BATCH and (len(out) % BATCH == 0 or len(out) == len(rows)):
                rate.update(len(out) - rate.done)
    return out
