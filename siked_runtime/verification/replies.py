"""What a sandbox child may say, parsed strictly: anything else is an `error` for that program alone.

    result = parse_reply(header, raw_reply_bytes, output_cap)   # -> RunResult

The child is as untrusted as the program it ran (a program can write to its own
reply pipe, or replace the code that writes the reply), so its bytes go through a
closed schema: exact keys, exact types, bounded sizes, bounded nesting (pydantic's
JSON parser refuses deep nesting with an error instead of recursing). The
template's header (outcome, wait status) is trusted: the template never runs
untrusted code. The child reports only the value the program produced; whether it
is right is decided by the verifier, which alone knows the gold answer.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from siked_runtime.answers import format_number

MAX_VALUE_CHARS = 4096
MAX_REASON_CHARS = 500
# Python refuses int -> str beyond 4300 digits by default; the child reports those as an error.
MAX_INT_DIGITS = 4300


@dataclass(frozen=True)
class RunResult:
    """The outcome of one program: status "ok" | "timeout" | "error".

    `value` is None when the program finished without an answer (then `reason` says so)
    or did not finish. `output` is what it printed, cut at the pool's output cap
    (`truncated` says whether it was).
    """

    status: str
    value: str | None = None
    reason: str = ""
    output: str = ""
    truncated: bool = False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Int(_Strict):
    int: Annotated[str, Field(pattern=r"^-?[0-9]{1,%d}$" % MAX_INT_DIGITS)]


class _Float(_Strict):
    float: Annotated[float, Field(allow_inf_nan=False)]


class _Text(_Strict):
    text: Annotated[str, Field(max_length=MAX_VALUE_CHARS)]


class ChildReply(_Strict):
    value: _Int | _Float | _Text | None
    error: Annotated[str, Field(max_length=MAX_REASON_CHARS)] | None
    no_answer: Annotated[str, Field(max_length=MAX_REASON_CHARS)] | None
    output: str
    truncated: bool

    @field_validator("error", "no_answer", "output")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        # Lone surrogates survive JSON but not UTF-8 output files.
        return v.encode("utf-8", "replace").decode("utf-8") if v is not None else v


class TemplateHeader(_Strict):
    """Written by the template (trusted), checked anyway: a bug there must not become a verdict."""

    index: Annotated[int, Field(ge=0)]
    outcome: Literal["exited", "timeout", "oversized"]
    status: int
    cpu: float


def _exit_reason(status: int) -> str | None:
    """Why a child that did not exit cleanly ended, or None for exit status 0."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = {"SIGXCPU": " (CPU time limit)", "SIGSYS": " (forbidden system call)",
                "SIGKILL": " (killed)", "SIGSEGV": " (crashed)"}.get(name, "")
        return f"program process died of {name}{hint}"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    if code == 0:
        return None
    if code == 71:
        return "sandbox: the seccomp filter could not be loaded; the program did not run"
    return f"program process exited with status {code}"


def parse_reply(header: TemplateHeader, raw: bytes, output_cap: int, timeout: float) -> RunResult:
    """The result of one program from the template's header and the child's raw bytes."""
    if header.outcome == "timeout":
        return RunResult("timeout", reason=f"no result within {timeout:g}s")
    if header.outcome == "oversized":
        return RunResult("error", reason="reply larger than the sandbox allows")
    died = _exit_reason(header.status)
    if died is not None:
        return RunResult("error", reason=died)
    if not raw:
        return RunResult("error", reason="program process exited without a reply")
    try:
        reply = ChildReply.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "reply"
        return RunResult("error", reason=f"malformed reply ({where}: {first.get('msg', 'invalid')})"[:300])
    if len(reply.output) > output_cap:
        return RunResult("error", reason="malformed reply (output longer than the cap)")
    if reply.error is not None:
        return RunResult("error", reason=reply.error, output=reply.output, truncated=reply.truncated)
    value = reply.value
    if value is None:
        text = None
    elif isinstance(value, _Int):
        text = value.int
    elif isinstance(value, _Float):
        text = format_number(value.float)
    else:
        text = value.text
    reason = (reply.no_answer or "") if text is None else ""
    return RunResult("ok", text, reason, reply.output, reply.truncated)
