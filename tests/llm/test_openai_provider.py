"""The OpenAI provider through the real SDK against the loopback server: answers, typed errors,
the SDK's retries, deadlines, usage and telemetry."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from pydantic import BaseModel

from cpa_scheduler.llm import (
    LLMBadAnswerError,
    LLMNotConfiguredError,
    LLMRefusedError,
    LLMTimeoutError,
    LLMTruncatedError,
    LLMUnavailableError,
    Message,
    Usage,
)
from cpa_scheduler.llm.openai_provider import OpenAIProvider, read_api_key, retry_after_s
from cpa_scheduler.settings import Settings
from cpa_scheduler.telemetry import Operation
from tests.llm.conftest import API_KEY, provider_for
from tests.support.openai_server import (
    OpenAIServer,
    Reply,
    chat_reply,
    error_reply,
    json_reply,
    rate_limited,
    refusal_reply,
)

PROMPT = [
    Message("system", "You route requests."),
    Message("user", "download the March invoice"),
]


class Route(BaseModel):
    intent: str
    confidence: float


GOOD = {"intent": "download_invoice", "confidence": 0.92}


async def test_a_structured_answer_is_parsed_with_its_usage(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(json_reply(GOOD, usage=(120, 30)))
    result = await provider.generate_structured(PROMPT, Route)
    assert result.value == Route(intent="download_invoice", confidence=0.92)
    assert result.usage == Usage(120, 30)
    assert result.model == "gpt-test"
    (request,) = openai_server.chat_requests
    assert request.json["model"] == "gpt-test"
    assert request.messages == [
        {"role": "system", "content": "You route requests."},
        {"role": "user", "content": "download the March invoice"},
    ]
    schema = request.json["response_format"]["json_schema"]
    assert schema["strict"] is True
    assert set(schema["schema"]["properties"]) == {"intent", "confidence"}
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


async def test_free_text_answer(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.chat.push(chat_reply("Here is the plan.", usage=(5, 4)))
    result = await provider.generate([Message("user", "hello")])
    assert (result.text, result.usage) == ("Here is the plan.", Usage(5, 4))
    assert "response_format" not in openai_server.chat_requests[0].json


async def test_a_refusal_is_a_refused_error(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(refusal_reply("I can't help with that."))
    with pytest.raises(LLMRefusedError, match="can't help") as caught:
        await provider.generate_structured(PROMPT, Route)
    assert not caught.value.retryable
    assert caught.value.usage == Usage(11, 7)


async def test_a_content_filter_finish_is_a_refusal(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(chat_reply(None, finish_reason="content_filter"))
    with pytest.raises(LLMRefusedError, match="content filter"):
        await provider.generate_structured(PROMPT, Route)


async def test_a_length_finish_is_a_truncated_error_with_usage(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(
        chat_reply('{"intent": "downl', finish_reason="length", usage=(100, 4096))
    )
    with pytest.raises(LLMTruncatedError) as caught:
        await provider.generate_structured(PROMPT, Route)
    assert caught.value.usage == Usage(100, 4096)
    openai_server.chat.push(chat_reply("and then", finish_reason="length"))
    with pytest.raises(LLMTruncatedError):
        await provider.generate(PROMPT)


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(chat_reply("Sure! The intent is download."), id="prose"),
        pytest.param(json_reply({"intent": "x"}), id="missing-field"),
        pytest.param(json_reply({"intent": "x", "confidence": "high"}), id="wrong-type"),
        pytest.param(json_reply([1, 2]), id="not-an-object"),
        pytest.param(chat_reply(""), id="empty"),
        pytest.param(chat_reply(None), id="null-content"),
        pytest.param(Reply(b"{not json"), id="malformed-body"),
        pytest.param(Reply({"object": "chat.completion", "choices": []}), id="no-choices"),
        pytest.param(Reply({"unexpected": True}), id="not-a-completion"),
    ],
)
async def test_an_answer_that_is_not_the_schema_is_a_bad_answer(
    openai_server: OpenAIServer, provider: OpenAIProvider, reply: Reply
) -> None:
    openai_server.chat.push(reply)
    with pytest.raises(LLMBadAnswerError) as caught:
        await provider.generate_structured(PROMPT, Route)
    assert not caught.value.retryable
    # Not retried: a garbage answer is the model's, the same call would likely repeat it.
    assert len(openai_server.chat_requests) == 1


async def test_a_bad_answer_keeps_the_usage_it_cost(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(json_reply({"intent": "x"}, usage=(40, 3)))
    with pytest.raises(LLMBadAnswerError) as caught:
        await provider.generate_structured(PROMPT, Route)
    assert caught.value.usage == Usage(40, 3)


async def test_a_500_is_retried_by_the_sdk_then_answered(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(
        error_reply(500, headers={"retry-after-ms": "1"}),
        error_reply(503, headers={"retry-after-ms": "1"}),
        json_reply(GOOD),
    )
    result = await provider.generate_structured(PROMPT, Route)
    assert result.value.intent == "download_invoice"
    assert len(openai_server.chat_requests) == 3


async def test_a_429_with_retry_after_is_waited_out_then_answered(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(rate_limited(retry_after_ms=5), json_reply(GOOD))
    result = await provider.generate_structured(PROMPT, Route)
    assert result.value == Route(**GOOD)
    assert len(openai_server.chat_requests) == 2


async def test_a_429_forever_is_unavailable_with_the_servers_hint(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.default = lambda request: rate_limited(retry_after_ms=7)
    with pytest.raises(LLMUnavailableError) as caught:
        await provider.generate_structured(PROMPT, Route)
    assert caught.value.retryable
    assert caught.value.retry_after_s == pytest.approx(0.007)
    assert len(openai_server.chat_requests) == 3  # the first call and max_retries=2 retries


async def test_a_retry_after_beyond_the_sdks_limit_is_not_waited_but_reported(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(rate_limited(retry_after_ms=None, retry_after_s=300))
    with pytest.raises(LLMUnavailableError) as caught:
        await provider.generate_structured(PROMPT, Route)
    assert caught.value.retry_after_s == 300
    assert len(openai_server.chat_requests) == 1


async def test_a_slow_server_is_a_timeout_within_the_deadline(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    never = asyncio.Event()
    openai_server.chat.default = lambda request: Reply(json_reply(GOOD).body, hold=never)
    # The guard fails the test rather than hanging it if the deadline were not kept.
    async with asyncio.timeout(10):
        with pytest.raises(LLMTimeoutError, match=r"0\.2 s") as caught:
            await provider.generate_structured(PROMPT, Route, timeout_s=0.2)
    assert caught.value.retryable


async def test_the_configured_timeout_bounds_a_call_too(openai_server: OpenAIServer) -> None:
    never = asyncio.Event()
    openai_server.chat.default = lambda request: Reply(json_reply(GOOD).body, hold=never)
    provider = provider_for(openai_server, timeout_s=0.2, max_retries=5)
    async with asyncio.timeout(10):
        with pytest.raises(LLMTimeoutError):
            await provider.generate(PROMPT, timeout_s=60)
    await provider.aclose()


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_not_configured_and_not_retried(
    openai_server: OpenAIServer, provider: OpenAIProvider, status: int
) -> None:
    openai_server.chat.push(error_reply(status, "Incorrect API key", type_="invalid_request_error"))
    with pytest.raises(LLMNotConfiguredError, match="API key") as caught:
        await provider.generate(PROMPT)
    assert not caught.value.retryable
    assert len(openai_server.chat_requests) == 1


async def test_an_unknown_model_is_not_configured(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.chat.push(error_reply(404, "The model `gpt-test` does not exist"))
    with pytest.raises(LLMNotConfiguredError, match="CPA_LLM_MODEL"):
        await provider.generate(PROMPT)


async def test_no_server_is_unavailable() -> None:
    async with OpenAIServer() as gone:
        pass  # started and stopped: its port refuses connections now
    provider = provider_for(gone, max_retries=0)
    with pytest.raises(LLMUnavailableError, match="cannot reach"):
        await provider.generate(PROMPT)
    await provider.aclose()


async def test_each_call_is_a_telemetry_operation_with_tokens_and_outcome(
    openai_server: OpenAIServer, provider: OpenAIProvider, operations: list[Operation]
) -> None:
    openai_server.chat.push(json_reply(GOOD, usage=(50, 9)), refusal_reply())
    await provider.generate_structured(PROMPT, Route)
    with pytest.raises(LLMRefusedError):
        await provider.generate_structured(PROMPT, Route)
    ok, refused = operations
    assert (ok.kind, ok.name, ok.outcome) == ("llm_call", "generate_structured", "ok")
    assert ok.labels == {"provider": "openai", "model": "gpt-test"}
    assert ok.counts == {"prompt_tokens": 50, "completion_tokens": 9}
    assert refused.outcome == "LLMRefusedError"
    assert refused.counts["prompt_tokens"] == 11


async def test_the_debug_log_shows_prompt_and_answer_redacted(
    openai_server: OpenAIServer, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    iban = "DE89 3704 0044 0532 0130 00"
    openai_server.chat.push(chat_reply(f"Paying {iban} now; mail ops@acme.example"))
    prompt = [Message("user", f"pay {iban} with key {API_KEY}")]
    with caplog.at_level(logging.DEBUG, logger="cpa_scheduler.llm.exchange"):
        await provider.generate(prompt)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "[REDACTED:IBAN]" in logged
    assert "[REDACTED:EMAIL]" in logged
    assert "pay [REDACTED:IBAN] with key ***" in logged
    assert iban not in logged
    assert API_KEY not in logged
    assert "ops@acme.example" not in logged


async def test_nothing_is_logged_above_debug(
    openai_server: OpenAIServer, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    openai_server.chat.push(chat_reply("fine"))
    with caplog.at_level(logging.INFO, logger="cpa_scheduler.llm.exchange"):
        await provider.generate(PROMPT)
    assert not [r for r in caplog.records if r.name == "cpa_scheduler.llm.exchange"]


def test_the_key_comes_from_the_named_variable_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_LLM_KEY", " sk-from-env \n")
    assert read_api_key(Settings(llm_api_key_env="MY_LLM_KEY")) == "sk-from-env"
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    settings = Settings(llm_api_key_env="MY_LLM_KEY", llm_api_key_file=key_file)
    assert read_api_key(settings) == "sk-from-file"
    monkeypatch.delenv("MY_LLM_KEY")
    with pytest.raises(LLMNotConfiguredError, match="MY_LLM_KEY"):
        read_api_key(Settings(llm_api_key_env="MY_LLM_KEY"))
    key_file.write_text("  \n")
    with pytest.raises(LLMNotConfiguredError, match="is empty"):
        read_api_key(settings)
    with pytest.raises(LLMNotConfiguredError, match="cannot read"):
        read_api_key(Settings(llm_api_key_file=tmp_path / "missing"))


def test_retry_after_headers_are_read_like_the_sdk() -> None:
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "2.5"}) == 2.5
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({"retry-after": "-3"}) is None
    assert retry_after_s({"retry-after": "nan"}) is None
    assert retry_after_s({}) is None
