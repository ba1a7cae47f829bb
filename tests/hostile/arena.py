"""The arena of the hostile suite: a real scheduler (`cpa serve`) and a real agent as processes,
a normal job that keeps running on that agent, and the jobs of two hostile tenants whose ids the
hostile requests aim at. The scheduler runs embedded (SQLite, in-process queue and bus) or
distributed (PostgreSQL and Redis, as tests/fixtures/cluster.py starts replicas): the two stores
refuse different things (PostgreSQL's text cannot hold NUL), and the server's answers must not
depend on which one it runs on.

The hostile client runs synchronously in the test thread; server and agent run in processes of
their own, so the test's Python work (drawing examples) cannot delay their heartbeats, and a
stall the suite sees is the server's own.

Tenants: scheduler calls name theirs in the `x-cpa-tenant` metadata (none: the server's default
tenant); agents name theirs in the hello. The normal job lives in tenant NORMAL_TENANT, which
the hostile scheduler calls never use (a CancelJob there would be a legitimate cancel); hostile
agent streams do use it, to forge reports of the normal job's attempt. The normal job's ToDo
requires a label with a secret value only the real agent has, so no hostile stream is ever
assigned it legitimately.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from cpa.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from cpa.common.v1 import todo_pb2
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.scheduler.v1 import (
    job_event_pb2,
    job_pb2,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
)
from tests.fixtures.cluster import AgentProcess, Backends, Cluster, Replica

from .strategies import KNOWN

TENANT_KEY = "x-cpa-tenant"
ACT_AS_KEY = "x-cpa-act-as-tenant"
# The server's default tenant (Settings.default_tenant): callers and agents that name none.
DEFAULT_TENANT = "default"
NORMAL_TENANT = "normal"
NORMAL_AGENT_ID = "normal-agent"
NORMAL_TASK_ID = "wait"
NORMAL_WAIT_S = 3.0
HOSTILE_TENANTS = ("hostile-a", "hostile-b")
# Short: a stall of the server's loop longer than this shows as a LOST attempt.
LEASE_S = "2"
HEARTBEAT_S = "0.25"
MAX_REQUEST_BYTES = 256 * 1024
CALL_TIMEOUT_S = 15.0

Metadata = tuple[tuple[str, str], ...]


@dataclass
class ArenaAuth:
    """The arena's own credential while authentication is on (running_arena(auth=True)): the
    local admin key, acting for the tenant a call names. Empty: authentication is off."""

    admin_key: str = ""


AUTH = ArenaAuth()


def tenant_metadata(tenant: str | None) -> Metadata:
    """The metadata of the arena's own calls for `tenant` (None: the default tenant)."""
    if not AUTH.admin_key:
        return () if tenant is None else ((TENANT_KEY, tenant),)
    acting = () if tenant is None else ((ACT_AS_KEY, tenant),)
    return (("authorization", f"Bearer {AUTH.admin_key}"), *acting)


def wait_todo(task_id: str, seconds: float, labels: dict[str, str]) -> todo_pb2.ToDo:
    params = struct_pb2.Struct()
    params.update({"seconds": seconds})
    return todo_pb2.ToDo(
        id=task_id,
        action=todo_pb2.ACTION_TYPE_CUSTOM,
        custom_action="wait",
        params=params,
        required_labels=labels,
    )


@dataclass
class NormalRun:
    """One normal job, as it ended."""

    job: job_pb2.Job
    events: list[job_event_pb2.JobEvent]


