"""Long-term memory, the same behaviour from both stores: sqlite-vec (embedded) and PostgreSQL
without pgvector (distributed; docs/adr/0004-memory-vectors-in-postgresql.md)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import pytest

from cpa_scheduler.llm.hashing_embedder import HashingEmbedder
from cpa_scheduler.memory.embedder import unit
from cpa_scheduler.memory.interface import MemoryRecord
from cpa_scheduler.memory.postgres_memory import PostgresMemory
from cpa_scheduler.telemetry import Operation, subscribe
from tests.memory.conftest import Semantic

INVOICE_PLAN = (
    {"id": "open", "action": "navigate", "params": {"url": "https://portal.example/invoices"}},
    {"id": "mail", "action": "send_mail", "depends_on": ["open"]},
)


def record(tenant: str, text: str, **fields: object) -> MemoryRecord:
    return MemoryRecord(**{"memory_id": "", "tenant": tenant, "text": text, **fields})  # type: ignore[arg-type]


async def test_a_paraphrased_request_finds_the_plan_that_succeeded_first(
    semantic: Semantic,
) -> None:
    await semantic.put(record("a", "check the weather forecast for Berlin tomorrow"))
    kept = await semantic.put(
        record(
            "a",
            "download the March invoice from the supplier portal and mail it to accounting",
            plan=INVOICE_PLAN,
            job_id="job-1",
        )
    )
    await semantic.put(record("a", "restart the build agent on host seven"))

    hits = await semantic.search("a", "mail accounting the supplier invoice for March", k=3)

    assert hits[0].record == kept
    assert [dict(step) for step in hits[0].record.plan] == [dict(step) for step in INVOICE_PLAN]
    assert hits[0].score > hits[1].score
    assert len(hits) == 3


async def test_a_tenant_never_retrieves_another_tenants_records(semantic: Semantic) -> None:
    # Tenant b holds many vectors identical to the query; a's k hits still all come from a.
    for n in range(30):
        await semantic.put(record("b", "download the invoice", job_id=f"b-{n}"))
    for n in range(3):
        await semantic.put(record("a", f"unrelated chore number {n}", job_id=f"a-{n}"))

    hits = await semantic.search("a", "download the invoice", k=3)

    assert [hit.record.tenant for hit in hits] == ["a", "a", "a"]
    assert await semantic.search("c", "download the invoice", k=5) == []


async def test_the_outcome_filter_keeps_only_that_outcome(semantic: Semantic) -> None:
    await semantic.put(record("a", "send the weekly report", outcome="succeeded"))
    failed = await semantic.put(
        record("a", "send the weekly report now", outcome="failed", failure_reason="SMTP down")
    )

    hits = await semantic.search("a", "send the weekly report", k=5, outcome="failed")

    assert [hit.record for hit in hits] == [failed]
    assert hits[0].record.failure_reason == "SMTP down"


async def test_putting_a_record_again_under_its_id_replaces_it(semantic: Semantic) -> None:
    await semantic.put(record("a", "archive old mail", memory_id="job:1", outcome="failed"))
    await semantic.put(record("a", "archive old mail", memory_id="job:1", outcome="succeeded"))

    hits = await semantic.search("a", "archive old mail", k=10)

    assert [(hit.record.memory_id, hit.record.outcome) for hit in hits] == [("job:1", "succeeded")]


@pytest.mark.parametrize("k", [0, 101])
async def test_k_outside_1_to_100_is_refused(semantic: Semantic, k: int) -> None:
    with pytest.raises(ValueError, match="k must be"):
        await semantic.search("a", "anything", k=k)


async def test_a_record_without_text_is_refused(semantic: Semantic) -> None:
    with pytest.raises(ValueError, match="needs text"):
        await semantic.put(record("a", "   "))


async def test_every_put_and_search_is_timed(semantic: Semantic) -> None:
    seen: list[Operation] = []
    stop = subscribe(seen.append)
    try:
        await semantic.put(record("a", "water the plants"))
        await semantic.search("a", "plants", k=2)
    finally:
        stop()

    assert [(op.kind, op.name, op.outcome) for op in seen] == [
        ("memory_query", "put", "ok"),
        ("memory_query", "search", "ok"),
    ]
    assert seen[1].counts["results"] == 1


async def test_a_text_without_words_finds_nothing(semantic: Semantic) -> None:
    await semantic.put(record("a", "water the plants"))

    assert await semantic.search("a", "!!! ???", k=5) == []


class WordsEmbedder:
    """One component per word (a sparse query: PostgreSQL's sparse plan)."""

    dimensions = 64

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.vector(text) for text in texts]

    def vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        for word in text.split():
            vector[zlib.crc32(word.encode()) % self.dimensions] += 1.0
        return vector


class DenseEmbedder(WordsEmbedder):
    """The same with every component set: a provider's dense embedding (the full plan)."""

    def vector(self, text: str) -> list[float]:
        return [x + 0.01 for x in super().vector(text)]


async def test_postgres_ranks_dense_and_sparse_queries_by_the_exact_cosine(
    postgres_memory: PostgresMemory,
) -> None:
    # Dense vectors stored; then a dense query (the full plan) and a sparse one (the plan that
    # reads only the query's non-zero components) must both rank by the exact cosine.
    dense = PostgresMemory(postgres_memory._pool, DenseEmbedder())
    texts = ["download the invoice", "mail the invoice to accounting", "restart the agent now"]
    for text in texts:
        await dense.put(record("a", text))
    query = "invoice for accounting"

    sparse = PostgresMemory(postgres_memory._pool, WordsEmbedder())
    for store, embedder in ((dense, DenseEmbedder()), (sparse, WordsEmbedder())):
        hits = await store.search("a", query, k=3)

        scores = {t: _cosine(DenseEmbedder().vector(t), embedder.vector(query)) for t in texts}
        assert [hit.record.text for hit in hits] == sorted(texts, key=lambda t: -scores[t])
        assert [hit.score for hit in hits] == pytest.approx(
            sorted(scores.values(), reverse=True), abs=1e-5
        )


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(unit(a), unit(b), strict=True))


async def test_scores_are_the_exact_cosine_in_both_stores(semantic: Semantic) -> None:
    texts = ["download the invoice", "mail the invoice to accounting", "restart the agent now"]
    for text in texts:
        await semantic.put(record("a", text))
    query = "invoice for accounting"
    vectors = HashingEmbedder(64)  # the stores' embedder in these tests (conftest)

    hits = await semantic.search("a", query, k=3)

    scores = {t: _cosine(vectors.vector(t), vectors.vector(query)) for t in texts}
    assert [hit.record.text for hit in hits] == sorted(texts, key=lambda t: -scores[t])
    assert [hit.score for hit in hits] == pytest.approx(
        sorted(scores.values(), reverse=True), abs=1e-5
    )
