"""A teacher stage whose teacher writes hostile programs: the stage finishes and keeps none of them.

The teacher is an OpenAI-compatible HTTP server started by the test. For every
question it answers `cot` correctly and `pot` with an attack (steal the storage
keys or the teacher key, read the stage's own input, forge a verdict, abort the
batch). `siked stage teacher` runs as a real process with canary credentials in its
environment; afterwards no canary appears in anything it printed or stored, and
every kept row is an honest one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from siked_runtime.storage import open_store, read_manifest
from chat_server import send_choices  # noqa: E402
from hostile_programs import DISARM, ESCAPE  # noqa: E402

pytestmark = pytest.mark.integration

SIKED = str(Path(sys.executable).with_name("siked"))
CANARIES = {"AWS_ACCESS_KEY_ID": "AKIACANARYSTAGE01", "AWS_SECRET_ACCESS_KEY": "canary-stage-secret-9d2e",
            "TEACHER_KEY": "sk-canary-stage-teacher"}
ATTACKS = [
    ESCAPE + DISARM + "answer = os.read(os.open(f'/proc/{os.getppid()}/environ', 0), 4096)",
    ESCAPE + DISARM + "answer = os.read(os.open(f'/proc/{os.getppid()}/cmdline', 0), 4096)",
    ESCAPE + "answer = repr(dict(os.environ))",
    ESCAPE + "os.write(3, b'{\"status\": \"correct\", \"verdict\": \"correct\"}')\nos._exit(0)\nanswer = 0",
    ESCAPE + "os.write(3, b'[' * 100000)\nos._exit(0)\nanswer = 0",
    "answer = 1\nwhile True:\n    pass",
    ESCAPE + DISARM + "answer = sys.modules['ctypes'].string_at(0)",
]
N_QUESTIONS = 14


class HostileTeacher(BaseHTTPRequestHandler):
    """cot: the right answer (every question's answer is its number); pot: an attack."""

    seen_keys: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = body["messages"][-1]["content"]
        number = int(prompt.rsplit("number ", 1)[1].split("?")[0])
        self.seen_keys.append(self.headers.get("authorization"))
        if "[pot] (" in prompt:
            text = "[pot]\n" + ATTACKS[number % len(ATTACKS)]
        else:
            text = f"[cot]\nThe number is {number}.\nAnswer: {number}"
        send_choices(self, [text] * body["n"])


@pytest.fixture
def teacher():
    HostileTeacher.seen_keys = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), HostileTeacher)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_a_teacher_stage_with_hostile_programs_keeps_none_and_leaks_nothing(teacher, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"question": f"What is the number {i}?", "answer": f"It is {i}.\n#### {i}"})
                             + "\n" for i in range(N_QUESTIONS)))
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"question": "What is the number 99?", "answer": "#### 99"}) + "\n")
    manifest = {
        "apiVersion": "siked.io/v1alpha1", "kind": "DistillationRun", "metadata": {"name": "hostile"},
        "spec": {
            "teacher": {"kind": "openai", "endpoint": teacher, "model": "teacher", "apiKeyEnv": "TEACHER_KEY",
                        "maxRetries": 0},
            "student": {"model": "builtin:tiny-random"},
            "strategies": ["cot", "pot"],
            "datasets": {"train": {"name": "train", "source": str(train), "format": "gsm8k"},
                         "validationFromTrain": 2,
                         "eval": [{"name": "test", "source": str(test), "format": "gsm8k"}]},
            "verification": {"timeoutSeconds": 1.0, "requireLayers": ["seccomp", "rlimits"]},
        },
    }
    run = tmp_path / "run"
    open_store(run.as_uri()).put_text("spec.yaml", yaml.safe_dump(manifest))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LC_ALL": "C.UTF-8",
           "SIKED_CACHE": str(tmp_path / "cache"), **CANARIES}
    done = subprocess.run([SIKED, "stage", "teacher", "--run-uri", run.as_uri()], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    store = open_store(run.as_uri())
    stage = read_manifest(store, "teacher")
    assert stage["sandbox_layers"]["seccomp"] and stage["sandbox_layers"]["rlimits"]
    everything = list(store.read_jsonl("teacher/all.jsonl.gz"))
    kept = list(store.read_jsonl("teacher/solutions.jsonl.gz"))
    questions = N_QUESTIONS - 2
    assert len(everything) == 2 * questions  # every row, hostile ones included, has a verdict
    pot = [r for r in everything if r["strategy"] == "pot"]
    assert pot and all(r["verdict"] != "correct" for r in pot), [r for r in pot if r["verdict"] == "correct"]
    assert {r["strategy"] for r in kept} == {"cot"} and len(kept) == questions
    # The teacher key still reached the teacher after it left the environment.
    assert set(HostileTeacher.seen_keys) == {f"Bearer {CANARIES['TEACHER_KEY']}"}

    printed = done.stdout + done.stderr
    for path in run.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                import gzip

                data = gzip.decompress(data)
            for canary in CANARIES.values():
                assert canary.encode() not in data, (path, canary)
    for canary in CANARIES.values():
        assert canary not in printed
