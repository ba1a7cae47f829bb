"""The agent directory of the distributed mode: each replica announces its sessions as Redis keys
with a TTL, and cancels for an agent held elsewhere go to the holding replica's control channel.

Presence is soft state: a replica that dies stops renewing its records, which expire after
about three announce intervals. Cancels use pub/sub (at most once): a lost cancel is covered by
the stored cancel request and the attempt's lease. Key names live in cpa_scheduler.redis_keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cpa_scheduler import json_text
from cpa_scheduler.background import Backoff, stop_tasks, wait_event
from cpa_scheduler.domain import AgentState, AttemptRef
from cpa_scheduler.redis_keys import DEFAULT_PREFIX, RedisKeys
from cpa_scheduler.redis_support import ChannelListener, log_background_error
from cpa_scheduler.storage.codec import Data
from cpa_scheduler.telemetry import metrics

from .directory import AgentRecord, announce_records
from .matching import AgentProfile
from .sessions import CancelMessage, ControlMessage, SessionEndMessage, SessionRegistry

log = logging.getLogger(__name__)

# A record lives this many announce intervals: one lost or late announcement does not make an
# agent vanish, a dead replica's agents vanish within a few seconds.
RECORD_TTL_INTERVALS = 3

# The records (JSON) of the agents in tenant set KEYS[1]; ARGV[1] is the tenant's agent key prefix.
# Members whose record expired are removed on the way.
_LIST_SCRIPT = """
local records = {}
for _, agent_id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local record = redis.call('GET', ARGV[1] .. agent_id)
  if record then
    table.insert(records, record)
  else
    redis.call('SREM', KEYS[1], agent_id)
  end
end
return records
"""

# Deletes agent records this replica (ARGV[1]) wrote: KEYS are (agent key, tenant set) pairs,
# ARGV[2..] the agent ids. A record another replica wrote meanwhile (the agent reconnected
# there) is left alone.
_RELEASE_SCRIPT = """
local released = 0
for i = 1, #KEYS, 2 do
  local record = redis.call('GET', KEYS[i])
  if record and cjson.decode(record).replica_id == ARGV[1] then
    redis.call('DEL', KEYS[i])
    redis.call('SREM', KEYS[i + 1], ARGV[(i + 1) / 2 + 1])
    released = released + 1
  end
end
return released
"""


def agent_record_to_data(record: AgentRecord) -> Data:
    profile = record.profile
    return {
        "agent_id": profile.agent_id,
        "tenant": profile.tenant,
        "replica_id": record.replica_id,
        "name": profile.name,
        "version": profile.version,
        "actions": sorted(profile.actions),
        "capabilities": sorted(profile.capabilities),
        "labels": dict(profile.labels),
        "slots": profile.slots,
        "state": record.state.value,
        "running_tasks": record.running_tasks,
        "free_credits": record.free_credits,
        "connect_time": record.connect_time.isoformat(),
        "last_seen_time": record.last_seen_time.isoformat(),
        "session_ids": list(record.session_ids),
    }


def agent_record_from_data(data: Mapping[str, Any]) -> AgentRecord:
    return AgentRecord(
        profile=AgentProfile(
            agent_id=data["agent_id"],
            tenant=data["tenant"],
            name=data["name"],
            version=data["version"],
            actions=frozenset(data["actions"]),
            capabilities=frozenset(data["capabilities"]),
            labels=data["labels"],
            slots=data["slots"],
        ),
        replica_id=data["replica_id"],
        state=AgentState(data["state"]),
        running_tasks=data["running_tasks"],
        free_credits=data["free_credits"],
        connect_time=datetime.fromisoformat(data["connect_time"]),
        last_seen_time=datetime.fromisoformat(data["last_seen_time"]),
        # Absent in records of older replicas: nothing names their sessions.
        session_ids=tuple(data.get("session_ids", ())),
    )


def cancel_to_data(cancel: CancelMessage) -> Data:
    return {
        "attempt": {
            "job_id": cancel.attempt.job_id,
            "task_id": cancel.attempt.task_id,
            "attempt": cancel.attempt.attempt,
        },
        "reason": cancel.reason,
    }


def cancel_from_data(data: Mapping[str, Any]) -> CancelMessage:
    attempt = data["attempt"]
    return CancelMessage(
        attempt=AttemptRef(attempt["job_id"], attempt["task_id"], attempt["attempt"]),
        reason=data["reason"],
    )


def control_to_data(message: ControlMessage) -> Data:
    """A routed control message's body: {"cancel": ...} or {"session_end": ...}."""
    if isinstance(message, CancelMessage):
        return {"cancel": cancel_to_data(message)}
    return {
        "session_end": {
            "job_id": message.job_id,
            "session": message.session,
            "reason": message.reason,
        }
    }


