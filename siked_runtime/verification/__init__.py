"""Verification: the verdict every training row and every accuracy rests on.

    sandbox.py    runs untrusted PoT programs, each in a fresh locked-down process
    template.py   the pre-imported template process the sandbox forks children from
    policy.py     the seccomp allow-list and the Landlock ruleset (built with libseccomp, landlock)
    replies.py    the strict schema a child's reply must pass, and RunResult
    symbolic.py   math-verify checks in worker processes
    verifier.py   parse, run, compare: one verdict per completion; JSONL records and summaries

    from siked_runtime.verification import Verifier
    with Verifier() as verifier:
        verifier.verify([("72", "[pot]\nanswer = 48 + 48 / 2")])
"""

from siked_runtime.verification.replies import RunResult
from siked_runtime.verification.sandbox import SandboxPool, SandboxUnavailable
from siked_runtime.verification.verifier import (
    VERDICTS,
    Verdict,
    Verifier,
    as_number,
    format_summary,
    summarize,
    verify_records,
)

__all__ = ["RunResult", "SandboxPool", "SandboxUnavailable", "VERDICTS", "Verdict", "Verifier", "as_number",
           "format_summary", "summarize", "verify_records"]
