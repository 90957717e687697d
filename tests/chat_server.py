"""What the tests' OpenAI-compatible servers share: a chat-completions reply on the wire."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


def send_choices(handler: BaseHTTPRequestHandler, texts: list[str]) -> None:
    """A 200 chat.completion with one choice per text."""
    data = json.dumps({"choices": [{"index": i, "message": {"role": "assistant", "content": text}}
                                   for i, text in enumerate(texts)]}).encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
