"""The OpenAI-compatible teacher against a real HTTP server started by the test."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from siked_runtime.strategies import parse_solution
from siked_runtime.teachers.fewshot import fewshot_messages
from siked_runtime.teachers.openai_api import ChatClient, TeacherAPIError, parse_reply, retry_after, solve
from chat_server import send_choices, send_json  # noqa: E402


class FakeOpenAI(BaseHTTPRequestHandler):
    """Serves well-formed chat completions; `failures` scripts errors before success, per question."""

    failures: dict = {}
    requests: list = []
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        question = body["messages"][-1]["content"].rsplit("Question: ", 1)[1]
        with self.lock:
            self.requests.append({"auth": self.headers.get("authorization"), "body": body})
            script = self.failures.get(question, [])
            status = script.pop(0) if script else 200
        if status == "malformed":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>upstream busy</html>")
            return
        if status == 401:  # a proxy that echoes the request's credentials in its error
            send_json(self, 401, {"error": {"message": f"invalid key in {self.headers.get('authorization')}"}})
            return
        if status != 200:
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"error": "try later"}')
            return
        strategy = "pot" if "[pot] (" in body["messages"][-1]["content"] else "cot"
        text = "[pot]\nanswer = 2 + 2" if strategy == "pot" else "[cot]\n2 + 2 = 4\nAnswer: 4"
        send_choices(self, [text] * body["n"])


@pytest.fixture
def server():
    FakeOpenAI.failures, FakeOpenAI.requests = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def client(endpoint, **kw):
    kw.setdefault("backoff_base", 0.01)
    return ChatClient(endpoint=endpoint, model="teacher-70b", **kw)


RECORDS = [{"id": f"q{i}", "question": f"What is 2 + 2, case {i}?", "answer": "4"} for i in range(6)]


def test_solves_every_question_and_strategy(server, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-test")
    done = []
    rows = solve(client(server, api_key_env="TEACHER_KEY"), RECORDS, ["cot", "pot"], n=2, on_done=done.append)
    assert len(rows) == 6 * 2 * 2 and sum(done) == 12
    assert [r["id"] for r in rows[:4]] == ["q0"] * 4
    assert {parse_solution(r["completion"]).strategy for r in rows} == {"cot", "pot"}
    req = FakeOpenAI.requests[0]
    assert req["auth"] == "Bearer sk-test" and req["body"]["model"] == "teacher-70b" and req["body"]["n"] == 2
    # few-shot demonstrations precede the question
    assert req["body"]["messages"][:-1] in (fewshot_messages("cot"), fewshot_messages("pot"))


def test_retries_429_and_5xx(server):
    FakeOpenAI.failures = {RECORDS[0]["question"]: [429, 500, 503], RECORDS[1]["question"]: [502]}
    rows = solve(client(server, max_retries=3), RECORDS[:2], ["cot"])
    assert [r["completion"].startswith("[cot]") for r in rows] == [True, True]
    asked = [json.dumps(r["body"]) for r in FakeOpenAI.requests]
    assert sum(RECORDS[0]["question"] in a for a in asked) == 4
    assert sum(RECORDS[1]["question"] in a for a in asked) == 2


def test_gives_up_after_max_retries(server):
    FakeOpenAI.failures = {RECORDS[0]["question"]: [500] * 10}
    with pytest.raises(TeacherAPIError, match="failed after 3 attempts: HTTP 500"):
        solve(client(server, max_retries=2), RECORDS[:1], ["cot"])


def test_client_errors_are_not_retried(server):
    FakeOpenAI.failures = {RECORDS[0]["question"]: [400]}
    with pytest.raises(TeacherAPIError, match="refused the request: HTTP 400"):
        solve(client(server, max_retries=5), RECORDS[:1], ["cot"])
    assert len(FakeOpenAI.requests) == 1


def test_unreachable_endpoint_is_retried_then_reported():
    with pytest.raises(TeacherAPIError, match="ConnectError"):
        solve(client("http://127.0.0.1:9/v1", max_retries=1, timeout_seconds=2), RECORDS[:1], ["cot"])


def test_concurrency_limit_is_respected(server):
    import time

    inflight, peak = [0], [0]
    original = FakeOpenAI.do_POST

    def slow(self):
        with FakeOpenAI.lock:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
        time.sleep(0.05)
        try:
            original(self)
        finally:
            with FakeOpenAI.lock:
                inflight[0] -= 1

    FakeOpenAI.do_POST = slow
    try:
        solve(client(server, max_concurrency=2), RECORDS, ["cot"])
    finally:
        FakeOpenAI.do_POST = original
    assert peak[0] == 2


def test_malformed_replies_are_retried_then_named(server):
    FakeOpenAI.failures = {RECORDS[0]["question"]: ["malformed"], RECORDS[1]["question"]: ["malformed"] * 5}
    rows = solve(client(server, max_retries=2), RECORDS[:1], ["cot"])
    assert rows[0]["completion"].startswith("[cot]")
    with pytest.raises(TeacherAPIError, match=r"failed after 3 attempts: malformed chat/completions reply .*upstream busy"):
        solve(client(server, max_retries=2), RECORDS[1:2], ["cot"])


def test_an_error_never_quotes_the_api_key(server, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-secret-123")
    FakeOpenAI.failures = {RECORDS[0]["question"]: [401]}
    with pytest.raises(TeacherAPIError) as refused:
        solve(client(server, api_key_env="TEACHER_KEY"), RECORDS[:1], ["cot"])
    assert "HTTP 401: invalid key in Bearer ***" in str(refused.value) and "sk-secret" not in str(refused.value)


def _response(payload, status=200, headers=None):
    import httpx

    return httpx.Response(status, json=payload, headers=headers)


def test_replies_give_choices_in_index_order_finish_reasons_and_usage():
    reply = parse_reply(_response({"choices": [
        {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
        {"index": 0, "message": {"content": None}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_tokens_details": None}}))
    assert reply.texts == ["", "b"] and reply.finish_reasons == ["stop", "length"]
    assert reply.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    # usage a server did not send, or sent as nonsense, is missing rather than a wrong count
    for usage in (None, {"prompt_tokens": "7", "completion_tokens": 3}, {"completion_tokens": 3}, [1]):
        assert parse_reply(_response({"choices": [{"message": {"content": "x"}}], "usage": usage})).usage is None
    for bad in ({"choices": []}, {"choices": [{"message": {"content": 3}}]}, {"object": "error"}, [1]):
        with pytest.raises(TeacherAPIError, match="malformed chat/completions reply"):
            parse_reply(_response(bad))


def test_retry_after_in_seconds_milliseconds_or_as_a_date():
    from email.utils import formatdate
    import time

    assert retry_after(_response({}, 429, {"Retry-After": "3"})) == 3.0
    assert retry_after(_response({}, 429, {"retry-after-ms": "250", "Retry-After": "3"})) == 0.25
    assert 8 <= retry_after(_response({}, 429, {"Retry-After": formatdate(time.time() + 10, usegmt=True)})) <= 10
    assert retry_after(_response({}, 429, {"Retry-After": "soon"})) is None
    assert retry_after(_response({}, 429)) is None
