"""A loopback HTTP server that speaks the OpenAI wire format, for tests through the real SDK.

It serves POST /v1/chat/completions (plain and `response_format` json_schema requests, as
the provider sends them) and POST /v1/embeddings (`encoding_format` float or base64,
the SDK's default: little-endian float32). Each test scripts it:

- `chat` / `embeddings`: queues of replies, taken in order, one per request. An entry is a
  `Reply` or a function of the `Received` request returning one (for answers that depend on
  what was sent, like embeddings in the encoding asked for).
- `chat.default` / `embeddings.default`: the responder once the queue is empty. Chat's default
  is a 400 naming the unscripted request (a test that forgot to script an answer fails loudly,
  and 400 is not retried); embeddings' default answers deterministic vectors.
- `received`: every request as it arrived (path, headers, parsed JSON), so tests assert prompts;
  `await server.wait_for(n)` waits, on an event and not a clock, until n have arrived.

A `Reply` carries the status, headers (retry-after, retry-after-ms, x-should-retry), the body
(JSON, or raw bytes for a malformed one), and an optional `hold` event the server waits on before
answering (a server that never answers until told; `stop` releases every hold so shutdown
never hangs) and an optional `delay_s`.

    async with OpenAIServer() as server:
        server.chat.push(chat_reply('{"x": 1}'))
        client = AsyncOpenAI(base_url=server.base_url, api_key="test")

Use it as an async context manager, or through a fixture like tests/llm/conftest.py's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
DEFAULT_EMBEDDING_DIMENSION = 8


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    path: str
    headers: Mapping[str, str]
    """Lower-cased names."""
    body: bytes
    json: Any
    """The parsed body (None when it was not JSON)."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages sent (empty for other requests)."""
        messages: list[dict[str, Any]] = (self.json or {}).get("messages", [])
        return messages

    @property
    def last_user_message(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    body: Any = None
    """JSON-serialisable, or bytes sent as they are (a malformed body)."""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    hold: asyncio.Event | None = None
    """Answer only once this is set (or the server stops)."""
    delay_s: float = 0.0
    """Then wait this long before answering (a slow but finite server)."""


Responder = Callable[[Received], Reply]
Entry = Reply | Responder


class Endpoint:
    """The script of one path: a queue of replies, then `default`."""

    def __init__(self, default: Responder) -> None:
        self.queue: deque[Entry] = deque()
        self.default = default

    def push(self, *entries: Entry) -> None:
        self.queue.extend(entries)

    def next_reply(self, request: Received) -> Reply:
        entry = self.queue.popleft() if self.queue else self.default
        return entry if isinstance(entry, Reply) else entry(request)


# -- Reply builders ---------------------------------------------------------------------------


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_body(
    content: str | None,
    *,
    refusal: str | None = None,
    finish_reason: str = "stop",
    usage: tuple[int, int] | None = (11, 7),
    model: str = "gpt-test",
) -> dict[str, Any]:
    """A `chat.completion` object with one choice."""
    body: dict[str, Any] = {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": refusal,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "system_fingerprint": None,
    }
    if usage is not None:
        body["usage"] = usage_body(*usage)
    return body


def chat_reply(
    content: str | None,
    *,
    refusal: str | None = None,
    finish_reason: str = "stop",
    usage: tuple[int, int] | None = (11, 7),
    headers: Mapping[str, str] | None = None,
    hold: asyncio.Event | None = None,
) -> Reply:
    """A 200 answer whose message content is `content` (JSON text for a structured answer)."""
    body = chat_body(content, refusal=refusal, finish_reason=finish_reason, usage=usage)
    return Reply(body, headers=dict(headers or {}), hold=hold)


def json_reply(value: Any, **kwargs: Any) -> Reply:
    """A 200 chat answer whose content is `value` as JSON text."""
    return chat_reply(json.dumps(value), **kwargs)


def refusal_reply(refusal: str = "I can't help with that.") -> Reply:
    return chat_reply(None, refusal=refusal)


def error_reply(
    status: int,
    message: str = "scripted error",
    *,
    type_: str = "server_error",
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An error in the API's shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return Reply(body, status=status, headers=dict(headers or {}))


def rate_limited(retry_after_ms: int | None = 1, retry_after_s: float | None = None) -> Reply:
    """A 429 with the hints the SDK honours (retry-after-ms wins over retry-after)."""
    headers: dict[str, str] = {}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    if retry_after_s is not None:
        headers["retry-after"] = f"{retry_after_s:g}"
    return error_reply(
        429, "Rate limit reached", type_="requests", code="rate_limit_exceeded", headers=headers
    )


def encode_vector(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    """A vector as the API sends it: floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return list(vector)


def embeddings_reply(
    vectors: Sequence[Sequence[float]],
    *,
    prompt_tokens: int | None = None,
    encoding_format: str | None = None,
    reverse: bool = False,
) -> Responder:
    """Answer these vectors (index 0..n-1) in the encoding the request asked for, or in
    `encoding_format` whatever it asked (servers that ignore the field); `reverse` lists them
    last index first (the API gives each item its index; order in the list is not promised)."""

    def respond(request: Received) -> Reply:
        encoding = encoding_format or (request.json or {}).get("encoding_format", "float")
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding)}
            for i, v in enumerate(vectors)
        ]
        if reverse:
            data.reverse()
        tokens = len(vectors) if prompt_tokens is None else prompt_tokens
        body = {
            "object": "list",
            "data": data,
            "model": (request.json or {}).get("model", "embedding-test"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Reply(body)

    return respond


def text_vector(text: str, dimension: int = DEFAULT_EMBEDDING_DIMENSION) -> list[float]:
    """A deterministic unit vector for `text` (the default embedder: same text, same vector)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dimension)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    # Rounded through float32 so a base64 round trip compares equal.
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in raw]


def inputs_of(request: Received) -> list[str]:
    """The texts of an embeddings request (`input` is a string or a list of strings)."""
    value = (request.json or {}).get("input", [])
    return [value] if isinstance(value, str) else [str(v) for v in value]


def default_embeddings(request: Received) -> Reply:
    texts = inputs_of(request)
    return embeddings_reply([text_vector(t) for t in texts], prompt_tokens=len(texts))(request)


def unscripted_chat(request: Received) -> Reply:
    return error_reply(
        400,
        f"no scripted answer for this request (last user message: "
        f"{request.last_user_message[:200]!r})",
        type_="invalid_request_error",
    )


# -- The server -------------------------------------------------------------------------------


class OpenAIServer:
    """Loopback OpenAI-compatible server; `base_url` (…/v1) goes to AsyncOpenAI(base_url=…)."""

    def __init__(self) -> None:
        self.chat = Endpoint(unscripted_chat)
        self.embeddings = Endpoint(default_embeddings)
        self.received: list[Received] = []
        self.port = 0
        self._arrived = asyncio.Condition()
        self._holds: set[asyncio.Event] = set()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests_to(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    @property
    def chat_requests(self) -> list[Received]:
        return self.requests_to(CHAT_PATH)

    @property
    def embedding_requests(self) -> list[Received]:
        return self.requests_to(EMBEDDINGS_PATH)

    async def wait_for(self, count: int, path: str | None = None) -> list[Received]:
        """Wait until `count` requests (to `path`, if given) have arrived; returns them."""

        def matching() -> list[Received]:
            return self.received if path is None else self.requests_to(path)

        async with self._arrived:
            await self._arrived.wait_for(lambda: len(matching()) >= count)
        return matching()

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(CHAT_PATH, self._chat)
        app.router.add_post(EMBEDDINGS_PATH, self._embeddings)
        # Short shutdown: a held request must not keep cleanup waiting.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        # The bound port (port 0 picks one): aiohttp keeps the listening server private.
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for hold in self._holds:
            hold.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpenAIServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self.chat)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self.embeddings)

    async def _answer(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        received = Received(
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=raw,
            json=parsed,
        )
        reply = endpoint.next_reply(received)
        async with self._arrived:
            self.received.append(received)
            self._arrived.notify_all()
        if reply.hold is not None:
            self._holds.add(reply.hold)
            await reply.hold.wait()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        return web.Response(
            body=body,
            status=reply.status,
            headers={"content-type": "application/json", **reply.headers},
        )
