"""The teacher never pays twice: the OpenAI-compatible teacher stage against a real HTTP server that fails,
rate-limits, stops responding and outlives a killed stage process. Every reply the server sends is counted
there (`TeacherServer.replies`), so "paid once" is a count, not a promise.

    .venv/bin/python -m pytest -q tests/test_teacher_journal.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from siked_runtime.graph import StageKey
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages import run_stage
from siked_runtime.stages.teacher import api_solutions
from siked_runtime.storage import open_store, read_manifest
from siked_runtime.teachers.journal import Journal
from siked_runtime.teachers.openai_api import TeacherAPIError
from chat_server import TeacherServer, question_of  # noqa: E402

QUESTIONS = 10  # training questions (two more go to validation)
STRATEGIES = ["cot", "l2m"]
N = 2  # samples per strategy
ASKS = QUESTIONS * len(STRATEGIES)
SIKED = str(Path(sys.executable).with_name("siked"))


def number(body: dict) -> int:
    return int(question_of(body).rsplit("number ", 1)[1].split("?")[0])


def answer(body: dict) -> str:
    """The right answer in the strategy asked for (the prompt's last line names it: `[l2m] (…`)."""
    tag = "l2m" if "[l2m] (" in body["messages"][-1]["content"] else "cot"
    return f"[{tag}]\nThe number is {number(body)}.\nAnswer: {number(body)}"


@pytest.fixture
def server():
    with TeacherServer(answer) as s:
        yield s


def manifest(tmp_path: Path, endpoint: str, **teacher) -> dict:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"question": f"What is the number {i}?", "answer": f"#### {i}"}) + "\n"
                             for i in range(QUESTIONS + 2)))
    return {"apiVersion": "siked.io/v1alpha1", "kind": "DistillationRun", "metadata": {"name": "journal"},
            "spec": {"teacher": {"kind": "openai", "endpoint": endpoint, "model": "teacher", "maxRetries": 2,
                                 "samplesPerStrategy": N, "timeoutSeconds": 5, **teacher},
                     "student": {"model": "builtin:tiny-random"}, "strategies": STRATEGIES,
                     "datasets": {"train": {"name": "train", "source": str(train), "format": "gsm8k"},
                                  "validationFromTrain": 2}}}


def spec_of(tmp_path: Path, endpoint: str, **teacher) -> DistillationSpec:
    return DistillationSpec.model_validate(manifest(tmp_path, endpoint, **teacher)["spec"])


def run(spec: DistillationSpec, tmp_path: Path) -> dict:
    return run_stage(spec, open_store((tmp_path / "run").as_uri()), StageKey("teacher"))


def now_retry(status: int) -> tuple[int, dict]:
    return status, {"Retry-After": "0"}


def test_failures_within_the_limit_are_counted_and_usage_matches_the_server(server, tmp_path):
    # q0: a 500 first; q1: a 429 first; q2: 500 on every attempt (both strategies fail for good).
    server.script = lambda body, count: (now_retry(500) if number(body) == 2 or (number(body) == 0 and count == 1)
                                         else now_retry(429) if number(body) == 1 and count == 1 else None)
    done = run(spec_of(tmp_path, server.url, maxFailureShare=0.1,
                       pricing={"inputPerMillion": 2.0, "outputPerMillion": 8.0, "currency": "EUR"}), tmp_path)
    usage = done["usage"]
    assert usage["requests"] == len(server.requests) == ASKS + 2 + 2 * 2  # two first-try failures, q2 3 attempts × 2
    assert usage["retries"] == len(server.requests) - ASKS
    assert usage["failures"] == 2 and done["failures"]["count"] == 2 and done["failures"]["share"] == 0.1
    assert done["failures"]["errors"][0]["count"] == 2
    assert "failed after 3 attempts: HTTP 500: scripted 500" in done["failures"]["errors"][0]["error"]
    assert sorted((e["id"], e["strategy"]) for e in done["failures"]["examples"]) == [
        ("gsm8k-train-00002", "cot"), ("gsm8k-train-00002", "l2m")]
    assert usage["prompt_tokens"] == 10 * server.count(200) and usage["completion_tokens"] == 5 * server.replies
    assert usage["replies"] == server.replies == (ASKS - 2) * N and usage["replies_without_usage"] == 0
    assert done["cost"] == {"input": round(usage["prompt_tokens"] * 2e-6, 6),
                            "output": round(usage["completion_tokens"] * 8e-6, 6),
                            "total": round(usage["prompt_tokens"] * 2e-6 + usage["completion_tokens"] * 8e-6, 6),
                            "currency": "EUR"}
    assert done["finish_reasons"] == {"stop": (ASKS - 2) * N}
    assert done["raw_rows"] == (ASKS - 2) * N and done["rows"] == ASKS - 2  # one kept per question × strategy


