"""Context memory: the conversation's short-term entries and the long-term semantic memory."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

# hnsw.ef_search a pgvector search uses at least (the store raises it to 20·k), and pgvector's
# maximum. 400 found 0.976 of the exact top 5 at 10 000 memories, 0.86 at 100 000 (1000: 0.94,
# at twice the latency): docs/PERFORMANCE.md.
PGVECTOR_EF_SEARCH_DEFAULT = 400
PGVECTOR_EF_SEARCH_MAX = 1000


class MemorySettings(BaseSettings):
    """Memory settings (CPA_*; see Settings and docs/MEMORY.md)."""

    memory_enabled: bool = Field(
        default=True,
        description="Remember finished jobs and serve SearchMemory/PutMemory/DeleteMemories; false "
        "turns them off (the RPCs answer FAILED_PRECONDITION, MEMORY_DISABLED).",
    )
    memory_conversation_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="A conversation's short-term entries are forgotten this long after its last "
        "entry (in process in the embedded mode, a Redis TTL in the distributed one).",
    )
    memory_conversation_max_entries: int = Field(
        default=50, ge=1, description="Most recent entries one conversation keeps."
    )
    memory_conversation_max_per_tenant: int = Field(
        default=1000,
        ge=1,
        description="Embedded mode: most conversations a tenant keeps in process; a new one "
        "drops the least recently used.",
    )
    memory_embedder: Literal["lexical", "provider"] = Field(
        default="lexical",
        description="What embeds memory's texts: `lexical` (local, deterministic, words and "
        "trigrams hashed; no model) or `provider` (CPA_LLM_PROVIDER's embeddings).",
    )
    memory_embedding_dimensions: int = Field(
        default=256,
        ge=8,
        le=4096,
        description="Width of the memory's vectors: the embedder's output size (with "
        "`provider`, CPA_LLM_EMBEDDING_DIMENSION must give it). The embedded store's file is "
        "made for one width and refuses another.",
    )
    memory_pgvector: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Distributed mode: search long-term memory by pgvector's HNSW index "
        "(`auto`: where migration 0012 found the extension; `on`: or refuse to start; `off`: "
        "always the exact float4[] search).",
    )
    memory_pgvector_ef_search: int = Field(
        default=PGVECTOR_EF_SEARCH_DEFAULT,
        ge=1,
        le=PGVECTOR_EF_SEARCH_MAX,
        description="Distributed mode with pgvector: the least hnsw.ef_search a search uses "
        "(candidates one HNSW scan considers before the tenant filter; raised to 20·k, at most "
        "1000). Higher finds more of the exact nearest, slower.",
    )
    memory_text_max_bytes: int = Field(
        default=8192,
        ge=1,
        description="Longest text (UTF-8 bytes) PutMemory stores or SearchMemory searches for; "
        "longer is INVALID_ARGUMENT (TEXT_TOO_LONG).",
    )
    memory_retention_days: float = Field(
        default=180.0,
        ge=0,
        description="Long-term memories older than this are no longer returned by a search and "
        "are deleted by the periodic sweep; 0 keeps them until deleted or dropped by the cap.",
    )
    memory_max_per_tenant: int = Field(
        default=100_000,
        ge=0,
        description="Most long-term memories a tenant keeps; a put beyond it drops the tenant's "
        "oldest in the same transaction. 0: no cap.",
    )
    memory_sweep_interval_s: float = Field(
        default=300.0,
        gt=0,
        description="How often each replica deletes expired long-term memories "
        "(CPA_MEMORY_RETENTION_DAYS).",
    )
    memory_sweep_batch: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most expired memories one delete statement of the sweep removes (short "
        "transactions); a sweep repeats batches until none is left.",
    )
    memory_recorder_queue: int = Field(
        default=1000,
        ge=1,
        description="Finished jobs waiting to be remembered; beyond, an ending is dropped "
        "(logged), never the job slowed.",
    )
