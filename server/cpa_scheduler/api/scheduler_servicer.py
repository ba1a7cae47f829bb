"""SchedulerService: thin handlers that validate, call the orchestrator and convert back."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import grpc.aio
from google.protobuf.message import Message

from cpa.scheduler.v1 import (
    audit_pb2,
    callback_pb2,
    job_pb2,
    memory_pb2,
    scheduler_service_pb2_grpc,
)
from cpa.scheduler.v1 import scheduler_service_pb2 as pb
from cpa_scheduler.artifacts import Artifacts
from cpa_scheduler.audit import AuditLog
from cpa_scheduler.callbacks.address_guard import AddressPolicy, check_callback_url
from cpa_scheduler.callbacks.outbox import CallbackOutbox
from cpa_scheduler.dispatch import Requirement, SessionRegistry
from cpa_scheduler.dispatch.directory import AgentDirectory
from cpa_scheduler.domain import (
    JOB_STATE_MACHINE,
    DomainError,
    InvalidArgument,
    Job,
    JobFilter,
    JobOptions,
    JobSource,
    JobState,
    PagePosition,
    Reason,
    RequestIdReused,
    Task,
    echo,
)
from cpa_scheduler.events import EventBus
from cpa_scheduler.orchestration import Orchestrator, Submission
from cpa_scheduler.planning import PlanRequest
from cpa_scheduler.policy.redaction import redact_job
from cpa_scheduler.security.credential_watch import CredentialWatch, until_credential_ends
from cpa_scheduler.settings import Settings

from . import artifact_calls, audit_calls, callback_calls, convert, job_views
from .artifact_convert import artifact_to_proto
from .audit_calls import audited, current_call
from .call_context import idempotency_key, keyed_id, tenant_of
from .errors import translate_errors
from .ids import bounded_id, required_id
from .lam import LamHandler
from .list_filter import (
    format_agent_filter,
    format_job_filter,
    parse_agent_filter,
    parse_job_filter,
)
from .memory_calls import MemoryCalls
from .page_token import PageTokens, fingerprint_query, page_size
from .rate_limiter import charge_more
from .watch import JobWatch

Context = grpc.aio.ServicerContext[Any, Any]

_LIST_JOBS_DEFAULT, _LIST_JOBS_MAX = 50, 1000
_LIST_AGENTS_DEFAULT, _LIST_AGENTS_MAX = 100, 1000
# A page of artifacts is about 300 KB at most; 1000 by default keeps an older client, which
# knows no paging, seeing all of a job of up to 1000 artifacts.
_LIST_ARTIFACTS_MAX = 1000
_RETRY_JOBS_DEFAULT, _RETRY_JOBS_MAX = 100, 1000
_BATCH_SCHEDULE_MAX = 1000
# The states RetryJob re-drives from (FAILED, CANCELLED): those a job may leave for PENDING.
_REDRIVABLE = frozenset(
    s for s in JobState if JOB_STATE_MACHINE.can_transition(s, JobState.PENDING)
)


def _redrivable(job_filter: JobFilter) -> JobFilter:
    """`job_filter` narrowed to the jobs RetryJob can re-drive; refused if it admits none."""
    states = (job_filter.states or _REDRIVABLE) & _REDRIVABLE
    if not states:
        wanted = " or ".join(sorted(_REDRIVABLE))
        raise InvalidArgument(
            f"filter: only {wanted} jobs can be re-driven, and the filter's states exclude them",
            reason=Reason.INVALID_FILTER,
            field="filter",
        )
    return dataclasses.replace(job_filter, states=states)


def _max_jobs(requested: int) -> int:
    """RetryJobs' bound: 0 means the default; beyond the maximum is refused, never clamped."""
    if not 0 <= requested <= _RETRY_JOBS_MAX:
        raise InvalidArgument(
            f"max_jobs must be between 0 and {_RETRY_JOBS_MAX} (got {requested})",
            reason=Reason.INVALID_FIELD,
            field="max_jobs",
        )
    return requested or _RETRY_JOBS_DEFAULT