def test_a_server_that_stops_responding_fails_the_stage_and_the_rerun_pays_only_for_the_rest(server, tmp_path):
    server.stop_after = 6  # then every request hangs until the client's timeout
    spec = spec_of(tmp_path, server.url, timeoutSeconds=0.3, maxRetries=1, maxConcurrency=4)
    with pytest.raises(TeacherAPIError) as failed:
        run(spec, tmp_path)
    reason = str(failed.value)
    # 4 in flight when it stopped answering time out; more than 1 of 20 (5%) may not fail.
    assert reason.startswith(f"teacher: 2 of {ASKS} question × strategy requests failed (10.0%), more than "
                             "teacher.maxFailureShare 5.0% allows (1); the remaining requests were not sent; "
                             "most common error (2×): "), reason
    assert "failed after 2 attempts: ReadTimeout" in reason
    paid = server.replies
    assert paid == 6 * N
    store = open_store((tmp_path / "run").as_uri())
    assert read_manifest(store, "teacher") is None and store.list("teacher/journal")

    server.hang.clear()
    server.stop_after = None
    before = len(server.requests)
    done = run(spec, tmp_path)
    assert len(server.requests) - before == ASKS - 6  # only what was missing
    assert server.replies == ASKS * N  # every choice paid for exactly once
    assert done["usage"]["reused_replies"] == 6 * N and done["usage"]["requests"] == ASKS - 6
    assert done["usage"]["completion_tokens"] == 5 * ASKS * N  # the stage's data, journaled replies included
    assert done["raw_rows"] == ASKS * N and done["failures"]["count"] == 0


def test_the_failure_share_limit_names_count_share_limit_and_error(server, tmp_path):
    server.script = lambda body, count: (400, {}) if number(body) < 3 else None
    with pytest.raises(TeacherAPIError) as failed:
        run(spec_of(tmp_path, server.url, maxFailureShare=0.2, maxConcurrency=1), tmp_path)
    # q0..q2 × 2 strategies fail at once (a 400 is not retried); 4 of 20 may, the 5th stops the stage.
    assert str(failed.value) == (
        f"teacher: 5 of {ASKS} question × strategy requests failed (25.0%), more than teacher.maxFailureShare 20.0% "
        f"allows (4); the remaining requests were not sent; most common error (5×): {server.url}/chat/completions "
        "refused the request: HTTP 400: scripted 400")
    assert len(server.requests) == 5  # one at a time, and nothing after the limit was passed


def test_changed_request_settings_do_not_reuse_old_replies(server, tmp_path):
    store = open_store((tmp_path / "run").as_uri())
    records = [{"id": f"q{i}", "question": f"What is the number {i}?", "answer": str(i)} for i in range(3)]
    first, _ = api_solutions(spec_of(tmp_path, server.url), store, records)
    again, usage = api_solutions(spec_of(tmp_path, server.url), store, records)
    assert server.replies == 3 * 2 * N and again == first and usage["usage"]["requests"] == 0
    colder, usage = api_solutions(spec_of(tmp_path, server.url, temperature=0.3), store, records)
    assert server.replies == 2 * 3 * 2 * N and usage["usage"]["reused_replies"] == 0 and len(colder) == len(first)
    shorter, usage = api_solutions(spec_of(tmp_path, server.url, temperature=0.3, maxTokens=64), store, records)
    assert server.replies == 3 * 3 * 2 * N and usage["usage"]["reused_replies"] == 0


def test_a_torn_or_foreign_chunk_is_skipped_not_fatal(server, tmp_path):
    store = open_store((tmp_path / "run").as_uri())
    records = [{"id": f"q{i}", "question": f"What is the number {i}?", "answer": str(i)} for i in range(2)]
    api_solutions(spec_of(tmp_path, server.url), store, records)
    chunk = store.list("teacher/journal")[0]
    good = store.get_bytes(chunk).split(b"\n")
    # the same entries again, the last one torn mid-line, plus lines no writer of ours wrote
    store.put_bytes("teacher/journal/zzz-000001.jsonl", b"\n".join(good[:-2]) + b"\n" + good[-2][:40])
    store.put_bytes("teacher/journal/zzz-000002.jsonl", b'\xff\xfe{"id": 1}\n[1, 2]\n{"id": "q0"}\n')
    loaded = Journal(store, "teacher/journal").load()
    assert loaded.chunks == 3 and loaded.skipped_lines == 1 + 3
    assert len(loaded.entries) == 2 * len(good[:-1]) - 1
    paid = server.replies
    rows, _ = api_solutions(spec_of(tmp_path, server.url), store, records)
    assert server.replies == paid and len(rows) == 2 * 2 * N


