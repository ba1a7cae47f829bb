"""The OpenAI provider: the official SDK's AsyncOpenAI against OpenAI or any server that speaks
its API (the base URL setting).

Structured answers are asked for with a strict json_schema response format built from the
pydantic model (strict_schema: the subset strict mode accepts) and validated against the model
here (the SDK's `parse` would send its own conversion, which strict mode refuses).
Retries are the SDK's (408/409/429/5xx, timeouts, lost connections; backoff honouring
retry-after/retry-after-ms); what still fails is turned into the interface's typed errors here,
and nowhere else:

- refusal in the answer, or finish reason content_filter  -> LLMRefusedError
- finish reason length                                     -> LLMTruncatedError
- empty answer, not JSON, not the schema, malformed body   -> LLMBadAnswerError
- 408/409/429/5xx or no connection, after the retries      -> LLMUnavailableError (retry_after_s
                                                              from the last answer's headers)
- the call's deadline passed (llm_timeout_s or the caller's) -> LLMTimeoutError
- 401/403 (key refused) and other 4xx (unknown model, a
  parameter the server does not support)                   -> LLMNotConfiguredError: an operator
                                                              must fix the configuration; retrying
                                                              the same call cannot help.

Every call is one telemetry operation (kind "llm_call") with the tokens it used, and its prompt
and answer go to the debug log redacted (exchange_log).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import openai
from openai import AsyncOpenAI
from openai.types import CreateEmbeddingResponse
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.completion_usage import CompletionUsage
from pydantic import BaseModel, ValidationError

from ..settings import Settings
from ..telemetry import timed
from .exchange_log import log_exchange
from .interface import (
    Completion,
    Embeddings,
    LLMBadAnswerError,
    LLMError,
    LLMNotConfiguredError,
    LLMRefusedError,
    LLMTimeoutError,
    LLMTruncatedError,
    LLMUnavailableError,
    Message,
    StructuredCompletion,
    Usage,
)
from .strict_schema import strict_response_format

T = TypeVar("T", bound=BaseModel)

NAME = "openai"
# Statuses the SDK retries (its _should_retry): after its retries they mean "try later".
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
# What decoding an answer raises when it is not JSON, not the shape the SDK expects, or not the
# schema asked for (pydantic's ValidationError is a ValueError).
_UNPARSEABLE = (ValueError, TypeError, AttributeError, KeyError)


def read_api_key(settings: Settings) -> str:
    """The API key from llm_api_key_file, else the variable llm_api_key_env names."""
    if settings.llm_api_key_file is not None:
        try:
            key = settings.llm_api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise LLMNotConfiguredError(
                # The class only: a decoding error's text would quote bytes of the key.
                f"CPA_LLM_API_KEY_FILE {settings.llm_api_key_file}: cannot read it "
                f"({type(error).__name__})"
            ) from None
        if not key:
            raise LLMNotConfiguredError(
                f"CPA_LLM_API_KEY_FILE {settings.llm_api_key_file} is empty"
            )
        return key
    key = os.environ.get(settings.llm_api_key_env, "").strip()
    if not key:
        raise LLMNotConfiguredError(
            f"the openai provider needs an API key: set the variable {settings.llm_api_key_env} "
            "(named by CPA_LLM_API_KEY_ENV) or CPA_LLM_API_KEY_FILE"
        )
    return key


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The server's retry hint in seconds, read as the SDK reads it (retry-after-ms first, then
    retry-after as seconds or an HTTP date); None without a usable one."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    parsed = email.utils.parsedate_tz(headers.get("retry-after") or "")
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


def _usage(usage: CompletionUsage | None) -> Usage:
    if usage is None:
        return Usage()
    return Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)


def _usage_of_body(body: Any) -> Usage:
    """Usage from a raw answer body that did not parse into a completion, when it has one."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return Usage()
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def _translate(error: openai.OpenAIError, deadline_s: float) -> LLMError:
    """The typed error for an SDK error raised after the SDK's own retries."""
    if isinstance(error, openai.APITimeoutError):
        return LLMTimeoutError(f"no answer within {deadline_s:g} s")
    if isinstance(error, openai.APIConnectionError):
        return LLMUnavailableError(f"cannot reach the provider: {error}")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        hint = retry_after_s(error.response.headers)
        if status in _RETRYABLE_STATUSES or status >= 500:
            return LLMUnavailableError(
                f"the provider answered {status} ({error.message})", retry_after_s=hint
            )
        if status in (401, 403):
            return LLMNotConfiguredError(
                f"the provider refused the API key ({status}): check CPA_LLM_API_KEY_ENV or "
                "CPA_LLM_API_KEY_FILE"
            )
        return LLMNotConfiguredError(
            f"the provider rejected the request ({status}: {error.message}); check "
            "CPA_LLM_MODEL, CPA_LLM_EMBEDDING_MODEL and CPA_LLM_EMBEDDING_DIMENSION"
        )
    return LLMBadAnswerError(f"unusable answer: {error}")


