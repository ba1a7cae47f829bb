"""A loopback OpenAI server, the real OpenAI provider on it, a planner using that provider, and
a real scheduler configured with that provider (with an SDK client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cpa_scheduler.llm.openai_provider import OpenAIProvider
from cpa_scheduler.planning import Planner
from cpa_scheduler.settings import Settings
from tests.e2e.conftest import HEARTBEAT_S, LEASE_S, client, scheduler
from tests.support.openai_server import OpenAIServer

# The e2e suite's scheduler and SDK client, here on the scheduler_settings below.
__all__ = ["client", "scheduler"]


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


@pytest.fixture
def scheduler_settings(tmp_path: Path, openai_server: OpenAIServer) -> Settings:
    """A scheduler's settings with the OpenAI provider on the loopback server (its key in a
    file, no SDK retries: a test scripts every answer), one repair round, the e2e suite's
    short leases. A module overrides the fixture to change them."""
    key = tmp_path / "openai.key"
    key.write_text("sk-test\n")
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=LEASE_S,
        heartbeat_interval_s=HEARTBEAT_S,
        llm_provider="openai",
        llm_base_url=openai_server.base_url,
        llm_api_key_file=key,
        llm_max_retries=0,
        planning_llm_repair_attempts=1,
    )
