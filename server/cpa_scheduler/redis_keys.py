"""Every Redis key, channel and consumer-group name of the distributed mode, built from one prefix.

Nothing else in the code base builds a Redis name: read this file to see all that a deployment
keeps in Redis. Redis holds moving work and presence only; PostgreSQL holds the truth, so a
wiped Redis loses nothing (the reconciler publishes QUEUED tasks again, replicas re-announce).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

DEFAULT_PREFIX = "cpa"

# The segment under which the work queue's keys live. Version 2 names streams by the hashed
# requirement key (Requirement.key); version 1 (`queue`) used `tenant|action|caps|labels`, which
# two requirements could share. A replica of this version never reads version 1 keys: the tasks
# they held are still QUEUED in PostgreSQL and the reconciler publishes them again under the new
# names (no version 2 marker exists for them) within about CPA_RECONCILE_INTERVAL_S, so an
# upgrade loses nothing. The old keys can then be deleted (`cpa:queue:*`).
QUEUE_LAYOUT = "queue-v2"

# The consumer group every replica reads each queue stream through (a group name, not a key);
# each replica is one consumer in it, named by its replica id.
QUEUE_CONSUMER_GROUP = "dispatchers"


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The names under one prefix; separate prefixes (deployments, tests) never share a name."""

    prefix: str = DEFAULT_PREFIX

    # -- work queue (queue/redis_queue.py) ------------------------------------------------------

    @property
    def queue_requirements(self) -> str:
        """SORTED SET: every requirement key that was ever published, scored by the time (ms since
        the epoch) of its first publish, so listing is oldest queue first. Written (ZADD NX) by
        every publish, read by requirements(). No expiry: it holds one member per distinct
        requirement (tenant, action, capabilities, labels), a small and bounded set."""
        return f"{self.prefix}:{QUEUE_LAYOUT}:requirements"

    @property
    def queue_requirement_json(self) -> str:
        """HASH: requirement key -> the Requirement as JSON, so requirements() can rebuild the
        objects. Written with queue_requirements, read by requirements(). No expiry."""
        return f"{self.prefix}:{QUEUE_LAYOUT}:requirement-json"

    @property
    def queue_stream_prefix(self) -> str:
        """The start of every queue stream name; Lua scripts append a requirement key to it."""
        return f"{self.prefix}:{QUEUE_LAYOUT}:stream:"

    def queue_stream(self, requirement_key: str) -> str:
        """STREAM: the ready tasks of one requirement, one entry per task (field `task`: the
        QueuedTask as JSON), read through the QUEUE_CONSUMER_GROUP group (created lazily with
        MKSTREAM). XADD by publish and the delayed-task mover, XREADGROUP/XAUTOCLAIM by take,
        XACK+XDEL by ack, so it holds only unacked entries. No expiry (empty when idle)."""
        return f"{self.queue_stream_prefix}{requirement_key}"

    @property
    def queue_delayed(self) -> str:
        """SORTED SET: tasks whose not_before is in the future, scored by not_before (ms since the
        epoch); a member is `<byte length of the requirement key>:<requirement key><task JSON>`.
        ZADD by publish; moved to its stream by the mover script of any replica when due, or
        dropped then if its task was withdrawn meanwhile (its marker is gone). No expiry."""
        return f"{self.prefix}:{QUEUE_LAYOUT}:delayed"

    @property
    def queue_marker_prefix(self) -> str:
        """The start of every queue marker; the mover script appends `job:task:attempt`."""
        return f"{self.prefix}:{QUEUE_LAYOUT}:marker:"

    def queue_marker(self, job_id: str, task_id: str, attempt: int) -> str:
        """STRING: the task (as of `attempt`, its last attempt number) is in the queue, and where:
        its stream entry's id, or "delayed" while in queue_delayed ("1": written by an older
        version, place unknown). Set by publish when absent (a publish that finds it skips the
        task, so the reconciler never duplicates work still queued), and by the mover with the
        new entry id; DEL by ack, and by withdraw (which also deletes the entry it names). No
        expiry; a FLUSHALL wipes it with the entry."""
        return f"{self.queue_marker_prefix}{job_id}:{task_id}:{attempt}"

    @property
    def queue_ready_channel(self) -> str:
        """PUB/SUB CHANNEL: "work may be ready" (payload: the publishing queue instance's token).
        Published by publish and the mover; every replica's queue listens and calls on_ready()."""
        return f"{self.prefix}:queue:ready"

    # -- event fan-out (events/redis_bus.py) ----------------------------------------------------

    @property
    def events_channel(self) -> str:
        """PUB/SUB CHANNEL: committed job events of every job, one message per publish call
        (JSON: origin token and a list of codec.event_to_data dicts). Published by any replica's
        bus, received by every replica's bus for its local watchers. At most once."""
        return f"{self.prefix}:events"

    # -- agent directory (dispatch/redis_directory.py) ------------------------------------------

    def agent_prefix(self, tenant: str) -> str:
        """The start of the record keys of one tenant's agents; Lua scripts append an agent id.
        The tenant's length comes first, so no (tenant, agent id) pair names another's key."""
        return f"{self.prefix}:agent:{len(tenant)}:{tenant}:"

    def agent(self, tenant: str, agent_id: str) -> str:
        """STRING: the AgentRecord (JSON) of a connected agent, naming the replica that holds its
        session; an agent id names an agent within its tenant only. SET by that replica's
        announcer every announce interval with a TTL of ~3 intervals (so a dead replica's agents
        vanish), deleted when the session ends. Read by list_agents (via the tenant set) and
        route_cancel. (Keys of versions before (tenant, agent id) keying, `agent:<id>`, are
        never read and expire within the TTL.)"""
        return f"{self.agent_prefix(tenant)}{agent_id}"

    def tenant_agents(self, tenant: str) -> str:
        """SET: ids of the agents of one tenant that were announced recently; a member whose
        agent key has expired is removed by the next list_agents. SADD by announcers, which
        also renew its TTL (~3 announce intervals, so a tenant without agents vanishes)."""
        return f"{self.prefix}:tenant-agents:{tenant}"

    def replica_control(self, replica_id: str) -> str:
        """PUB/SUB CHANNEL: control messages for the agents one replica holds (a cancel, JSON).
        Published by route_cancel on any replica, received by that replica's directory."""
        return f"{self.prefix}:replica:{replica_id}:control"

    # -- rate limits (security/buckets.py) ------------------------------------------------------

    def rate_bucket(self, scope: str, subject: str) -> str:
        """HASH: the token bucket of one caller (`scope` key, tenant or ip; `subject` the
        credential id, tenant or address, hashed so a name of any length makes a short key):
        v = tokens, t = when last taken from (ms of Redis' clock). Written by the take script of
        any replica; expires once the bucket would be full again, so idle callers leave none."""
        digest = hashlib.sha256(subject.encode()).hexdigest()[:32]
        return f"{self.prefix}:ratelimit:{scope}:{digest}"

    # -- short-term memory (memory/conversation.py) ---------------------------------------------

    def conversation(self, tenant: str, conversation_id: str) -> str:
        """LIST: a conversation's recent entries (JSON), oldest first. RPUSH, trimmed to
        CPA_MEMORY_CONVERSATION_MAX_ENTRIES and its TTL renewed (CPA_MEMORY_CONVERSATION_TTL_S)
        by every append, so an idle conversation vanishes. Tenant and id are hashed together
        (a NUL between them: no two pairs share a key) so names of any length make short keys."""
        digest = hashlib.sha256(f"{tenant}\0{conversation_id}".encode()).hexdigest()[:32]
        return f"{self.prefix}:conversation:{digest}"
