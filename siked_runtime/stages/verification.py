"""Verify solution rows in batches, with progress lines (one Verifier per call)."""

from __future__ import annotations

from siked_runtime.stages.common import Rate
from siked_runtime.verify import Verifier

BATCH = 512


def verify_rows(rows: list[dict], what: str = "verify") -> list[dict]:
    """Rows `{answer, completion, …}` plus `strategy`, `verdict`, `predicted`, `reason`."""
    out: list[dict] = []
    rate = Rate(what, len(rows))
    with Verifier() as verifier:
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            verdicts = verifier.verify([(str(r["answer"]), r["completion"]) for r in chunk])
            out += [{**r, "strategy": v.strategy, "verdict": v.verdict, "predicted": v.predicted, "reason": v.reason}
                    for r, v in zip(chunk, verdicts)]
            if len(rows) > BATCH:
                rate.update(len(chunk))
    return out
