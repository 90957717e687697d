"""A teacher behind any OpenAI-compatible chat/completions endpoint (OpenAI, vLLM, SGLang, TGI, …).

    client = ChatClient(endpoint="http://vllm:8000/v1", model="Qwen/Qwen2.5-72B-Instruct")
    rows = solve(client, records, strategies=("cot", "pot"), n=2)

Requests run concurrently up to `max_concurrency`. 429, 5xx, timeouts and
connection errors are retried with exponential backoff and jitter (honouring
`Retry-After`); other 4xx fail at once, since retrying a bad request cannot help.
The API key comes from the environment variable named in the spec, never from
the manifest.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Callable, Iterable

import httpx

from siked_runtime import credentials
from siked_runtime.teachers.fewshot import teacher_messages

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class TeacherAPIError(RuntimeError):
    """The endpoint refused a request for good, or kept failing after every retry."""


@dataclass
class ChatClient:
    endpoint: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    max_retries: int = 5
    timeout_seconds: float = 120.0
    temperature: float = 0.7
    max_tokens: int = 512
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    @classmethod
    def from_spec(cls, teacher) -> ChatClient:
        return cls(
            endpoint=teacher.endpoint, model=teacher.model, api_key_env=teacher.api_key_env,
            max_concurrency=teacher.max_concurrency, max_retries=teacher.max_retries,
            timeout_seconds=teacher.timeout_seconds, temperature=teacher.temperature, max_tokens=teacher.max_tokens,
        )

    @property
    def url(self) -> str:
        return self.endpoint.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        key = credentials.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and (after := response.headers.get("retry-after")):
            try:
                return min(float(after), self.backoff_max)
            except ValueError:
                pass
        return min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + random.random() / 2)

    async def complete(self, http: httpx.AsyncClient, messages: list[dict], n: int) -> list[str]:
        """`n` completions for one conversation, retrying what is worth retrying."""
        body = {"model": self.model, "messages": messages, "n": n,
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = await http.post(self.url, json=body, headers=self._headers())
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return _choices(response)
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRYABLE:
                    raise TeacherAPIError(f"{self.url} refused the request: {last}")
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt, response))
        raise TeacherAPIError(f"{self.url} failed after {self.max_retries + 1} attempts: {last}")


def _choices(response: httpx.Response) -> list[str]:
    try:
        data = response.json()
        return [c["message"]["content"] or "" for c in data["choices"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise TeacherAPIError(f"malformed chat/completions response ({exc!r}): {response.text[:200]}") from None


async def _ask(client: ChatClient, conversations: list[list[dict]], n: int,
               on_done: Callable[[int], None] | None) -> list[list[str]]:
    limit = asyncio.Semaphore(client.max_concurrency)
    timeout = httpx.Timeout(client.timeout_seconds, connect=min(10.0, client.timeout_seconds))
    limits = httpx.Limits(max_connections=client.max_concurrency)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        async def one(messages: list[dict]) -> list[str]:
            async with limit:
                texts = await client.complete(http, messages, n)
            if on_done:
                on_done(1)
            return texts

        return list(await asyncio.gather(*(one(m) for m in conversations)))


def ask(client: ChatClient, conversations: list[list[dict]], n: int = 1,
        on_done: Callable[[int], None] | None = None) -> list[list[str]]:
    """`n` replies to each conversation, in input order, requests running concurrently."""
    return asyncio.run(_ask(client, conversations, n, on_done))


def solve(client: ChatClient, records: list[dict], strategies: Iterable[str], n: int = 1,
          on_done: Callable[[int], None] | None = None) -> list[dict]:
    """Raw teacher completions, `n` per question and strategy, in input order (unverified)."""
    requests = [(r, s) for r in records for s in strategies]
    replies = ask(client, [teacher_messages(r["question"], s) for r, s in requests], n, on_done)
    return [{"id": r["id"], "answer": r["answer"], "strategy": s, "completion": t}
            for (r, s), texts in zip(requests, replies, strict=True) for t in texts]
