"""A teacher behind any OpenAI-compatible chat/completions endpoint (OpenAI, vLLM, SGLang, TGI, …).

    client = ChatClient(endpoint="http://vllm:8000/v1", model="Qwen/Qwen2.5-72B-Instruct")
    rows = solve(client, records, strategies=("cot", "pot"), n=2)           # in memory, all or nothing
    batch = collect(client, asks, n=2, journal=Journal(store, "teacher/journal"), max_failures=5)

Requests run concurrently up to `max_concurrency`, within the requests-per-minute and
tokens-per-minute limits (`RateLimiter`). 429, 5xx, timeouts, connection errors and
malformed replies are retried with exponential backoff and jitter (honouring
`Retry-After`, which also pauses every other request); other 4xx fail at once, since
retrying a bad request cannot help. The API key comes from the environment variable
named in the spec (through `credentials`), never from the manifest, and never appears
in an error message.

`collect` is what the teacher stage uses: every reply goes to the journal as it
arrives, replies already journaled for the same request body are not asked for again,
and a request that fails for good marks its question × strategy failed instead of
stopping the batch (until more than `max_failures` have failed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Callable, Iterable

import httpx

from siked_runtime import credentials
from siked_runtime.teachers.fewshot import teacher_messages
from siked_runtime.teachers.journal import Journal, Loaded

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
RETRY_AFTER_MAX = 300.0   # seconds; a longer Retry-After is obeyed for this long, then the request is retried
FLUSH_SECONDS = 2.0       # the journal is written at least this often while replies arrive
ERROR_CHARS = 200         # server text quoted in an error


class TeacherAPIError(RuntimeError):
    """The endpoint refused a request for good, or kept failing after every retry."""


# --- replies ---------------------------------------------------------------------------------


@dataclass
class Reply:
    """One 200 chat.completion: a text and finish_reason per choice, and the request's token usage."""

    texts: list[str]
    finish_reasons: list[str | None]
    usage: dict[str, int] | None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_of(data: dict) -> dict[str, int] | None:
    """prompt/completion/total tokens of a reply; None when the server sent none, or not both counts."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion, total = (_count(usage.get(k)) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    if prompt is None or completion is None:
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion if total is None else total}


def parse_reply(response: httpx.Response) -> Reply:
    """The choices of a 200 reply; a TeacherAPIError that says what is wrong with a malformed one."""
    try:
        data = response.json()
        choices = data["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError("no choices")
        texts, reasons = [], []
        for choice in sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0):
            content = choice["message"]["content"]
            if content is not None and not isinstance(content, str):
                raise TypeError(f"message.content is {type(content).__name__}")
            reason = choice.get("finish_reason")
            texts.append(content or "")
            reasons.append(reason if isinstance(reason, str) else None)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TeacherAPIError(f"malformed chat/completions reply ({exc!r}): {response.text[:ERROR_CHARS]}") from None
    return Reply(texts, reasons, usage_of(data))


def error_text(response: httpx.Response) -> str:
    """`HTTP 429: <the server's message>`: OpenAI's `error.message`, vLLM's `message`, FastAPI's `detail`, or the body."""
    message = None
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        candidates = (error.get("message") if isinstance(error, dict) else error, data.get("message"), data.get("detail"))
        message = next((m for m in candidates if isinstance(m, str) and m), None)
    message = message or response.text or response.reason_phrase
    return f"HTTP {response.status_code}: {' '.join(message.split())[:ERROR_CHARS]}"


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` in seconds or as an HTTP date)."""
    try:
        if (ms := response.headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        if (after := response.headers.get("retry-after")) is None:
            return None
        try:
            return max(0.0, float(after))
        except ValueError:
            return max(0.0, parsedate_to_datetime(after).timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def request_hash(body: dict) -> str:
    """What a journaled reply answered: the request body without `n` (a rerun asks only for the samples
    still missing, and those are interchangeable with the ones journaled)."""
    same = {k: v for k, v in body.items() if k != "n"}
    return hashlib.sha256(json.dumps(same, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


# --- rate limits -----------------------------------------------------------------------------


class Bucket:
    """A token bucket refilled at `per_minute / 60` a second, holding at most one second's worth (at least one
    request's cost), so no minute sees much more than `per_minute`. A cost larger than the bucket waits for a
    full bucket and leaves it in debt."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level, self.stamp = self.capacity, time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, cost: float) -> float:
        """Seconds until `cost` can be taken (0: now)."""
        self.refill()
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, cost: float) -> None:
        self.refill()
        self.level -= cost


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits, and a pause everyone obeys after a 429's Retry-After.

    Tokens are estimated before a request (prompt characters / 4 plus `max_tokens` per choice) and corrected from
    the reply's usage. Check-and-take has no `await` in between, so one event loop needs no lock.
    """

    def __init__(self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None):
        self.requests = Bucket(requests_per_minute) if requests_per_minute else None
        self.tokens = Bucket(tokens_per_minute) if tokens_per_minute else None
        self.paused_until = 0.0

    def _wait(self, tokens: int) -> float:
        waits = [self.paused_until - time.monotonic()]
        if self.requests:
            waits.append(self.requests.wait_for(1))
        if self.tokens:
            waits.append(self.tokens.wait_for(tokens))
        return max(waits)

    async def acquire(self, tokens: int) -> None:
        while (delay := self._wait(tokens)) > 0:
            await asyncio.sleep(delay)
        if self.requests:
            self.requests.take(1)
        if self.tokens:
            self.tokens.take(tokens)

    def settle(self, estimated: int, used: int) -> None:
        """Give back (or charge) the difference between a request's estimate and what it used."""
        if self.tokens:
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + estimated - used)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


# --- the client ------------------------------------------------------------------------------


@dataclass
class Stats:
    """What one batch sent: HTTP requests (retries included), retries, and the tokens of the replies it got."""

    requests: int = 0
    retries: int = 0
    replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    without_usage: int = 0


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
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    limiter: RateLimiter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.requests_per_minute, self.tokens_per_minute)

    @classmethod
    def from_spec(cls, teacher) -> ChatClient:
        return cls(
            endpoint=teacher.endpoint, model=teacher.model, api_key_env=teacher.api_key_env,
            max_concurrency=teacher.max_concurrency, max_retries=teacher.max_retries,
            timeout_seconds=teacher.timeout_seconds, temperature=teacher.temperature, max_tokens=teacher.max_tokens,
            requests_per_minute=teacher.requests_per_minute, tokens_per_minute=teacher.tokens_per_minute,
        )

    @property
    def url(self) -> str:
        return self.endpoint.rstrip("/") + "/chat/completions"

    def body(self, messages: list[dict], n: int) -> dict:
        return {"model": self.model, "messages": messages, "n": n,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def estimate_tokens(self, messages: list[dict], n: int) -> int:
        """Tokens a request may use, before it is sent: about 4 characters a prompt token, every choice at max_tokens."""
        chars = sum(len(str(m.get("content", ""))) for m in messages)
        return chars // 4 + 4 * len(messages) + n * self.max_tokens

    def _headers(self) -> dict[str, str]:
        key = credentials.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _scrub(self, text: str) -> str:
        """`text` without the API key (a server may echo request headers in its error)."""
        key = credentials.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and (after := retry_after(response)) is not None:
            return min(after, RETRY_AFTER_MAX)
        return min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + random.random() / 2)

    async def _attempt(self, http: httpx.AsyncClient, body: dict, estimate: int) -> tuple[Reply | None, str,
                                                                                          httpx.Response | None]:
        """One request: (the reply, "", response) or (None, why it failed, the response if there was one)."""
        await self.limiter.acquire(estimate)
        try:
            response = await http.post(self.url, json=body, headers=self._headers())
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            self.limiter.settle(estimate, 0)
            return None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS], None
        if response.status_code != 200:
            self.limiter.settle(estimate, 0)
            return None, error_text(response), response
        try:
            reply = parse_reply(response)
        except TeacherAPIError as exc:
            return None, str(exc), response
        self.limiter.settle(estimate, reply.usage["total_tokens"] if reply.usage else estimate)
        return reply, "", response

    async def reply(self, http: httpx.AsyncClient, messages: list[dict], n: int, stats: Stats | None = None) -> Reply:
        """`n` completions for one conversation (a server may send fewer), retrying what is worth retrying."""
        stats = stats if stats is not None else Stats()
        body, estimate = self.body(messages, n), self.estimate_tokens(messages, n)
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            stats.requests += 1
            stats.retries += attempt > 0
            reply, last, response = await self._attempt(http, body, estimate)
            if reply is not None:
                add_usage(stats, reply)
                return reply
            if response is not None and response.status_code not in RETRYABLE and response.status_code != 200:
                raise TeacherAPIError(self._scrub(f"{self.url} refused the request: {last}"))
            if attempt < self.max_retries:
                delay = self._delay(attempt, response)
                if response is not None and response.status_code == 429 and retry_after(response) is not None:
                    self.limiter.pause(delay)  # the server's limit is shared by every request in flight
                await asyncio.sleep(delay)
        raise TeacherAPIError(self._scrub(f"{self.url} failed after {self.max_retries + 1} attempts: {last}"))

    async def complete(self, http: httpx.AsyncClient, messages: list[dict], n: int) -> list[str]:
        """`n` completion texts for one conversation (see `reply`)."""
        return (await self.reply(http, messages, n)).texts

    def session(self) -> httpx.AsyncClient:
        timeout = httpx.Timeout(self.timeout_seconds, connect=min(10.0, self.timeout_seconds))
        return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=self.max_concurrency))


def add_usage(stats: Stats, reply: Reply) -> None:
    stats.replies += 1
    if reply.usage is None:
        stats.without_usage += 1
        return
    stats.prompt_tokens += reply.usage["prompt_tokens"]
    stats.completion_tokens += reply.usage["completion_tokens"]
    stats.total_tokens += reply.usage["total_tokens"]


# --- in memory: all or nothing ---------------------------------------------------------------


async def _ask(client: ChatClient, conversations: list[list[dict]], n: int,
               on_done: Callable[[int], None] | None) -> list[list[str]]:
    limit = asyncio.Semaphore(client.max_concurrency)

    async with client.session() as http:
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


# --- journaled: never pays twice -------------------------------------------------------------


@dataclass
class Ask:
    """One question × strategy (or any other kind of request, e.g. "knowledge"), answered `n` times."""

    id: str
    strategy: str
    messages: list[dict]


@dataclass
class Batch:
    """What `collect` got: journal entries per (id, strategy) in sample order (at most `n`), failures with
    their error, this attempt's request counts and tokens, the replies reused from the journal and what the
    journal held, and whether requests were left unsent because too many had failed."""

    entries: dict[tuple[str, str], list[dict]]
    failures: dict[tuple[str, str], str]
    stats: Stats
    reused: int
    journal: Loaded
    stopped: bool


def journaled(loaded: Loaded, n: int) -> dict[tuple[str, str, str], list[dict]]:
    """Entries per (id, strategy, request hash), first written first, at most `n` each."""
    out: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for entry in loaded.entries:
        got = out[entry["id"], entry["strategy"], entry["request"]]
        if len(got) < n:
            got.append(entry)
    return out


def entry_for(ask: Ask, request: str, sample: int, reply: Reply, choice: int) -> dict:
    """A journal entry; the request's usage goes on its first choice (`choice` 0) only, so summing entries
    counts it once."""
    return {"id": ask.id, "strategy": ask.strategy, "sample": sample, "request": request,
            "text": reply.texts[choice], "finish_reason": reply.finish_reasons[choice],
            "choice": choice, "usage": reply.usage if choice == 0 else None}


class _Collector:
    """The state of one `collect` call: runs the asks, journals replies, stops past the failure limit."""

    def __init__(self, client: ChatClient, journal: Journal, n: int, max_failures: int | None,
                 on_done: Callable[[int], None] | None):
        self.client, self.journal, self.n, self.max_failures, self.on_done = client, journal, n, max_failures, on_done
        self.stats, self.failures, self.stopped = Stats(), {}, False
        self.tasks: list[asyncio.Task] = []

    async def flush(self) -> None:
        await asyncio.to_thread(self.journal.flush)

    async def one(self, http: httpx.AsyncClient, limit: asyncio.Semaphore, ask: Ask, got: list[dict]) -> None:
        request = request_hash(self.client.body(ask.messages, self.n))
        async with limit:
            try:
                while len(got) < self.n:  # a server may send fewer choices than asked for
                    reply = await self.client.reply(http, ask.messages, self.n - len(got), self.stats)
                    for choice in range(min(len(reply.texts), self.n - len(got))):
                        got.append(entry_for(ask, request, len(got), reply, choice))
                        if self.journal.add(got[-1]):
                            await self.flush()
            except TeacherAPIError as exc:
                self.failures[ask.id, ask.strategy] = str(exc)
                if self.max_failures is not None and len(self.failures) > self.max_failures:
                    self.stopped = True
                    for task in self.tasks:
                        if task is not asyncio.current_task():
                            task.cancel()
        if self.on_done:
            self.on_done(1)

    async def every_few_seconds(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()

    async def run(self, todo: list[tuple[Ask, list[dict]]]) -> None:
        limit = asyncio.Semaphore(self.client.max_concurrency)
        ticker = asyncio.create_task(self.every_few_seconds())
        try:
            async with self.client.session() as http:
                self.tasks = [asyncio.create_task(self.one(http, limit, a, got)) for a, got in todo]
                await asyncio.gather(*self.tasks, return_exceptions=True)
                for task in self.tasks:  # anything but a cancellation is a bug worth seeing
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()
        finally:
            ticker.cancel()
            await self.flush()


def flush_on_sigterm(journal: Journal) -> Callable[[], None]:
    """Flush the journal when the process is told to stop (a drained node, an evicted pod), then stop as it
    would have; returns what undoes it. Only the main thread can handle signals, elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        journal.flush()
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def collect(client: ChatClient, asks: list[Ask], n: int, journal: Journal, max_failures: int | None = None,
            on_done: Callable[[int], None] | None = None) -> Batch:
    """`n` replies to every ask, journaled as they arrive; replies already in the journal for the same request
    body are reused. Once more than `max_failures` asks have failed, the rest are not sent (`Batch.stopped`)."""
    loaded = journal.load()
    have = journaled(loaded, n)
    entries = {(a.id, a.strategy): list(have.get((a.id, a.strategy, request_hash(client.body(a.messages, n))), []))
               for a in asks}
    reused = sum(len(got) for got in entries.values())
    todo = [(a, entries[a.id, a.strategy]) for a in asks if len(entries[a.id, a.strategy]) < n]
    if on_done and len(asks) > len(todo):
        on_done(len(asks) - len(todo))
    collector = _Collector(client, journal, n, max_failures, on_done)
    undo = flush_on_sigterm(journal)
    try:
        asyncio.run(collector.run(todo))
    finally:
        undo()
    return Batch(entries, collector.failures, collector.stats, reused, loaded, collector.stopped)
