"""SchedulerClient: an asyncio client of cpa.scheduler.v1.SchedulerService that raises CpaError."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2

from cpa.admin.v1 import admin_service_pb2
from cpa.common.v1 import artifact_pb2
from cpa.lam.v1 import lam_message_pb2
from cpa.scheduler.v1 import (
    agent_pb2,
    audit_pb2,
    callback_pb2,
    job_event_pb2,
    job_pb2,
    memory_pb2,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
)

from .artifact_chunks import download_bytes, download_to_file
from .batching import (
    DEFAULT_LINGER_S,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_IN_FLIGHT,
    ScheduleBatcher,
)
from .channels import ClientTls, credential_metadata, open_channel, retry_options
from .errors import UNDECODABLE_RESPONSE, CpaError
from .rate_limits import RateLimitRetry, repeating_rate_limited
from .watching import Reconnect, resuming_watch

# The metadata key that stands for an empty request_id (the server's `idempotency-key`).
_IDEMPOTENCY_KEY = "idempotency-key"

_Response = TypeVar("_Response")
_Page = TypeVar(
    "_Page",
    scheduler_service_pb2.ListJobsResponse,
    scheduler_service_pb2.ListAgentsResponse,
    callback_pb2.ListCallbacksResponse,
    audit_pb2.ListAuditEntriesResponse,
    scheduler_service_pb2.ListArtifactsResponse,
    admin_service_pb2.ListApiKeysResponse,
)


def _struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if values is None:
        return None
    message = struct_pb2.Struct()
    message.update(dict(values))
    return message


def _undecodable() -> CpaError:
    # grpc.aio ends a call whose answer fails to decode with status OK and no message; say
    # what happened instead of handing the caller None.
    return CpaError.of(
        code=grpc.StatusCode.INTERNAL,
        message="the scheduler's answer could not be decoded (nested too deep for protobuf, "
        "or not of the expected type)",
        reason=UNDECODABLE_RESPONSE,
    )


async def _unary(call: Awaitable[_Response | None]) -> _Response:
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        raise CpaError.from_rpc_error(error) from None
    if response is None:
        raise _undecodable()
    return response


async def call_unary(
    method: Callable[..., Awaitable[_Response | None]],
    request: Any,
    *,
    metadata: Sequence[tuple[str, str]],
    timeout_s: float | None,
    rate_limit_retry: RateLimitRetry,
) -> _Response:
    """`method(request)` with this metadata and timeout, repeated after RATE_LIMITED as
    `rate_limit_retry` allows; errors raised as CpaError."""
    return await repeating_rate_limited(
        lambda: _unary(method(request, metadata=metadata, timeout=timeout_s)), rate_limit_retry
    )


async def call_pages(
    method: Callable[..., Awaitable[_Page | None]],
    request: Any,
    *,
    metadata: Sequence[tuple[str, str]],
    timeout_s: float | None,
    rate_limit_retry: RateLimitRetry,
) -> AsyncIterator[_Page]:
    """Every page of a List call, following next_page_token (AIP-158): `request` is sent again
    with each page's token, as call_unary sends it."""
    while True:
        page = await call_unary(
            method,
            request,
            metadata=metadata,
            timeout_s=timeout_s,
            rate_limit_retry=rate_limit_retry,
        )
        yield page
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


async def _decoded(parts: AsyncIterable[_Response | None]) -> AsyncIterator[_Response]:
    async for part in parts:
        if part is None:
            raise _undecodable()
        yield part


