"""Embeddings through the real SDK: both wire encodings, batches in order, checked answers."""

from __future__ import annotations

import pytest

from cpa_scheduler.llm import LLMBadAnswerError, LLMUnavailableError, Usage
from cpa_scheduler.llm.openai_provider import OpenAIProvider
from cpa_scheduler.telemetry import Operation
from tests.llm.conftest import provider_for
from tests.support.openai_server import (
    OpenAIServer,
    Received,
    Reply,
    embeddings_reply,
    error_reply,
    inputs_of,
    text_vector,
)

TEXTS = ["invoice March", "mail accounting", "portal login", "report", "archive"]


async def test_the_sdks_base64_default_is_decoded(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    result = await provider.embed(TEXTS[:2])
    assert result.vectors == [text_vector(TEXTS[0]), text_vector(TEXTS[1])]
    assert result.model == "embedding-test"
    (request,) = openai_server.embedding_requests
    assert request.json["encoding_format"] == "base64"
    assert request.json["input"] == TEXTS[:2]
    assert "dimensions" not in request.json


async def test_a_server_answering_floats_anyway_is_understood(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.embeddings.push(embeddings_reply([[0.5, -0.25]], encoding_format="float"))
    result = await provider.embed(["x"])
    assert result.vectors == [[0.5, -0.25]]


async def test_batches_keep_the_texts_order(
    openai_server: OpenAIServer, operations: list[Operation]
) -> None:
    def shuffled(request: Received) -> Reply:
        vectors = [text_vector(text) for text in inputs_of(request)]
        return embeddings_reply(vectors, reverse=True, prompt_tokens=10)(request)

    openai_server.embeddings.default = shuffled
    provider = provider_for(openai_server, embedding_batch_size=2)
    result = await provider.embed(TEXTS)
    await provider.aclose()
    assert result.vectors == [text_vector(text) for text in TEXTS]
    assert [r.json["input"] for r in openai_server.embedding_requests] == [
        TEXTS[0:2],
        TEXTS[2:4],
        TEXTS[4:5],
    ]
    assert result.usage == Usage(prompt_tokens=30)
    (operation,) = operations
    assert (operation.kind, operation.name, operation.outcome) == ("llm_call", "embed", "ok")
    assert operation.labels == {"provider": "openai", "model": "embedding-test"}
    assert operation.counts == {"prompt_tokens": 30, "completion_tokens": 0, "texts": 5}


async def test_the_configured_dimension_is_asked_for_and_checked(
    openai_server: OpenAIServer,
) -> None:
    provider = provider_for(openai_server, embedding_dimension=3)
    openai_server.embeddings.push(embeddings_reply([[1.0, 0.0, 0.0]]))
    assert (await provider.embed(["a"])).vectors == [[1.0, 0.0, 0.0]]
    assert openai_server.embedding_requests[0].json["dimensions"] == 3
    openai_server.embeddings.push(embeddings_reply([[1.0, 0.0]]))
    with pytest.raises(LLMBadAnswerError, match="different lengths"):
        await provider.embed(["a"])
    await provider.aclose()


async def test_no_texts_no_request(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    result = await provider.embed([])
    assert result.vectors == []
    assert openai_server.embedding_requests == []


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(embeddings_reply([[1.0, 0.0]]), id="too-few"),
        pytest.param(embeddings_reply([[1.0], [0.0], [0.5]]), id="too-many"),
        pytest.param(embeddings_reply([[1.0, 0.0], [1.0]]), id="ragged"),
        pytest.param(embeddings_reply([[], []]), id="empty-vectors"),
        pytest.param(Reply({"object": "list", "data": []}), id="no-data"),
        pytest.param(Reply(b"]["), id="malformed"),
    ],
)
async def test_an_answer_that_does_not_fit_the_texts_is_a_bad_answer(
    openai_server: OpenAIServer, provider: OpenAIProvider, reply: Reply
) -> None:
    openai_server.embeddings.push(reply)
    with pytest.raises(LLMBadAnswerError):
        await provider.embed(["a", "b"])


async def test_a_failing_batch_fails_the_call_with_the_tokens_spent_so_far(
    openai_server: OpenAIServer,
) -> None:
    provider = provider_for(openai_server, embedding_batch_size=2, max_retries=0)
    openai_server.embeddings.push(
        embeddings_reply([[1.0], [0.0]], prompt_tokens=8), error_reply(503)
    )
    with pytest.raises(LLMUnavailableError) as caught:
        await provider.embed(TEXTS[:4])
    assert caught.value.usage == Usage(prompt_tokens=8)
    await provider.aclose()
