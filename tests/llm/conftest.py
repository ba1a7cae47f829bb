"""The LLM tests' loopback OpenAI server (tests/support/openai_server.py); other suites make
the same three-line fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.openai_server import OpenAIServer


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as server:
        yield server