def control_from_data(data: Mapping[str, Any]) -> ControlMessage:
    if "session_end" in data:
        end = data["session_end"]
        return SessionEndMessage(job_id=end["job_id"], session=end["session"], reason=end["reason"])
    return cancel_from_data(data["cancel"])


class RedisAgentDirectory:
    """AgentDirectory on Redis. `start()` subscribes to this replica's control channel (done when
    it returns) and starts announcing; `close()` stops both and withdraws this replica's agents
    (the Redis client belongs to the caller)."""

    def __init__(
        self,
        redis: Redis,
        sessions: SessionRegistry,
        *,
        replica_id: str,
        announce_interval_s: float = 1.0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if announce_interval_s <= 0:
            raise ValueError(f"announce_interval_s must be positive, got {announce_interval_s}")
        self._redis = redis
        self._sessions = sessions
        self._replica_id = replica_id
        self._keys = RedisKeys(prefix)
        self._announce_interval_s = announce_interval_s
        self._record_ttl_ms = round(RECORD_TTL_INTERVALS * announce_interval_s * 1000)
        self._list_script = redis.register_script(_LIST_SCRIPT)
        self._release_script = redis.register_script(_RELEASE_SCRIPT)
        # (tenant, agent id) of the records the last successful announcement wrote.
        self._announced: set[tuple[str, str]] = set()
        self._announce_lock = asyncio.Lock()
        self._announce_wakeup = asyncio.Event()
        self._listener = ChannelListener(
            redis,
            [self._keys.replica_control(replica_id)],
            on_message=self._receive,
            name="control listener",
            task_name="redis-directory-listener",
            logger=log,
        )
        self._announcer: asyncio.Task[None] | None = None
        self.on_cancel: Callable[[ControlMessage, str, str], None] = lambda cancel, t, a: None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._announcer is not None:
            return
        await self._listener.start()
        self._announcer = asyncio.create_task(
            self._announce_forever(), name="redis-directory-announcer"
        )

    async def close(self) -> None:
        if self._announcer is not None:
            await stop_tasks([self._announcer])
            self._announcer = None
        await self._listener.close()
        # Withdraw at once rather than let the records expire: other replicas stop listing the
        # agents (which reconnect elsewhere) and stop routing cancels here.
        try:
            async with self._announce_lock:
                await self._release(self._announced)
                self._announced = set()
        except (RedisError, OSError) as error:
            log.warning("withdrawing this replica's agents failed (they expire): %s", error)

    # -- AgentDirectory -------------------------------------------------------------------------

    def announce_now(self) -> None:
        """Sessions changed: announce soon (never blocks; the announcer does the work)."""
        self._announce_wakeup.set()

    async def announce(self) -> None:
        """Write this replica's sessions and delete the records of sessions that left (what the
        announcer does every interval; raises if Redis fails)."""
        async with self._announce_lock:
            records = announce_records(list(self._sessions), replica_id=self._replica_id)
            current = {(record.tenant, record.agent_id) for record in records}
            await self._release(self._announced - current)
            if records:
                async with self._redis.pipeline(transaction=True) as pipe:
                    for record in records:
                        tenant_agents = self._keys.tenant_agents(record.tenant)
                        pipe.set(
                            self._keys.agent(record.tenant, record.agent_id),
                            json_text.dumps(agent_record_to_data(record)),
                            px=self._record_ttl_ms,
                        )
                        pipe.sadd(tenant_agents, record.agent_id)
                        pipe.pexpire(tenant_agents, self._record_ttl_ms)
                    await pipe.execute()
            self._announced = current

    async def list_agents(self, tenant: str) -> list[AgentRecord]:
        found = await self._list_script(
            keys=[self._keys.tenant_agents(tenant)], args=[self._keys.agent_prefix(tenant)]
        )
        records: list[AgentRecord] = []
        for data in found:
            try:
                record = agent_record_from_data(json.loads(data))
            except (TypeError, ValueError, KeyError):
                log.exception("skipping an unreadable agent record")
                continue
            if record.tenant == tenant:
                records.append(record)
        records.sort(key=lambda record: record.agent_id)
        return records

    async def route_cancel(self, tenant: str, agent_id: str, cancel: ControlMessage) -> bool:
        session = self._sessions.get(tenant, agent_id)
        if session is not None:
            session.deliver(cancel)
            return True
        data = await self._redis.get(self._keys.agent(tenant, agent_id))
        if data is None:
            return False
        holder = agent_record_from_data(json.loads(data)).replica_id
        if holder == self._replica_id:
            return False  # our record of a session that has just ended
        receivers = await self._redis.publish(
            self._keys.replica_control(holder),
            json_text.dumps({"tenant": tenant, "agent_id": agent_id, **control_to_data(cancel)}),
        )
        # Nobody listening: the holder is gone and its records have not expired yet.
        return receivers > 0

    async def is_connected(self, tenant: str, agent_id: str) -> bool:
        if self._sessions.get(tenant, agent_id) is not None:
            return True
        return bool(await self._redis.exists(self._keys.agent(tenant, agent_id)))

    async def held_elsewhere(self, tenant: str, agent_id: str) -> AgentRecord | None:
        data = await self._redis.get(self._keys.agent(tenant, agent_id))
        if data is None:
            return None
        record = agent_record_from_data(json.loads(data))
        return None if record.replica_id == self._replica_id else record

    async def close_elsewhere(self, record: AgentRecord) -> None:
        """At most once, like cancels: a session not closed ends by lease_duration of silence
        (it is half-dead: its agent reconnected here)."""
        message = {
            "tenant": record.tenant,
            "agent_id": record.agent_id,
            "close_session": record.session_ids[0] if record.session_ids else "",
        }
        try:
            await self._redis.publish(
                self._keys.replica_control(record.replica_id), json_text.dumps(message)
            )
        except (RedisError, OSError) as error:
            metrics.redis_error("agent directory")
            log.warning("could not ask replica %s to close a session: %s", record.replica_id, error)

    # -- background -----------------------------------------------------------------------------

    async def _release(self, agents: set[tuple[str, str]]) -> None:
        """Delete the records of `agents` ((tenant, agent id) pairs) that this replica wrote."""
        if not agents:
            return
        pairs = sorted(agents)
        keys: list[str] = []
        for tenant, agent_id in pairs:
            keys += [self._keys.agent(tenant, agent_id), self._keys.tenant_agents(tenant)]
        await self._release_script(
            keys=keys, args=[self._replica_id, *(agent_id for _, agent_id in pairs)]
        )

    async def _announce_forever(self) -> None:
        retry = Backoff()
        while True:
            self._announce_wakeup.clear()
            try:
                await self.announce()
                wait_s = self._announce_interval_s
                retry.reset()
            except Exception as error:
                log_background_error(log, "agent announcer", error, retry.delay_s)
                wait_s = min(retry.take(), self._announce_interval_s)
            await wait_event(self._announce_wakeup, wait_s)

    def _receive(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            tenant, agent_id = message["tenant"], message["agent_id"]
            if "close_session" in message:
                self._close_session(tenant, agent_id, message["close_session"])
                return
            control = control_from_data(message)
        except (TypeError, ValueError, KeyError):
            log.exception("dropping an unreadable control message")
            return
        try:
            self.on_cancel(control, tenant, agent_id)
        except Exception:  # one failing delivery must not stop the listener
            log.exception("delivering a routed cancel to %s failed", agent_id)

    def _close_session(self, tenant: str, agent_id: str, session_id: str) -> None:
        """Another replica took this agent's session over: close ours if it is that one."""
        session = self._sessions.get(tenant, agent_id)
        if session is not None and session.session_id == session_id:
            log.info("agent %s reconnected to another replica: closing its session here", agent_id)
            session.close()
