"""The LLM tests' loopback OpenAI server (tests/support/openai_server.py; other suites make the
same three-line fixture), a provider pointed at it, and the telemetry operations emitted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cpa_scheduler.llm.openai_provider import OpenAIProvider
from cpa_scheduler.telemetry import Operation, subscribe
from tests.support.openai_server import OpenAIServer

API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as server:
        yield server


def provider_for(server: OpenAIServer, **overrides: Any) -> OpenAIProvider:
    """A provider on `server` with retries that wait what the server says (retry-after-ms)."""
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "model": "gpt-test",
        "embedding_model": "embedding-test",
        "base_url": server.base_url,
        "timeout_s": 10.0,
        "max_retries": 2,
        **overrides,
    }
    return OpenAIProvider(**values)


@pytest.fixture
async def provider(openai_server: OpenAIServer) -> AsyncIterator[OpenAIProvider]:
    provider = provider_for(openai_server)
    yield provider
    await provider.aclose()


@pytest.fixture
def operations() -> Iterator[list[Operation]]:
    """Every telemetry operation emitted during the test."""
    seen: list[Operation] = []
    stop = subscribe(seen.append)
    yield seen
    stop()
