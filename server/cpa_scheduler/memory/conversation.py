"""Short-term memory: a conversation's recent entries, forgotten `ttl_s` after its last entry.

In process for the embedded mode (bounded per conversation and per tenant, so a chatty caller
cannot grow the server's memory without end); Redis for the distributed mode, where every
replica must see the same conversation (a list per conversation, trimmed and expiring).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from redis.asyncio import Redis

from cpa_scheduler.redis_keys import RedisKeys
from cpa_scheduler.telemetry import timed

from .interface import ConversationEntry


def _stamped(entry: ConversationEntry) -> ConversationEntry:
    return entry if entry.at_unix_s else dataclasses.replace(entry, at_unix_s=time.time())


class _Conversation:
    __slots__ = ("entries", "expires_at")

    def __init__(self, max_entries: int) -> None:
        self.entries: deque[ConversationEntry] = deque(maxlen=max_entries)
        self.expires_at = 0.0


class LocalConversationMemory:
    """Conversations in this process. Each keeps its last `max_entries`; a tenant keeps its
    `max_conversations` most recently used (the oldest is dropped for a new one). `clock` is
    monotonic seconds (tests pass their own to expire entries without waiting)."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int = 50,
        max_conversations: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._max_conversations = max_conversations
        self._clock = clock
        # Per tenant, least recently appended first: the expired ones are always at the front.
        self._tenants: dict[str, OrderedDict[str, _Conversation]] = {}

    def _live(self, tenant: str) -> OrderedDict[str, _Conversation]:
        conversations = self._tenants.setdefault(tenant, OrderedDict())
        now = self._clock()
        while conversations and next(iter(conversations.values())).expires_at <= now:
            conversations.popitem(last=False)
        return conversations

    async def append(self, tenant: str, conversation_id: str, entry: ConversationEntry) -> None:
        with timed("memory_query", "conversation_append", store="local"):
            conversations = self._live(tenant)
            conversation = conversations.pop(conversation_id, None)
            if conversation is None:
                conversation = _Conversation(self._max_entries)
                while len(conversations) >= self._max_conversations:
                    conversations.popitem(last=False)
            conversation.entries.append(_stamped(entry))
            conversation.expires_at = self._clock() + self._ttl_s
            conversations[conversation_id] = conversation

    async def recent(
        self, tenant: str, conversation_id: str, *, limit: int = 20
    ) -> list[ConversationEntry]:
        with timed("memory_query", "conversation_recent", store="local") as timing:
            conversation = self._live(tenant).get(conversation_id)
            entries = list(conversation.entries)[-limit:] if conversation and limit > 0 else []
            timing.counts["results"] = len(entries)
            return entries


def _entry_json(entry: ConversationEntry) -> str:
    return json.dumps(
        {"role": entry.role, "text": entry.text, "data": dict(entry.data), "at": entry.at_unix_s},
        separators=(",", ":"),
    )


def _entry_of(raw: bytes | str) -> ConversationEntry:
    data = json.loads(raw)
    return ConversationEntry(
        role=data["role"], text=data["text"], data=data["data"], at_unix_s=data["at"]
    )


class RedisConversationMemory:
    """Conversations in Redis: one list per conversation, trimmed to `max_entries` and expiring
    `ttl_s` after its last entry (Redis's own TTL, so no replica has to sweep)."""

    def __init__(
        self, redis: Redis, keys: RedisKeys, *, ttl_s: float, max_entries: int = 50
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._max_entries = max_entries

    async def append(self, tenant: str, conversation_id: str, entry: ConversationEntry) -> None:
        key = self._keys.conversation(tenant, conversation_id)
        with timed("memory_query", "conversation_append", store="redis"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, _entry_json(_stamped(entry)))
                pipe.ltrim(key, -self._max_entries, -1)
                pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()

    async def recent(
        self, tenant: str, conversation_id: str, *, limit: int = 20
    ) -> list[ConversationEntry]:
        if limit <= 0:
            return []
        key = self._keys.conversation(tenant, conversation_id)
        with timed("memory_query", "conversation_recent", store="redis") as timing:
            raw = await self._redis.lrange(key, -limit, -1)
            timing.counts["results"] = len(raw)
            return [_entry_of(item) for item in raw]
