"""The memory of a replica, built from the settings: in process and sqlite-vec in the embedded
mode, Redis and PostgreSQL in the distributed one, and the recorder of finished jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from cpa_scheduler.background import stop_tasks
from cpa_scheduler.llm import LLMProvider
from cpa_scheduler.redis_keys import RedisKeys
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage.interface import Store

from .conversation import LocalConversationMemory, RedisConversationMemory
from .embedder import Embedder, ProviderEmbedder, lexical_embedder
from .interface import ConversationMemory, SemanticMemory
from .recorder import JobRecorder
from .records import Retention
from .sweeper import ExpirySweeper

# The embedded store's file under the data directory (its own: the job store's schema and
# backups stay free of an extension's virtual tables).
MEMORY_FILE = "memory.sqlite3"


@dataclass(slots=True)
class Memory:
    conversations: ConversationMemory
    semantic: SemanticMemory
    recorder: JobRecorder
    sweeper: ExpirySweeper
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.recorder.run(), name="memory-recorder"),
            asyncio.create_task(self.sweeper.run(), name="memory-sweeper"),
        ]

    async def close(self) -> None:
        if self._tasks:
            await stop_tasks(self._tasks)
        for close in reversed(self._closers):
            await close()


async def open_memory(
    settings: Settings,
    store: Store,
    *,
    redis: Redis | None,
    provider: LLMProvider | None = None,
    embedder: Embedder | None = None,
) -> Memory:
    """The replica's memory; `embedder` defaults to the one the settings name (with
    CPA_MEMORY_EMBEDDER=provider, `provider`'s: the replica's one client of the model)."""
    embedder = embedder or settings_embedder(settings, provider)
    retention = Retention.of_days(settings.memory_retention_days, settings.memory_max_per_tenant)
    closers: list[Callable[[], Awaitable[None]]] = []
    conversations: ConversationMemory
    semantic: SemanticMemory
    if settings.database_url:
        from cpa_scheduler.storage.postgres_connections import open_pool

        from .postgres_memory import PostgresMemory

        pool = await open_pool(settings.database_url, min_size=1, max_size=4)
        closers.append(pool.close)
        semantic = await PostgresMemory.open(
            pool,
            embedder,
            retention,
            pgvector=settings.memory_pgvector,
            ef_search=settings.memory_pgvector_ef_search,
        )
    else:
        from .sqlite_vec_memory import SqliteVecMemory

        sqlite_memory = SqliteVecMemory(settings.data_dir / MEMORY_FILE, embedder, retention)
        closers.append(sqlite_memory.close)
        semantic = sqlite_memory
    if redis is not None:
        conversations = RedisConversationMemory(
            redis,
            RedisKeys(settings.redis_key_prefix),
            ttl_s=settings.memory_conversation_ttl_s,
            max_entries=settings.memory_conversation_max_entries,
        )
    else:
        conversations = LocalConversationMemory(
            ttl_s=settings.memory_conversation_ttl_s,
            max_entries=settings.memory_conversation_max_entries,
            max_conversations=settings.memory_conversation_max_per_tenant,
        )
    recorder = JobRecorder(
        store=store,
        memory=semantic,
        conversations=conversations,
        max_queued=settings.memory_recorder_queue,
    )
    sweeper = ExpirySweeper(
        semantic,
        interval_s=settings.memory_sweep_interval_s,
        batch=settings.memory_sweep_batch,
    )
    return Memory(conversations, semantic, recorder, sweeper, closers)


def settings_embedder(settings: Settings, provider: LLMProvider | None) -> Embedder:
    """CPA_MEMORY_EMBEDDER: the local lexical embedder, or `provider`'s (the configured LLM
    provider)."""
    dimensions = settings.memory_embedding_dimensions
    if settings.memory_embedder == "lexical":
        return lexical_embedder(dimensions)
    if provider is None:
        raise RuntimeError("CPA_MEMORY_EMBEDDER=provider needs CPA_LLM_PROVIDER (docs/LLM.md)")
    return ProviderEmbedder(provider, dimensions=dimensions)
