"""SearchMemory, PutMemory and DeleteMemories: requests checked against their limits, the
tenant's semantic memory called, records converted (this component's conversion to protobuf)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from cpa.scheduler.v1 import memory_pb2
from cpa_scheduler.domain import DomainError, FailedPrecondition, InvalidArgument, Reason
from cpa_scheduler.memory.interface import MemoryRecord, Outcome, Selection, SemanticMemory
from cpa_scheduler.memory.records import MAX_K

from .ids import bounded_id
from .proto_values import dict_to_struct, struct_to_dict

log = logging.getLogger(__name__)

_DEFAULT_K = 5
_MAX_PLAN_STEPS = 100
_MAX_FAILURE_REASON_BYTES = 1024

_OUTCOMES: dict[memory_pb2.MemoryOutcome.ValueType, Outcome] = {
    memory_pb2.MEMORY_OUTCOME_SUCCEEDED: "succeeded",
    memory_pb2.MEMORY_OUTCOME_FAILED: "failed",
}
_OUTCOME_VALUES = {outcome: value for value, outcome in _OUTCOMES.items()}


def _outcome(value: memory_pb2.MemoryOutcome.ValueType) -> Outcome | None:
    if value == memory_pb2.MEMORY_OUTCOME_UNSPECIFIED:
        return None
    if value not in _OUTCOMES:
        raise InvalidArgument(f"outcome {value} is not a MemoryOutcome", field="outcome")
    return _OUTCOMES[value]


def _memory_text(text: str, max_bytes: int) -> str:
    if not text.strip():
        raise InvalidArgument("text is required", reason=Reason.MISSING_FIELD, field="text")
    if len(text.encode()) > max_bytes:
        raise InvalidArgument(
            f"text is over {max_bytes} bytes (CPA_MEMORY_TEXT_MAX_BYTES)",
            reason=Reason.TEXT_TOO_LONG,
            field="text",
        )
    return text


def record_to_proto(record: MemoryRecord) -> memory_pb2.MemoryRecord:
    message = memory_pb2.MemoryRecord(
        memory_id=record.memory_id,
        text=record.text,
        plan=[dict_to_struct(step) for step in record.plan],
        outcome=_OUTCOME_VALUES[record.outcome],
        failure_reason=record.failure_reason,
        job_id=record.job_id,
    )
    message.create_time.FromDatetime(datetime.fromtimestamp(record.created_unix_s, UTC))
    return message


class MemoryCalls:
    """The memory RPCs over `memory` (None: the server runs without memory)."""

    def __init__(self, memory: SemanticMemory | None, *, text_max_bytes: int) -> None:
        self._memory = memory
        self._text_max_bytes = text_max_bytes

    def _memory_enabled(self) -> SemanticMemory:
        if self._memory is None:
            raise FailedPrecondition(
                "this server runs without memory (CPA_MEMORY_ENABLED=false)",
                reason=Reason.MEMORY_DISABLED,
            )
        return self._memory

    async def search_memory(
        self, request: memory_pb2.SearchMemoryRequest, tenant: str
    ) -> memory_pb2.SearchMemoryResponse:
        memory = self._memory_enabled()
        text = _memory_text(request.text, self._text_max_bytes)
        if not 0 <= request.k <= MAX_K:
            raise InvalidArgument(f"k must be 1..{MAX_K} (0 for {_DEFAULT_K})", field="k")
        outcome = _outcome(request.outcome)
        try:
            hits = await memory.search(tenant, text, k=request.k or _DEFAULT_K, outcome=outcome)
        except DomainError:
            raise
        except Exception as error:
            raise _unavailable("search", error) from error
        return memory_pb2.SearchMemoryResponse(
            hits=[
                memory_pb2.MemoryHit(record=record_to_proto(h.record), score=h.score) for h in hits
            ]
        )

    async def put_memory(
        self, request: memory_pb2.PutMemoryRequest, tenant: str
    ) -> memory_pb2.PutMemoryResponse:
        memory = self._memory_enabled()
        text = _memory_text(request.text, self._text_max_bytes)
        outcome = _outcome(request.outcome) or "succeeded"
        if len(request.failure_reason.encode()) > _MAX_FAILURE_REASON_BYTES:
            raise InvalidArgument(
                f"failure_reason is over {_MAX_FAILURE_REASON_BYTES} bytes", field="failure_reason"
            )
        if request.failure_reason and outcome != "failed":
            raise InvalidArgument("failure_reason needs outcome FAILED", field="failure_reason")
        bounded_id(request.job_id, "job_id")
        if len(request.plan) > _MAX_PLAN_STEPS:
            raise InvalidArgument(f"plan has over {_MAX_PLAN_STEPS} steps", field="plan")
        plan = tuple(struct_to_dict(step, f"plan[{i}]") for i, step in enumerate(request.plan))
        record = MemoryRecord(
            memory_id="",
            tenant=tenant,
            text=text,
            plan=plan,
            outcome=outcome,
            failure_reason=request.failure_reason,
            job_id=request.job_id,
        )
        try:
            stored = await memory.put(record)
        except DomainError:
            raise
        except Exception as error:
            raise _unavailable("put", error) from error
        return memory_pb2.PutMemoryResponse(record=record_to_proto(stored))

    async def delete_memories(
        self, request: memory_pb2.DeleteMemoriesRequest, tenant: str
    ) -> memory_pb2.DeleteMemoriesResponse:
        memory = self._memory_enabled()
        selection = _selection(request)
        try:
            deleted = await memory.delete(tenant, selection)
        except DomainError:
            raise
        except Exception as error:
            raise _unavailable("delete", error) from error
        return memory_pb2.DeleteMemoriesResponse(deleted_count=deleted)


def _selection(request: memory_pb2.DeleteMemoriesRequest) -> Selection:
    """Exactly one of memory_id, job_id and all: a request that names nothing must not read as
    "everything" (all is explicit)."""
    named = [name for name in ("memory_id", "job_id", "all") if getattr(request, name)]
    if not named:
        raise InvalidArgument(
            "name what to delete: memory_id, job_id or all",
            reason=Reason.MISSING_FIELD,
            field="memory_id",
        )
    if len(named) > 1:
        raise InvalidArgument(
            f"set one of memory_id, job_id and all, not {' and '.join(named)}", field=named[1]
        )
    return Selection(
        memory_id=bounded_id(request.memory_id, "memory_id"),
        job_id=bounded_id(request.job_id, "job_id"),
    )


def _unavailable(what: str, error: Exception) -> DomainError:
    # The embedder (a model provider) or the store: infrastructure, retryable; logged in full.
    log.warning("memory %s failed: %r", what, error)
    return DomainError(
        "memory is unavailable (its embedder or store failed); retry shortly",
        reason=Reason.MEMORY_UNAVAILABLE,
    )