def _deadline(context: Context) -> float | None:
    """The call's deadline as a time.monotonic() value (None: the caller set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _spec_field(field: str) -> str:
    """A planner field path as a path in JobSpec (`todos[1].id` -> `spec.todos.todos[1].id`)."""
    if field.startswith("todos"):
        return "spec.todos." + field
    return f"spec.{field}" if field else "spec"


def _repeated_entry_bytes(message: Message) -> int:
    """Bytes `message` adds as an entry of a repeated field: tag, length and body."""
    size = message.ByteSize()
    return 1 + _varint_bytes(size) + size


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def fingerprint(message: Message) -> str:
    """Equal for equal requests: what decides whether a reused request_id is a true repeat."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


class SchedulerServicer(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    """The callers' API."""

    def __init__(
        self,
        *,
        orchestrator: Orchestrator,
        sessions: SessionRegistry,
        directory: AgentDirectory,
        bus: EventBus,
        lam: LamHandler,
        settings: Settings,
        page_tokens: PageTokens,
        artifacts: Artifacts,
        callbacks: CallbackOutbox,
        audit_log: AuditLog,
        credentials: CredentialWatch | None = None,
        memory: MemoryCalls | None = None,
    ) -> None:
        self._memory = memory or MemoryCalls(None, text_max_bytes=settings.memory_text_max_bytes)
        self._audit_log = audit_log
        self._credentials = credentials
        self._artifacts = artifacts
        self._callbacks = callbacks
        self._orchestrator = orchestrator
        self._page_tokens = page_tokens
        self._sessions = sessions
        self._directory = directory
        self._bus = bus
        self._lam = lam
        self._settings = settings
        self._watch = JobWatch(orchestrator=orchestrator, bus=bus, settings=settings)
        self._callback_policy = AddressPolicy.of(
            allow_private=settings.callback_allow_private,
            allowed_networks=settings.callback_allowed_networks,
        )

    @property
    def audit_log(self) -> AuditLog:
        return self._audit_log

    @property
    def default_tenant(self) -> str:
        return self._settings.default_tenant

    def _tenant(self, context: Context) -> str:
        return tenant_of(context, default=self._settings.default_tenant)

    def _waiting_reason(self, job: Job, task: Task) -> str:
        if task.next_attempt_time is not None and task.next_attempt_time > datetime.now(UTC):
            until = task.next_attempt_time.isoformat()
            return f"waiting until {until} before attempt {task.attempt + 1}"
        pin = task.agent_id if task.todo.session else ""  # the agent holding its session
        return self._sessions.waiting_reason(Requirement.of(job.tenant, task.todo, pin))

    def _spec_of(
        self, request: pb.ScheduleJobRequest | pb.PreviewPlanRequest
    ) -> tuple[PlanRequest, JobSource, JobOptions]:
        """The checked spec of a request that carries one (presence, fields)."""
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required", reason=Reason.MISSING_FIELD, field="spec")
        plan_request, source, options = job_views.spec_from_proto(
            request.spec, default_max_parallelism=self._settings.default_max_parallelism
        )
        check_callback_url(options.callback_url, "spec.callback_url", self._callback_policy)
        return plan_request, source, options

    def _job(self, job: Job, *, full: bool) -> job_pb2.Job:
        message = job_views.job_to_proto(job, full=full, waiting_reason=self._waiting_reason)
        policy = self._orchestrator.policies.get(job.tenant)
        if policy is not None and policy.redacts:  # docs/POLICY.md: what the API shows
            redact_job(policy, message)
        return message

    @translate_errors
    @audited("ScheduleJob")
    async def ScheduleJob(
        self, request: pb.ScheduleJobRequest, context: Context
    ) -> pb.ScheduleJobResponse:
        request.request_id = keyed_id(
            bounded_id(request.request_id, "request_id"), context, field="request_id"
        )
        full = job_views.is_full_view(request.view, default_full=False)
        tenant = self._tenant(context)
        submission = await self._submission(request, tenant, deadline=_deadline(context))
        [(job, created)] = await self._orchestrator.submit_all(
            tenant, [submission], audit=current_call()
        )
        return pb.ScheduleJobResponse(job=self._job(job, full=full), created=created)

    @translate_errors
    @audited("BatchScheduleJobs")
    async def BatchScheduleJobs(
        self, request: pb.BatchScheduleJobsRequest, context: Context
    ) -> pb.BatchScheduleJobsResponse:
        count = len(request.requests)
        if not 1 <= count <= _BATCH_SCHEDULE_MAX:
            raise InvalidArgument(
                f"requests must hold 1 to {_BATCH_SCHEDULE_MAX} requests (got {count})",
                reason=Reason.MISSING_FIELD if count == 0 else Reason.INVALID_FIELD,
                field="requests",
            )
        # The rate limiter took one call's cost; a batch costs one per request.
        await charge_more(count - 1)
        full = job_views.is_full_view(request.view, default_full=False)
        key = idempotency_key(context, field="requests")
        tenant = self._tenant(context)
        submissions = []
        first_of: dict[str, int] = {}
        deadline = _deadline(context)
        for index, item in enumerate(request.requests):
            path = f"requests[{index}]"
            bounded_id(item.request_id, f"{path}.request_id")
            if key and not item.request_id:
                # Deterministic per position: the same batch under the same key, repeated,
                # names the same jobs.
                item.request_id = f"{key}/{index}"
            if item.request_id and (first := first_of.setdefault(item.request_id, index)) < index:
                raise InvalidArgument(
                    f"request_id {echo(item.request_id)} is also that of requests[{first}]",
                    field=f"{path}.request_id",
                )
            try:
                submissions.append(await self._submission(item, tenant, deadline=deadline))
            except DomainError as error:
                error.field = f"{path}.{error.field}"
                raise
        try:
            jobs = await self._orchestrator.submit_all(tenant, submissions, audit=current_call())
        except RequestIdReused as error:
            error.field = f"requests[{error.index}].request_id"
            raise
        return pb.BatchScheduleJobsResponse(
            responses=[
                pb.ScheduleJobResponse(job=self._job(job, full=full), created=created)
                for job, created in jobs
            ]
        )

    async def _submission(
        self, request: pb.ScheduleJobRequest, tenant: str, *, deadline: float | None
    ) -> Submission:
        """A request for a job, checked, planned and held against the tenant's policy; errors
        name their field in `request`. Only free text may wait for the model (until
        `deadline`, time.monotonic())."""
        plan_request, source, options = self._spec_of(request)
        try:
            plan = await self._orchestrator.matched_plan(
                plan_request,
                context=options.context,
                tenant=tenant,
                callback_url=options.callback_url,
                deadline=deadline,
            )
        except DomainError as error:
            error.field = _spec_field(error.field)
            raise
        return Submission(
            plan=plan,
            source=source,
            options=options,
            request_id=request.request_id,
            # Only a request id's repeats are compared: no hash of the spec without one.
            request_fingerprint=fingerprint(request.spec) if request.request_id else "",
        )

    @translate_errors
    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.GetJobResponse:
        job_id = required_id(request.job_id, "job_id")
        full = job_views.is_full_view(request.view, default_full=True)
        job = await self._orchestrator.get_job(self._tenant(context), job_id)
        return pb.GetJobResponse(job=self._job(job, full=full))

    @translate_errors
    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        job_filter = parse_job_filter(request.filter)
        limit = page_size(request.page_size, default=_LIST_JOBS_DEFAULT, maximum=_LIST_JOBS_MAX)
        full = job_views.is_full_view(request.view, default_full=False)
        query = fingerprint_query("jobs", format_job_filter(job_filter))
        tenant = self._tenant(context)
        after = (
            self._page_tokens.time_id_position(
                request.page_token, tenant=tenant, query_fingerprint=query
            )
            if request.page_token
            else None
        )
        jobs = await self._orchestrator.list_jobs(tenant, job_filter, after=after, limit=limit + 1)
        response = pb.ListJobsResponse()
        budget = self._settings.list_jobs_page_max_bytes
        for job in jobs[:limit]:
            message = self._job(job, full=full)
            size = _repeated_entry_bytes(message)
            # Before the budget would be passed; a job larger than the budget goes alone.
            if response.jobs and size > budget:
                break
            response.jobs.append(message)
            budget -= size
        if len(jobs) > len(response.jobs):
            last = jobs[len(response.jobs) - 1]
            response.next_page_token = self._page_tokens.time_id_token(
                PagePosition(create_time=last.create_time, job_id=last.job_id),
                tenant=tenant,
                query_fingerprint=query,
            )
        return response

    @translate_errors
    @audited("CancelJob")
    async def CancelJob(
        self, request: pb.CancelJobRequest, context: Context
    ) -> pb.CancelJobResponse:
        job_id = required_id(request.job_id, "job_id")
        full = job_views.is_full_view(request.view, default_full=False)
        job = await self._orchestrator.cancel(
            self._tenant(context), job_id, reason=request.reason, audit=current_call()
        )
        return pb.CancelJobResponse(job=self._job(job, full=full))

    @translate_errors
    @audited("RetryJob")
    async def RetryJob(self, request: pb.RetryJobRequest, context: Context) -> pb.RetryJobResponse:
        job_id = required_id(request.job_id, "job_id")
        full = job_views.is_full_view(request.view, default_full=False)
        job = await self._orchestrator.retry(self._tenant(context), job_id, audit=current_call())
        return pb.RetryJobResponse(job=self._job(job, full=full))

    @translate_errors
    @audited("RetryJobs")
    async def RetryJobs(
        self, request: pb.RetryJobsRequest, context: Context
    ) -> pb.RetryJobsResponse:
        job_filter = _redrivable(parse_job_filter(request.filter))
        limit = _max_jobs(request.max_jobs)
        tenant = self._tenant(context)
        if request.dry_run:
            jobs = await self._orchestrator.list_jobs(tenant, job_filter, after=None, limit=limit)
            return pb.RetryJobsResponse(job_ids=[job.job_id for job in jobs])
        retried, skipped = await self._orchestrator.retry_jobs(
            tenant, job_filter, limit=limit, audit=current_call()
        )
        return pb.RetryJobsResponse(
            job_ids=[job.job_id for job in retried],
            skipped_jobs=[
                pb.SkippedJob(
                    job_id=job_id,
                    reason=convert.reason_to_proto(error.reason),
                    message=error.message,
                )
                for job_id, error in skipped
            ],
        )

    @translate_errors
    async def WatchJob(  # type: ignore[override]  # writes with context.write (api/watch.py)
        self, request: pb.WatchJobRequest, context: Context
    ) -> None:
        # A credential revoked or expired while the stream is open ends it (UNAUTHENTICATED);
        # with authentication off there is none to end.
        await self._watch.watch(
            request,
            self._tenant(context),
            context,
            until=until_credential_ends(self._credentials),
        )

    @translate_errors
    @audited("SendMessage")
    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        message_id = keyed_id(request.message.id, context, field="message.id")
        if message_id != request.message.id:  # only then: an absent message stays absent
            request.message.id = message_id
        reply = await self._lam.handle(
            request.message,
            tenant=self._tenant(context),
            audit=current_call(),
            deadline=_deadline(context),
        )
        return pb.SendMessageResponse(reply=reply)

    @translate_errors
    async def PreviewPlan(
        self, request: pb.PreviewPlanRequest, context: Context
    ) -> pb.PreviewPlanResponse:
        plan_request, _, options = self._spec_of(request)
        try:
            plan = await self._orchestrator.plan_async(
                plan_request,
                context=options.context,
                tenant=self._tenant(context),
                deadline=_deadline(context),
            )
        except DomainError as error:
            error.field = _spec_field(error.field)
            raise
        return convert.plan_to_preview_proto(plan)

    @translate_errors
    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        job_id = required_id(request.job_id, "job_id")
        task_id = bounded_id(request.task_id, "task_id")
        limit = page_size(
            request.page_size, default=_LIST_ARTIFACTS_MAX, maximum=_LIST_ARTIFACTS_MAX
        )
        tenant = self._tenant(context)
        query = fingerprint_query("artifacts", job_id, task_id)
        after = (
            self._page_tokens.artifacts_after(
                request.page_token, tenant=tenant, query_fingerprint=query
            )
            if request.page_token
            else None
        )
        found, last = await self._artifacts.page(tenant, job_id, task_id, after=after, limit=limit)
        response = pb.ListArtifactsResponse(artifacts=[artifact_to_proto(job_id, a) for a in found])
        if last is not None:
            response.next_page_token = self._page_tokens.artifacts_token(
                last, tenant=tenant, query_fingerprint=query
            )
        return response

    @translate_errors
    async def DownloadArtifact(  # type: ignore[override]  # writes with context.write
        self, request: pb.DownloadArtifactRequest, context: Context
    ) -> None:
        # A credential revoked or expired while the download runs ends it (UNAUTHENTICATED).
        async with until_credential_ends(self._credentials):
            await artifact_calls.download(
                self._artifacts,
                self._tenant(context),
                request,
                context,
                pb.DownloadArtifactResponse,
            )

    @translate_errors
    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        agent_filter = parse_agent_filter(request.filter)
        limit = page_size(request.page_size, default=_LIST_AGENTS_DEFAULT, maximum=_LIST_AGENTS_MAX)
        query = fingerprint_query("agents", format_agent_filter(agent_filter))
        tenant = self._tenant(context)
        records = [
            r
            for r in await self._directory.list_agents(tenant)
            if agent_filter.matches(
                r.state.value, r.profile.actions, r.profile.capabilities, r.profile.labels
            )
        ]
        start = 0
        if request.page_token:
            # Agents page by id: the token holds the last agent id of the previous page.
            after = self._page_tokens.agents_after(
                request.page_token, tenant=tenant, query_fingerprint=query
            )
            start = next((i for i, r in enumerate(records) if r.agent_id > after), len(records))
        page = records[start : start + limit]
        response = pb.ListAgentsResponse(agents=[convert.agent_to_proto(r) for r in page])
        if start + limit < len(records):
            response.next_page_token = self._page_tokens.agents_token(
                page[-1].agent_id, tenant=tenant, query_fingerprint=query
            )
        return response

    @translate_errors
    async def ListCallbacks(
        self, request: callback_pb2.ListCallbacksRequest, context: Context
    ) -> callback_pb2.ListCallbacksResponse:
        return await callback_calls.list_callbacks(
            request,
            tenant=self._tenant(context),
            outbox=self._callbacks,
            page_tokens=self._page_tokens,
        )

    @translate_errors
    @audited("RetryCallbacks")
    async def RetryCallbacks(
        self, request: callback_pb2.RetryCallbacksRequest, context: Context
    ) -> callback_pb2.RetryCallbacksResponse:
        return await callback_calls.retry_callbacks(
            request, tenant=self._tenant(context), outbox=self._callbacks, audit=current_call()
        )

    @translate_errors
    async def ListAuditEntries(
        self, request: audit_pb2.ListAuditEntriesRequest, context: Context
    ) -> audit_pb2.ListAuditEntriesResponse:
        return await audit_calls.list_audit_entries(
            request,
            tenant=self._tenant(context),
            log=self._audit_log,
            page_tokens=self._page_tokens,
        )

    @translate_errors
    async def SearchMemory(
        self, request: memory_pb2.SearchMemoryRequest, context: Context
    ) -> memory_pb2.SearchMemoryResponse:
        return await self._memory.search_memory(request, self._tenant(context))

    @translate_errors
    async def PutMemory(
        self, request: memory_pb2.PutMemoryRequest, context: Context
    ) -> memory_pb2.PutMemoryResponse:
        return await self._memory.put_memory(request, self._tenant(context))

    @translate_errors
    async def DeleteMemories(
        self, request: memory_pb2.DeleteMemoriesRequest, context: Context
    ) -> memory_pb2.DeleteMemoriesResponse:
        return await self._memory.delete_memories(request, self._tenant(context))
