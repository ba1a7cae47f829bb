"""Context memory in the distributed mode, one replica in process on the real PostgreSQL and
Redis: a finished free-text job is remembered in PostgreSQL (the float4[] fallback) and found by
a paraphrase; a LAM conversation and its job's result are in Redis, tenant-scoped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cpa.lam.v1 import lam_message_pb2 as lam
from cpa_client import SchedulerClient
from cpa_scheduler.memory.conversation import RedisConversationMemory
from cpa_scheduler.memory.postgres_memory import PostgresMemory
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import migrate

from .conftest import EVENT_TIMEOUT_S, Agents, Scheduler, finished
from .test_memory import _CATALOG


@pytest.fixture
def scheduler_settings(
    tmp_path: Path, postgres_database: str, redis_server_url: str, redis_prefix: str
) -> Settings:
    migrate(postgres_database)
    catalog = tmp_path / "intents.yaml"
    catalog.write_text(_CATALOG)
    return Settings(
        data_dir=tmp_path / "data",
        intents_path=catalog,
        database_url=postgres_database,
        redis_url=redis_server_url,
        redis_key_prefix=redis_prefix,
        page_token_secrets="0" * 64,
    )


async def test_jobs_and_conversations_are_remembered_in_postgres_and_redis(
    scheduler: Scheduler, client: SchedulerClient, agents: Agents
) -> None:
    memory = scheduler.server.memory
    assert memory is not None
    assert isinstance(memory.semantic, PostgresMemory)
    assert isinstance(memory.conversations, RedisConversationMemory)
    await agents.start("worker")
    reply = await client.send_message(
        lam.LamMessage(
            id="m-1",
            sender="agent://ops-bot",
            performative=lam.PERFORMATIVE_REQUEST,
            correlation=lam.Correlation(conversation_id="conv-9"),
            request=lam.RequestBody(text="archive the weekly sales reports"),
        )
    )
    job_id = reply.agree.job_id
    await finished(client, job_id)
    await asyncio.wait_for(memory.recorder.drained(), EVENT_TIMEOUT_S)
    tenant = scheduler.server.settings.default_tenant

    hits = await client.search_memory("sales reports of the week: archive", k=1)
    entries = await memory.conversations.recent(tenant, "conv-9")

    assert [h.record.job_id for h in hits] == [job_id]
    assert [e.role for e in entries] == ["user", "scheduler", "result"]
    assert entries[-1].text == f"job {job_id} SUCCEEDED"
    assert await memory.conversations.recent("someone-else", "conv-9") == []
    assert await memory.semantic.search("someone-else", "archive the weekly sales reports") == []