class OpenAIProvider:
    """LLMProvider on AsyncOpenAI, configured from the LLM settings (from_settings)."""

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        embedding_model: str,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        embedding_dimension: int = 0,
        embedding_batch_size: int = 128,
    ) -> None:
        self._api_key = api_key
        self._model = model
        self._embedding_model = embedding_model
        self._timeout_s = timeout_s
        self._embedding_dimension = embedding_dimension
        self._batch_size = embedding_batch_size
        self._client = AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or None,
            timeout=timeout_s,
            max_retries=max_retries,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIProvider:
        return cls(
            api_key=read_api_key(settings),
            model=settings.llm_model,
            embedding_model=settings.llm_embedding_model,
            base_url=settings.llm_base_url,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            embedding_dimension=settings.llm_embedding_dimension,
            embedding_batch_size=settings.llm_embedding_batch_size,
        )

    @property
    def name(self) -> str:
        return NAME

    @asynccontextmanager
    async def _call(
        self, operation: str, model: str, timeout_s: float | None
    ) -> AsyncIterator[_CallState]:
        """One provider call: timed, bounded by its deadline, SDK errors turned into ours."""
        deadline_s = self._timeout_s if timeout_s is None else min(timeout_s, self._timeout_s)
        state = _CallState(deadline_s)
        with timed("llm_call", operation, provider=NAME, model=model) as timing:
            try:
                try:
                    async with asyncio.timeout(deadline_s):
                        yield state
                except TimeoutError:
                    raise LLMTimeoutError(f"no answer within {deadline_s:g} s") from None
                except openai.OpenAIError as error:
                    raise _translate(error, deadline_s) from None
            except LLMError as error:
                # The tokens this call used, known before it failed (a truncated answer, the
                # batches embedded before a failing one).
                if state.usage.total_tokens:
                    error.usage = state.usage
                raise
            finally:
                timing.counts["prompt_tokens"] = state.usage.prompt_tokens
                timing.counts["completion_tokens"] = state.usage.completion_tokens
                timing.counts.update(state.counts)

    async def generate(
        self, messages: Sequence[Message], *, timeout_s: float | None = None
    ) -> Completion:
        async with self._call("generate", self._model, timeout_s) as state:
            text = await self._chat("generate", messages, None, state)
            return Completion(text=text, model=self._model, usage=state.usage)

    async def generate_structured(
        self, messages: Sequence[Message], schema: type[T], *, timeout_s: float | None = None
    ) -> StructuredCompletion[T]:
        async with self._call("generate_structured", self._model, timeout_s) as state:
            text = await self._chat("generate_structured", messages, schema, state)
            try:
                # Validated here, not by the SDK: the schema sent leaves out bounds (lengths)
                # strict mode refuses, the model keeps them.
                value = schema.model_validate_json(text)
            except ValidationError as error:
                raise LLMBadAnswerError(
                    f"the answer is not a {schema.__name__}: {_short(error)}", usage=state.usage
                ) from None
            return StructuredCompletion(value=value, raw=text, model=self._model, usage=state.usage)

    async def _chat(
        self,
        operation: str,
        messages: Sequence[Message],
        schema: type[BaseModel] | None,
        state: _CallState,
    ) -> str:
        """The text of one chat completion (asked for in `schema`'s format when given)."""
        params = [_message_param(m) for m in messages]
        raw = await self._client.chat.completions.with_raw_response.create(
            model=self._model,
            messages=params,
            response_format=strict_response_format(schema) if schema is not None else openai.omit,
            timeout=state.deadline_s,
        )
        try:
            completion = raw.parse()
            choices, usage = list(completion.choices), _usage(completion.usage)
        except _UNPARSEABLE as error:
            state.usage = _usage_of_body(_json_or_none(raw.http_response.text))
            log_exchange(NAME, operation, messages, raw.http_response.text, secrets=self._secrets)
            raise LLMBadAnswerError(f"the answer does not parse: {_short(error)}") from None
        state.usage = usage
        if not choices:
            raise LLMBadAnswerError("the answer has no choices")
        if choices[0].finish_reason == "length":
            raise LLMTruncatedError("the answer was cut off at the token limit")
        if choices[0].finish_reason == "content_filter":
            raise LLMRefusedError("the provider's content filter withheld the answer")
        message = choices[0].message
        log_exchange(
            NAME, operation, messages, message.refusal or message.content, secrets=self._secrets
        )
        if message.refusal:
            raise LLMRefusedError(f"the model refused: {_short(message.refusal)}")
        if not message.content:
            raise LLMBadAnswerError("the answer is empty")
        return message.content

    async def embed(self, texts: Sequence[str], *, timeout_s: float | None = None) -> Embeddings:
        vectors: list[list[float]] = []
        async with self._call("embed", self._embedding_model, timeout_s) as state:
            state.counts["texts"] = len(texts)
            for start in range(0, len(texts), self._batch_size):
                batch = list(texts[start : start + self._batch_size])
                try:
                    response = await self._client.embeddings.create(
                        model=self._embedding_model,
                        input=batch,
                        dimensions=self._embedding_dimension or openai.omit,
                        timeout=state.deadline_s,
                    )
                except _UNPARSEABLE as error:
                    # The SDK decodes the body itself: not JSON, or no data in it.
                    raise LLMBadAnswerError(f"the answer does not parse: {_short(error)}") from None
                tokens = response.usage.prompt_tokens if response.usage else 0
                state.usage = state.usage + Usage(prompt_tokens=tokens)
                vectors.extend(self._vectors(response, len(batch), vectors))
            return Embeddings(vectors=vectors, model=self._embedding_model, usage=state.usage)

    def _vectors(
        self, response: CreateEmbeddingResponse, count: int, before: list[list[float]]
    ) -> list[list[float]]:
        """The batch's vectors in the order of its texts, checked: one per text, one length."""
        data = sorted(response.data or [], key=lambda item: item.index)
        if [item.index for item in data] != list(range(count)):
            raise LLMBadAnswerError(f"the provider answered {len(data)} vectors for {count} texts")
        expected = len(before[0]) if before else (self._embedding_dimension or None)
        vectors = [list(item.embedding) for item in data]
        for vector in vectors:
            if expected is None:
                expected = len(vector)
            if len(vector) != expected or not vector:
                raise LLMBadAnswerError(
                    f"the provider answered vectors of different lengths ({len(vector)}, "
                    f"{expected})"
                )
        return vectors

    @property
    def _secrets(self) -> tuple[str]:
        return (self._api_key,)

    async def aclose(self) -> None:
        await self._client.close()


class _CallState:
    """What one call learns as it goes: its deadline, the tokens used, other counts."""

    __slots__ = ("counts", "deadline_s", "usage")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.usage = Usage()
        self.counts: dict[str, int] = {}


def _message_param(message: Message) -> ChatCompletionMessageParam:
    if message.role == "system":
        return ChatCompletionSystemMessageParam(role="system", content=message.content)
    if message.role == "assistant":
        return ChatCompletionAssistantMessageParam(role="assistant", content=message.content)
    return ChatCompletionUserMessageParam(role="user", content=message.content)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _short(value: object, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"
