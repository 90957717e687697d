"""What the tests' OpenAI-compatible servers share: a chat-completions reply on the wire, and a scriptable server.

    with TeacherServer(lambda body: "[cot]\\nAnswer: 4") as server:   # server.url is http://127.0.0.1:PORT/v1
        server.script = lambda body, count: (500, None)               # fail every request …
        server.hang.set()                                             # … or stop responding
    server.replies                                                    # what it answered (and so charged for)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def send_choices(handler: BaseHTTPRequestHandler, texts: list[str], usage: dict | None = None,
                 finish_reason: str = "stop") -> None:
    """A 200 chat.completion with one choice per text (and `usage` when given)."""
    payload = {"object": "chat.completion",
               "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
                           for i, text in enumerate(texts)]}
    if usage is not None:
        payload["usage"] = usage
    send_json(handler, 200, payload)


def question_of(body: dict) -> str:
    """The question of a teacher request (the last user message ends with `Question: …`)."""
    return body["messages"][-1]["content"].rsplit("Question: ", 1)[-1]


class TeacherServer:
    """A threaded OpenAI-compatible server on a free local port.

    `answer(body)` writes each choice's text. `script(body, count)` (count: this question's requests so far,
    from 1) may return `(status, headers)` to fail a request instead. While `hang` is set, requests block
    without an answer (a server that stopped responding); it is set by itself once `stop_after` requests
    were answered. Every answer waits `delay` seconds first. `requests` logs every request that got an
    answer or an error as `(monotonic arrival time, question, status)`; `replies` counts the choices
    answered, i.e. what a client paid for. Usage: `prompt_tokens` per request, `completion_tokens` per choice.
    """

    def __init__(self, answer: Callable[[dict], str]):
        self.answer = answer
        self.script: Callable[[dict, int], tuple[int, dict] | None] = lambda body, count: None
        self.hang = threading.Event()
        self.stop_after: int | None = None
        self.delay = 0.0
        self.prompt_tokens, self.completion_tokens = 10, 5
        self.requests: list[tuple[float, str, int]] = []
        self.replies = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                server.handle(self, json.loads(self.rfile.read(int(self.headers["content-length"]))))

        return Handler

    def handle(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        question, arrived = question_of(body), time.monotonic()
        with self.lock:
            if self.stop_after is not None and sum(s == 200 for _, _, s in self.requests) >= self.stop_after:
                self.hang.set()
            hanging = self.hang.is_set()
            if not hanging:
                count = 1 + sum(q == question for _, q, _ in self.requests)
                failure = self.script(body, count)
                status = failure[0] if failure else 200
                self.requests.append((arrived, question, status))
                if not failure:
                    self.replies += body["n"]
        if hanging:
            while self.hang.is_set():
                time.sleep(0.02)
            return  # the client gave up long ago; its connection is closed without a reply
        time.sleep(self.delay)
        if failure:
            send_json(handler, status, {"error": {"message": f"scripted {status}", "type": "server_error"}},
                      failure[1])
            return
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens * body["n"],
                 "total_tokens": self.prompt_tokens + self.completion_tokens * body["n"]}
        send_choices(handler, [self.answer(body)] * body["n"], usage)

    def count(self, status: int = 200) -> int:
        with self.lock:
            return sum(s == status for _, _, s in self.requests)

    def __enter__(self) -> TeacherServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.hang.clear()
        self.httpd.shutdown()
        self.httpd.server_close()