@dataclass
class NormalWork:
    """Runs normal jobs one after the other on the real agent until stopped."""

    stub: scheduler_service_pb2_grpc.SchedulerServiceStub
    labels: dict[str, str]
    runs: list[NormalRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="normal-work", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Lets the running job end, then stops (bounded by the watch deadline)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=4 * CALL_TIMEOUT_S)

    def _loop(self) -> None:
        metadata = tenant_metadata(NORMAL_TENANT)
        number = 0
        while not self._stop.is_set():
            number += 1
            try:
                spec = job_pb2.JobSpec(
                    todos=job_pb2.TodoList(
                        todos=[wait_todo(NORMAL_TASK_ID, NORMAL_WAIT_S, self.labels)]
                    )
                )
                created = self.stub.ScheduleJob(
                    scheduler_service_pb2.ScheduleJobRequest(
                        request_id=f"normal-{number}", spec=spec
                    ),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_S,
                )
                job_id = created.job.job_id
                KNOWN.strings.append(job_id)
                KNOWN.attempts.append((job_id, NORMAL_TASK_ID, 1))
                events = [
                    response.event
                    for response in self.stub.WatchJob(
                        scheduler_service_pb2.WatchJobRequest(job_id=job_id),
                        metadata=metadata,
                        timeout=NORMAL_WAIT_S + 4 * CALL_TIMEOUT_S,
                    )
                    if response.HasField("event")  # not a heartbeat
                ]
                job = self.stub.GetJob(
                    scheduler_service_pb2.GetJobRequest(job_id=job_id),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_S,
                ).job
                self.runs.append(NormalRun(job=job, events=events))
            except grpc.RpcError as error:  # noted; the next normal job starts at once
                self.errors.append(f"normal job {number}: {error.code().name} {error.details()}")


@dataclass
class Arena:
    """The processes, a channel to the server, and what the normal work did."""

    cluster: Cluster
    replica: Replica
    agent: AgentProcess
    data_dir: Path
    channel: grpc.Channel
    normal: NormalWork
    database_url: str = ""
    """The PostgreSQL database of a distributed arena; empty: embedded (SQLite under data_dir)."""

    @property
    def target(self) -> str:
        return self.replica.target

    @property
    def scheduler(self) -> scheduler_service_pb2_grpc.SchedulerServiceStub:
        return scheduler_service_pb2_grpc.SchedulerServiceStub(self.channel)

    @property
    def executor(self) -> executor_service_pb2_grpc.ExecutorServiceStub:
        return executor_service_pb2_grpc.ExecutorServiceStub(self.channel)

    def server_log(self) -> str:
        return self.replica.log.read_text(errors="replace")

    def agent_sessions(self) -> list[str]:
        """The agent's log lines that say it was welcomed (one per session)."""
        return [
            line for line in self.agent.log_lines() if re.search(r"connected to \S+: session", line)
        ]


def _wait_for_agent(stub: scheduler_service_pb2_grpc.SchedulerServiceStub) -> None:
    deadline = time.monotonic() + 30
    request = scheduler_service_pb2.ListAgentsRequest()
    while time.monotonic() < deadline:
        agents = stub.ListAgents(
            request, metadata=tenant_metadata(NORMAL_TENANT), timeout=CALL_TIMEOUT_S
        ).agents
        if any(agent.agent_id == NORMAL_AGENT_ID for agent in agents):
            return
        time.sleep(0.05)  # polling a condition with a deadline, not synchronisation by sleep
    raise AssertionError("the normal agent did not connect within 30s")


# The seeded jobs as (job id, tenant).
SEEDED: list[tuple[str, str]] = []


def seeded_jobs() -> list[tuple[str, str]]:
    return list(SEEDED)


def _seed_hostile_jobs(stub: scheduler_service_pb2_grpc.SchedulerServiceStub) -> None:
    """Jobs of the hostile tenants for the requests to aim at: each needs a label no agent has
    and fails within a second (schedule-to-start timeout), so watching one ends soon even after
    a hostile RetryJob re-queued it."""
    for tenant in HOSTILE_TENANTS:
        for number in range(2):
            todo = todo_pb2.ToDo(
                id="t1",
                action=todo_pb2.ACTION_TYPE_CUSTOM,
                custom_action="noop",
                required_labels={"nobody": "has-this"},
            )
            todo.schedule_to_start_timeout.FromMilliseconds(500)
            job = stub.ScheduleJob(
                scheduler_service_pb2.ScheduleJobRequest(
                    request_id=f"seed-{number}",
                    spec=job_pb2.JobSpec(
                        todos=job_pb2.TodoList(todos=[todo]), labels={"team": "ops"}
                    ),
                ),
                metadata=tenant_metadata(tenant),
                timeout=CALL_TIMEOUT_S,
            ).job
            KNOWN.strings.append(job.job_id)
            KNOWN.attempts.append((job.job_id, "t1", 1))
            SEEDED.append((job.job_id, tenant))
        page = stub.ListJobs(
            scheduler_service_pb2.ListJobsRequest(page_size=1),
            metadata=tenant_metadata(tenant),
            timeout=CALL_TIMEOUT_S,
        )
        if page.next_page_token:
            KNOWN.strings.append(page.next_page_token)  # a borrowed page token


