"""The strict reply schema: whatever a child writes becomes one RunResult, never an exception."""

from __future__ import annotations

import json
import os
import signal

import pytest

from siked_runtime.verification.replies import TemplateHeader, parse_reply


def header(outcome: str = "exited", status: int = 0) -> TemplateHeader:
    return TemplateHeader(index=0, outcome=outcome, status=status, cpu=0.01)


def reply(**fields) -> bytes:
    base = {"value": None, "error": None, "no_answer": None, "output": "", "truncated": False}
    return json.dumps({**base, **fields}).encode()


def parse(raw: bytes, **kw):
    return parse_reply(kw.get("h", header()), raw, kw.get("cap", 1000), 3.0)


@pytest.mark.parametrize("value, text", [
    ({"int": "72"}, "72"), ({"int": "-5"}, "-5"), ({"float": 2.5}, "2.5"), ({"float": 1e20}, "100000000000000000000"),
    ({"text": "seven"}, "seven"),
])
def test_well_formed_values(value, text):
    result = parse(reply(value=value))
    assert (result.status, result.value) == ("ok", text)


def test_no_answer_and_program_errors():
    assert parse(reply(no_answer="program never assigns `answer`")).reason == "program never assigns `answer`"
    err = parse(reply(error="ZeroDivisionError: division by zero", output="partial"))
    assert (err.status, err.reason, err.output) == ("error", "ZeroDivisionError: division by zero", "partial")


@pytest.mark.parametrize("raw", [
    reply(value={"int": 5}),                         # wrong type
    reply(value={"int": "5", "text": "x"}),          # two kinds
    reply(value={"int": "5e3"}),                     # not digits
    reply(value={"int": "9" * 5000}),                # beyond what Python itself prints
    reply(value={"float": "2.5"}),                   # a string where a number belongs
    reply(value={"text": "x" * 5000}),               # oversized
    reply(value={"verdict": "correct"}),             # a forged field
    reply(status="correct"),                          # the old protocol's verdict field
    reply(output=["x"]),
    reply(truncated="yes"),
    reply(error=7),
    b'{"value": {"float": NaN}, "error": null, "no_answer": null, "output": "", "truncated": false}',
    b'{"value": {"float": Infinity}, "error": null, "no_answer": null, "output": "", "truncated": false}',
    b"[" * 100_000 + b"]" * 100_000,                 # nesting that would exhaust Python's recursion
    b'{"value": ' * 50_000 + b"null" + b"}" * 50_000,
    b"\xff\xfe not utf-8",
    b"{}",
    b"null",
    reply(value={"int": "1"}) + reply(value={"int": "2"}),   # a second frame
])
def test_malformed_replies_are_an_error_for_that_program(raw):
    result = parse(raw)
    assert result.status == "error" and result.reason.startswith("malformed reply"), result
    assert result.value is None


def test_output_beyond_the_cap_is_malformed():
    assert parse(reply(output="x" * 1001)).reason.startswith("malformed reply")
    assert parse(reply(output="x" * 1000)).status == "ok"


def test_the_template_outcome_decides_before_the_child():
    # A child that wrote a perfect reply but was killed, or ran out of time, has no result.
    good = reply(value={"int": "72"})
    assert parse(good, h=header("timeout")).status == "timeout"
    assert parse(good, h=header("oversized")).reason == "reply larger than the sandbox allows"
    killed = parse(good, h=header(status=signal.SIGKILL))
    assert killed.status == "error" and "SIGKILL" in killed.reason
    xcpu = parse(good, h=header(status=signal.SIGXCPU))
    assert "CPU time limit" in xcpu.reason
    assert "exited with status 3" in parse(good, h=header(status=3 << 8)).reason
    assert "seccomp" in parse(good, h=header(status=71 << 8)).reason
    assert parse(b"", h=header()).reason == "program process exited without a reply"
    assert os.WIFEXITED(0)
