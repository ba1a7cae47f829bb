"""A loopback OpenAI server, the real OpenAI provider on it, and a planner using that provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from cpa_scheduler.llm.openai_provider import OpenAIProvider
from cpa_scheduler.planning import Planner
from cpa_scheduler.settings import Settings
from tests.support.openai_server import OpenAIServer


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as server:
        yield server


@pytest.fixture
async def provider(openai_server: OpenAIServer) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(
        api_key="sk-test",
        model="gpt-test",
        embedding_model="embedding-test",
        base_url=openai_server.base_url,
        timeout_s=10.0,
        max_retries=1,
    )
    yield provider
    await provider.aclose()


def planner_with(provider: OpenAIProvider, **settings: Any) -> Planner:
    return Planner.from_settings(Settings(**settings), provider=provider)


@pytest.fixture
def planner(provider: OpenAIProvider) -> Planner:
    return planner_with(provider)