def _agent_token(channel: grpc.Channel) -> str:
    """An agent token of the normal tenant allowing any action and capability."""
    request = admin_service_pb2.CreateApiKeyRequest(
        roles=[admin_service_pb2.ROLE_AGENT], agent_actions=["*"], agent_capabilities=["*"]
    )
    made = admin_service_pb2_grpc.AdminServiceStub(channel).CreateApiKey(
        request, metadata=tenant_metadata(NORMAL_TENANT), timeout=CALL_TIMEOUT_S
    )
    return str(made.secret)


@contextlib.contextmanager
def running_arena(
    tmp_path: Path, *, auth: bool = False, backends: Backends | None = None
) -> Iterator[Arena]:
    """With `auth`, the server authenticates every call: the arena's own calls use the local
    admin key (AUTH), the normal agent an agent token of its tenant. With `backends` (a
    migrated database and a Redis prefix), the server runs distributed on them; else embedded."""
    data_dir = tmp_path / "data"
    cluster = Cluster(
        # Embedded: SQLite under CPA_DATA_DIR, in-process queue and bus.
        database_url=backends.database_url if backends else "",
        redis_url=backends.redis_url if backends else "",
        redis_prefix=backends.redis_prefix if backends else "",
        settings={
            "CPA_DATA_DIR": str(data_dir),
            "CPA_LEASE_DURATION_S": LEASE_S,
            "CPA_HEARTBEAT_INTERVAL_S": HEARTBEAT_S,
            "CPA_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
            "CPA_LOG_LEVEL": "INFO",
            **({"CPA_INSECURE_LOCAL": "false"} if auth else {}),
        },
    )
    channel: grpc.Channel | None = None
    normal: NormalWork | None = None
    AUTH.admin_key = ""
    try:
        replica = cluster.replica("hostile-server")
        channel = grpc.insecure_channel(replica.target)
        agent_settings = {"CPA_AGENT_TENANT": NORMAL_TENANT}
        if auth and backends:
            AUTH.admin_key = cluster.bootstrap_admin_key()
        elif auth:
            # Made by the first start of the embedded server, next to its data.
            AUTH.admin_key = (data_dir / "local-admin.key").read_text().strip()
            agent_settings["CPA_AGENT_TOKEN"] = _agent_token(channel)
        secret = secrets.token_hex(8)
        labels = {"lane": secret}
        agent = cluster.agent(
            NORMAL_AGENT_ID,
            replica,
            labels=f'{{"lane": "{secret}"}}',
            slots=2,
            log_level="INFO",
            **agent_settings,
        )
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        KNOWN.strings[:] = [NORMAL_AGENT_ID, NORMAL_TASK_ID, "t1", *HOSTILE_TENANTS, NORMAL_TENANT]
        KNOWN.attempts[:] = []
        SEEDED[:] = []
        _wait_for_agent(stub)
        _seed_hostile_jobs(stub)
        normal = NormalWork(stub=stub, labels=labels)
        normal.start()
        yield Arena(
            cluster=cluster,
            replica=replica,
            agent=agent,
            data_dir=data_dir,
            channel=channel,
            normal=normal,
            database_url=cluster.database_url,
        )
    finally:
        if normal is not None:
            normal.stop()
        if channel is not None:
            channel.close()
        cluster.stop_all(keep_logs=False)
        AUTH.admin_key = ""


def running_normal_attempts() -> Sequence[tuple[str, str, int]]:
    return [a for a in KNOWN.attempts if a[1] == NORMAL_TASK_ID]