class SchedulerClient:
    """Calls the scheduler over one channel; use as `async with SchedulerClient(target) as c`."""

    def __init__(
        self,
        target: str,
        *,
        channel: grpc.aio.Channel | None = None,
        tls: ClientTls | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = 30.0,
        api_key: str | None = None,
        batch_linger_s: float = DEFAULT_LINGER_S,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_batches_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        retries: bool = True,
        rate_limit_retry: RateLimitRetry = RateLimitRetry(),  # noqa: B008 (frozen)
        reconnect: Reconnect | None = None,
    ) -> None:
        """`tls` speaks TLS to `target` (verifying the server); none: plaintext. A `channel`
        of the caller's is used as it is (and not closed; its options decide retries).
        `api_key` (an API key or a JWT) is sent with every call as `authorization: Bearer`;
        `metadata` adds more (e.g. `x-cpa-act-as-tenant` for an operator).

        `batch_linger_s`: concurrent schedule_job calls within this time go out as one
        BatchScheduleJobs of at most `max_batch` (0 sends each alone), `max_batches_in_flight`
        at a time (later calls wait for one to return, unless they fill a batch).
        `retries`: gRPC repeats reads and schedules after UNAVAILABLE (channels.retry_options).
        `rate_limit_retry`: how a call refused with RATE_LIMITED is repeated after the delay the
        server names (NO_RATE_LIMIT_RETRY: raised at once).
        `reconnect`: how watch() reconnects."""
        self._channel = channel or open_channel(
            target, tls=tls, options=retry_options() if retries else ()
        )
        self._owns_channel = channel is None
        self._stub = scheduler_service_pb2_grpc.SchedulerServiceStub(self._channel)
        self._metadata = credential_metadata(api_key, metadata)
        self._timeout_s = timeout_s
        self._rate_limit_retry = rate_limit_retry
        # With an idempotency-key in the metadata the server derives request ids itself.
        self._make_request_ids = not any(k == _IDEMPOTENCY_KEY for k, _ in self._metadata)
        self._batcher = (
            ScheduleBatcher(
                self._batch_call,
                self._schedule_call,
                linger_s=batch_linger_s,
                max_batch=max_batch,
                max_in_flight=max_batches_in_flight,
            )
            if batch_linger_s > 0
            else None
        )
        self._reconnect = reconnect or Reconnect()

    async def __aenter__(self) -> SchedulerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def batches_sent(self) -> int:
        """How many BatchScheduleJobs calls the batching of schedule_job has made."""
        return self._batcher.batches_sent if self._batcher is not None else 0

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        if self._owns_channel:
            await self._channel.close(grace=None)

    async def schedule_job(
        self,
        spec: job_pb2.JobSpec,
        *,
        request_id: str = "",
        view: job_pb2.JobView.ValueType = job_pb2.JOB_VIEW_UNSPECIFIED,
    ) -> scheduler_service_pb2.ScheduleJobResponse:
        """Create a job from a full spec. Without a `request_id` the SDK makes one (job.request_id),
        so that a repeat of the call (gRPC's retry, or the caller's with that id) cannot create
        a second job. The answer holds the job in the BASIC view (no params, outputs) unless
        `view` is FULL. Concurrent calls are sent together (see `batch_linger_s`); each gets
        what a lone call would have got."""
        request = scheduler_service_pb2.ScheduleJobRequest(
            request_id=request_id or self._new_request_id(), spec=spec, view=view
        )
        if self._batcher is not None:
            return await self._batcher.schedule(request, view)
        return await self._schedule_call(request)

    def _new_request_id(self) -> str:
        return str(uuid.uuid4()) if self._make_request_ids else ""

    async def _schedule_call(
        self, request: scheduler_service_pb2.ScheduleJobRequest
    ) -> scheduler_service_pb2.ScheduleJobResponse:
        return await self._call(self._stub.ScheduleJob, request)

    async def _batch_call(
        self,
        requests: Sequence[scheduler_service_pb2.ScheduleJobRequest],
        view: job_pb2.JobView.ValueType,
    ) -> list[scheduler_service_pb2.ScheduleJobResponse]:
        request = scheduler_service_pb2.BatchScheduleJobsRequest(view=view, requests=requests)
        response = await self._call(self._stub.BatchScheduleJobs, request)
        return list(response.responses)

    async def batch_schedule_jobs(
        self,
        requests: Sequence[scheduler_service_pb2.ScheduleJobRequest | job_pb2.JobSpec],
        *,
        view: job_pb2.JobView.ValueType = job_pb2.JOB_VIEW_UNSPECIFIED,
    ) -> list[scheduler_service_pb2.ScheduleJobResponse]:
        """Create several jobs in one call, all or none; one answer per request, in order.
        A request without a request_id (or a bare JobSpec) gets one made by the SDK, so the
        call is safe to repeat. Jobs in the BASIC view unless `view` is FULL."""
        items = []
        for r in requests:
            item = scheduler_service_pb2.ScheduleJobRequest()
            if isinstance(r, scheduler_service_pb2.ScheduleJobRequest):
                item.CopyFrom(r)
            else:
                item.spec.CopyFrom(r)
            item.request_id = item.request_id or self._new_request_id()
            items.append(item)
        return await self._batch_call(items, view)

    async def schedule_text(
        self, text: str, *, context: Mapping[str, Any] | None = None, request_id: str = ""
    ) -> job_pb2.Job:
        """Create a job from natural-language text."""
        spec = job_pb2.JobSpec(text=text, context=_struct(context))
        return (await self.schedule_job(spec, request_id=request_id)).job

    async def schedule_intent(
        self, name: str, parameters: Mapping[str, Any] | None = None, *, request_id: str = ""
    ) -> job_pb2.Job:
        """Create a job from an intent named directly."""
        invocation = job_pb2.IntentInvocation(name=name, parameters=_struct(parameters))
        spec = job_pb2.JobSpec(intent=invocation)
        return (await self.schedule_job(spec, request_id=request_id)).job

    async def get_job(
        self, job_id: str, *, view: job_pb2.JobView.ValueType = job_pb2.JOB_VIEW_UNSPECIFIED
    ) -> job_pb2.Job:
        """The job, in the FULL view (params and outputs included) unless `view` is BASIC."""
        request = scheduler_service_pb2.GetJobRequest(job_id=job_id, view=view)
        response = await self._call(self._stub.GetJob, request)
        return response.job

    async def list_jobs(
        self,
        *,
        filter: str = "",
        page_size: int = 0,
        view: job_pb2.JobView.ValueType = job_pb2.JOB_VIEW_UNSPECIFIED,
    ) -> AsyncIterator[job_pb2.Job]:
        """Every job matching `filter` (AIP-160), following page tokens; BASIC view unless
        `view` is FULL."""
        async for response in self._pages(
            self._stub.ListJobs,
            scheduler_service_pb2.ListJobsRequest(filter=filter, page_size=page_size, view=view),
        ):
            for job in response.jobs:
                yield job

    async def cancel_job(
        self,
        job_id: str,
        *,
        reason: str = "",
        view: job_pb2.JobView.ValueType = job_pb2.JOB_VIEW_UNSPECIFIED,
    ) -> job_pb2.Job:
        """Request cancellation; the job as recorded, BASIC unless `view` is FULL."""
        request = scheduler_service_pb2.CancelJobRequest(job_id=job_id, reason=reason, view=view)
        response = await self._call(self._stub.CancelJob, request)
        return response.job

    async def retry_job(
        self, job_id: str, *, view: job_pb2.JobView.ValueType = job_pb2.JOB_VIEW_UNSPECIFIED
    ) -> job_pb2.Job:
        """Re-drive a FAILED or CANCELLED job; the job, BASIC unless `view` is FULL."""
        request = scheduler_service_pb2.RetryJobRequest(job_id=job_id, view=view)
        response = await self._call(self._stub.RetryJob, request)
        return response.job

    async def retry_jobs(
        self, *, filter: str = "", max_jobs: int = 0, dry_run: bool = False
    ) -> scheduler_service_pb2.RetryJobsResponse:
        """Re-drive the FAILED and CANCELLED jobs matching `filter` (AIP-160, as list_jobs),
        newest first, at most `max_jobs` of them (1 to 1000; 0 means 100); `dry_run` only
        lists them. Safe to repeat: fewer jobs in job_ids plus skipped_jobs than the bound
        means no match was left.
        """
        request = scheduler_service_pb2.RetryJobsRequest(
            filter=filter, max_jobs=max_jobs, dry_run=dry_run
        )
        return await self._call(self._stub.RetryJobs, request)

    async def watch_job(
        self, job_id: str, *, after_sequence: int = 0
    ) -> AsyncIterator[job_event_pb2.JobEvent]:
        """The job's events after `after_sequence`, live, ending after the terminal event.
        The server's heartbeats on a quiet stream (responses without an event) are skipped."""
        request = scheduler_service_pb2.WatchJobRequest(
            job_id=job_id, after_sequence=after_sequence
        )
        call = self._stub.WatchJob(request, metadata=self._metadata)
        try:
            async for response in call:
                if response is None:
                    raise _undecodable()
                if response.HasField("event"):
                    yield response.event
        except grpc.aio.AioRpcError as error:
            raise CpaError.from_rpc_error(error) from None

    async def watch(
        self, job_id: str, *, after_sequence: int = 0
    ) -> AsyncIterator[job_event_pb2.JobEvent]:
        """As watch_job, surviving disconnects: after a lost connection (or a replica that
        stops) it watches again from the last event yielded, so no event is missed or repeated.
        Gives up (the last CpaError) per the client's `reconnect`; other errors are raised."""
        async for event in resuming_watch(
            lambda after: self.watch_job(job_id, after_sequence=after),
            after_sequence=after_sequence,
            reconnect=self._reconnect,
        ):
            yield event

    async def list_artifacts(
        self, job_id: str, *, task_id: str = "", page_size: int = 0
    ) -> list[artifact_pb2.Artifact]:
        """The artifacts the job's tasks stored (failed attempts' included), in task order;
        with `task_id` only that task's. Every page, following page tokens."""
        found: list[artifact_pb2.Artifact] = []
        async for response in self._pages(
            self._stub.ListArtifacts,
            scheduler_service_pb2.ListArtifactsRequest(
                job_id=job_id, task_id=task_id, page_size=page_size
            ),
        ):
            found.extend(response.artifacts)
        return found

    async def list_callbacks(
        self,
        *,
        state: callback_pb2.CallbackState.ValueType = callback_pb2.CALLBACK_STATE_UNSPECIFIED,
        job_id: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[callback_pb2.Callback]:
        """Every callback delivery of the caller's tenant (oldest first), following page
        tokens; only `state`'s and `job_id`'s when given."""
        async for response in self._pages(
            self._stub.ListCallbacks,
            callback_pb2.ListCallbacksRequest(state=state, job_id=job_id, page_size=page_size),
        ):
            for delivery in response.callbacks:
                yield delivery

    async def list_audit_entries(
        self,
        *,
        job_id: str = "",
        principal: str = "",
        action: str = "",
        result: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[audit_pb2.AuditEntry]:
        """Every audit entry of the caller's tenant matching the filters (newest first),
        following page tokens; times are [start_time, end_time)."""
        request = audit_pb2.ListAuditEntriesRequest(
            job_id=job_id, principal=principal, action=action, result=result, page_size=page_size
        )
        if start_time is not None:
            request.start_time.FromDatetime(start_time)
        if end_time is not None:
            request.end_time.FromDatetime(end_time)
        async for response in self._pages(self._stub.ListAuditEntries, request):
            for entry in response.entries:
                yield entry

    async def retry_callbacks(
        self, delivery_ids: Sequence[str] = (), *, all_dead: bool = False, max_callbacks: int = 0
    ) -> list[callback_pb2.Callback]:
        """Re-drive dead-lettered deliveries (those named, or with `all_dead` the oldest
        `max_callbacks`); returns them, pending again."""
        request = callback_pb2.RetryCallbacksRequest(
            delivery_ids=delivery_ids, all_dead=all_dead, max_callbacks=max_callbacks
        )
        response = await self._call(self._stub.RetryCallbacks, request)
        return list(response.callbacks)

    async def download_artifact(
        self, job_id: str, artifact_id: str, path: Path | str
    ) -> artifact_pb2.Artifact:
        """Write the artifact to `path`, checked against its size and sha256 (ArtifactCheckError
        when they differ: no file is left). Returns its metadata. The call has no deadline
        of its own: a large artifact takes as long as it takes."""
        request = scheduler_service_pb2.DownloadArtifactRequest(
            job_id=job_id, artifact_id=artifact_id
        )
        call = self._stub.DownloadArtifact(request, metadata=self._metadata)
        try:
            return await download_to_file(_decoded(call), Path(path))
        except grpc.aio.AioRpcError as error:
            raise CpaError.from_rpc_error(error) from None

    async def read_artifact(
        self, job_id: str, artifact_id: str
    ) -> tuple[artifact_pb2.Artifact, bytes]:
        """The artifact's metadata and bytes in memory, checked as download_artifact does."""
        request = scheduler_service_pb2.DownloadArtifactRequest(
            job_id=job_id, artifact_id=artifact_id
        )
        call = self._stub.DownloadArtifact(request, metadata=self._metadata)
        try:
            return await download_bytes(_decoded(call))
        except grpc.aio.AioRpcError as error:
            raise CpaError.from_rpc_error(error) from None

    async def send_message(self, message: lam_message_pb2.LamMessage) -> lam_message_pb2.LamMessage:
        """Send a LAM message; returns the scheduler's reply (agree, refuse, not_understood...)."""
        request = scheduler_service_pb2.SendMessageRequest(message=message)
        response = await self._call(self._stub.SendMessage, request)
        return response.reply

    async def preview_plan(
        self, spec: job_pb2.JobSpec
    ) -> scheduler_service_pb2.PreviewPlanResponse:
        request = scheduler_service_pb2.PreviewPlanRequest(spec=spec)
        return await self._call(self._stub.PreviewPlan, request)

    async def search_memory(
        self,
        text: str,
        *,
        k: int = 0,
        outcome: memory_pb2.MemoryOutcome.ValueType = memory_pb2.MEMORY_OUTCOME_UNSPECIFIED,
    ) -> list[memory_pb2.MemoryHit]:
        """The tenant's remembered jobs closest in meaning to `text`, most similar first (k 0:
        the server's 5; outcome 0: either)."""
        request = memory_pb2.SearchMemoryRequest(text=text, k=k, outcome=outcome)
        response = await self._call(self._stub.SearchMemory, request)
        return list(response.hits)

    async def put_memory(self, request: memory_pb2.PutMemoryRequest) -> memory_pb2.MemoryRecord:
        """Add a record to the tenant's memory; returns it as stored (with its id)."""
        response = await self._call(self._stub.PutMemory, request)
        return response.record

    async def delete_memories(self, request: memory_pb2.DeleteMemoriesRequest) -> int:
        """Delete the tenant's records `request` names (one memory_id, a job_id's, or all);
        returns how many were deleted (0 when none matched: deleting again is harmless)."""
        response = await self._call(self._stub.DeleteMemories, request)
        return response.deleted_count

    async def list_agents(
        self, *, filter: str = "", page_size: int = 0
    ) -> AsyncIterator[agent_pb2.Agent]:
        """Every connected agent matching `filter` (AIP-160), following page tokens."""
        async for response in self._pages(
            self._stub.ListAgents,
            scheduler_service_pb2.ListAgentsRequest(filter=filter, page_size=page_size),
        ):
            for agent in response.agents:
                yield agent

    async def _call(
        self, method: Callable[..., Awaitable[_Response | None]], request: Any
    ) -> _Response:
        """One unary call with the client's metadata and timeout, repeated after RATE_LIMITED
        as the client's RateLimitRetry allows."""
        return await call_unary(
            method,
            request,
            metadata=self._metadata,
            timeout_s=self._timeout_s,
            rate_limit_retry=self._rate_limit_retry,
        )

    async def _pages(
        self, method: Callable[..., Awaitable[_Page]], request: Any
    ) -> AsyncIterator[_Page]:
        """call_pages with the client's metadata and timeout."""
        async for page in call_pages(
            method,
            request,
            metadata=self._metadata,
            timeout_s=self._timeout_s,
            rate_limit_retry=self._rate_limit_retry,
        ):
            yield page