def test_requests_per_minute_hold_at_the_server(server, tmp_path):
    store = open_store((tmp_path / "run").as_uri())
    records = [{"id": f"q{i}", "question": f"What is the number {i}?", "answer": str(i)} for i in range(15)]
    api_solutions(spec_of(tmp_path, server.url, requestsPerMinute=600, samplesPerStrategy=1), store, records)
    times = sorted(t for t, _, _ in server.requests)
    assert len(times) == 30
    # 10 a second after a burst of at most one second's worth: 30 requests take about 2 s, never 20 in 1 s.
    assert times[-1] - times[0] >= 1.8
    assert max(sum(t <= start + 1.0 for t in times[i:]) for i, start in enumerate(times)) <= 20 + 2


def test_tokens_per_minute_hold_at_the_server(server, tmp_path):
    server.prompt_tokens, server.completion_tokens = 1000, 1000  # 2,000 tokens a request, per the server's usage
    store = open_store((tmp_path / "run").as_uri())
    records = [{"id": f"q{i}", "question": f"What is the number {i}?", "answer": str(i)} for i in range(6)]
    api_solutions(spec_of(tmp_path, server.url, tokensPerMinute=600_000, samplesPerStrategy=1), store, records)
    times = sorted(t for t, _, _ in server.requests)
    # 10,000 tokens a second: 12 requests of 2,000 take over a second after the first second's worth.
    assert len(times) == 12 and times[-1] - times[0] >= 0.8
    assert max(sum(t <= start + 1.0 for t in times[i:]) for i, start in enumerate(times)) * 2000 <= 2 * 10_000 + 8000


def test_a_429_retry_after_pauses_every_request(server, tmp_path):
    server.delay = 0.05
    server.script = lambda body, count: (429, {"Retry-After": "1"}) if number(body) == 0 and count == 1 else None
    store = open_store((tmp_path / "run").as_uri())
    records = [{"id": f"q{i}", "question": f"What is the number {i}?", "answer": str(i)} for i in range(15)]
    rows, _ = api_solutions(spec_of(tmp_path, server.url, maxConcurrency=4, samplesPerStrategy=1), store, records)
    assert len(rows) == 30
    limited = next(t for t, _, status in server.requests if status == 429) + server.delay  # when the client read it
    later = [t - limited for t, _, _ in server.requests if t > limited]
    assert not [t for t in later if 0.1 < t < 0.9], later  # nobody started a request during the pause
    assert max(later) >= 0.95  # and the rest came after it


def _stage_process(tmp_path: Path, endpoint: str) -> subprocess.Popen:
    run_dir = tmp_path / "run"
    open_store(run_dir.as_uri()).put_text("spec.yaml", yaml.safe_dump(manifest(tmp_path, endpoint, timeoutSeconds=60)))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LC_ALL": "C.UTF-8",
           "SIKED_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen([SIKED, "stage", "teacher", "--run-uri", run_dir.as_uri()], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_stage_process_is_rerun_without_paying_twice(server, tmp_path, how):
    server.stop_after = 7  # replies to 7 requests, then stops answering: the stage is mid-way
    stage = _stage_process(tmp_path, server.url)
    store = open_store((tmp_path / "run").as_uri())
    try:
        _wait(lambda: server.replies == 7 * N, 60, "the first replies")
        if how == signal.SIGKILL:  # no chance to flush: wait for the periodic flush (every 2 s)
            _wait(lambda: len(Journal(store, "teacher/journal").load().entries) == 7 * N, 10, "the journal")
        else:  # a pod being evicted: the handler flushes what arrived
            time.sleep(0.5)  # the client has read the replies the server counted
        os.killpg(stage.pid, how)
        assert stage.wait(10) == -how
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
            stage.wait()
    assert read_manifest(store, "teacher") is None
    server.hang.clear()
    server.stop_after = None
    spec = DistillationSpec.model_validate(yaml.safe_load(store.get_text("spec.yaml"))["spec"])
    done = run_stage(spec, store, StageKey("teacher"))
    assert server.replies == ASKS * N  # nothing paid twice
    assert done["usage"]["reused_replies"] == 7 * N and done["raw_rows"] == ASKS * N
