"""The loopback server speaks the wire format the real SDK expects (so the provider tests and
the planner's tests exercise the SDK's own parsing, retries and encodings)."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from tests.support.openai_server import (
    CHAT_PATH,
    OpenAIServer,
    Reply,
    embeddings_reply,
    json_reply,
    rate_limited,
    text_vector,
)


class Answer(BaseModel):
    intent: str
    confidence: float


def client_for(server: OpenAIServer, max_retries: int = 2) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=max_retries)


async def test_parse_sends_a_strict_json_schema_and_reads_the_answer(
    openai_server: OpenAIServer,
) -> None:
    openai_server.chat.push(json_reply({"intent": "download", "confidence": 0.9}))
    async with client_for(openai_server) as client:
        completion = await client.chat.completions.parse(
            model="gpt-test",
            messages=[{"role": "user", "content": "get the invoice"}],
            response_format=Answer,
        )
    assert completion.choices[0].message.parsed == Answer(intent="download", confidence=0.9)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 11
    (request,) = openai_server.chat_requests
    assert request.last_user_message == "get the invoice"
    assert request.headers["authorization"] == "Bearer sk-test"
    fmt = request.json["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["intent", "confidence"]


async def test_embeddings_default_to_base64_and_decode_to_the_same_floats(
    openai_server: OpenAIServer,
) -> None:
    async with client_for(openai_server) as client:
        result = await client.embeddings.create(model="emb", input=["a", "b"])
        floats = await client.embeddings.create(model="emb", input=["a"], encoding_format="float")
    first, second = openai_server.embedding_requests
    assert first.json["encoding_format"] == "base64"
    assert second.json["encoding_format"] == "float"
    assert [d.embedding for d in result.data] == [text_vector("a"), text_vector("b")]
    assert floats.data[0].embedding == text_vector("a")


async def test_scripted_embeddings_and_unscripted_chat(openai_server: OpenAIServer) -> None:
    openai_server.embeddings.push(embeddings_reply([[1.0, 0.0], [0.0, 1.0]]))
    async with client_for(openai_server, max_retries=0) as client:
        result = await client.embeddings.create(model="emb", input=["x", "y"])
        assert [d.embedding for d in result.data] == [[1.0, 0.0], [0.0, 1.0]]
        with pytest.raises(openai.BadRequestError, match="no scripted answer"):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )


async def test_retry_after_ms_is_honoured_and_held_replies_wait(
    openai_server: OpenAIServer,
) -> None:
    release = asyncio.Event()
    openai_server.chat.push(rate_limited(retry_after_ms=1), Reply(b"not json", hold=release))
    async with client_for(openai_server, max_retries=1) as client:
        call = asyncio.create_task(
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        )
        await openai_server.wait_for(2, CHAT_PATH)
        assert not call.done()
        release.set()
        # A 200 whose JSON body does not parse: the SDK lets json's own error through.
        with pytest.raises(json.JSONDecodeError):
            await call
