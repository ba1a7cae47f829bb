"""Prometheus metrics of a scheduler replica (docs/OBSERVABILITY.md, ADR 0003).

The counters and histograms are process-wide, not registered anywhere by themselves: those of
the hot path plain numbers (`plain_metrics`), the others prometheus_client objects; each
replica's registry (`replica_registry`) holds them and its own scrape-time collector (agents,
slots). They are fed where state already changes, after commit:
`observe_changes` reads a committed change's events, so a retried transaction counts once.
The queue length and the pending callbacks are read from the store in the background
(`StoreGauges`): the store is the truth every replica shares.

`ENABLED` is false until a replica serves /metrics: with metrics off every hook returns at its
first test. Labels are bounded: no job, task or agent ids; actions and requirements go through
`BoundedLabel` (the first `LABEL_CAP` values, then "other").
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cpa_scheduler.domain.events import JobStateChanged, TaskError, TaskStateChanged
from cpa_scheduler.domain.states import JobState, TaskState

from . import hooks
from .plain_metrics import PlainCollector, PlainCounter, PlainHistogram

if TYPE_CHECKING:
    from prometheus_client import Metric

    from cpa_scheduler.dispatch.sessions import SessionRegistry
    from cpa_scheduler.domain import Job, JobChanges
    from cpa_scheduler.storage import Store

_log = logging.getLogger(__name__)

LABEL_CAP = 50
QUEUE_SCAN_LIMIT = 10_000
# A count over the outbox's partial index of PENDING rows: cheap even at this bound.
CALLBACK_COUNT_LIMIT = 100_000
OTHER = "other"

# Seconds: tasks run from sub-second API calls to minutes-long browser flows.
_TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60)


class BoundedLabel:
    """Label values from callers' data, capped: the first `cap` distinct values are kept, later
    new ones read `other`, so a flood of names cannot grow the series without bound."""

    __slots__ = ("_cap", "_seen")

    def __init__(self, cap: int = LABEL_CAP) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._cap:
            return OTHER
        self._seen.add(value)
        return value


ENABLED = False
actions = BoundedLabel()
methods = BoundedLabel(200)  # RPC methods: fixed by the protos, the cap only guards the label

# The hot path's metrics (every transition, store transaction and RPC): plain numbers, folded
# into the exposition at scrape time (plain_metrics).
JOBS = PlainCounter("jobs", "Jobs that entered each state.", ["state"])
JOB_FAILURES = PlainCounter(
    "job_failures", "Jobs that ended FAILED, by their error's reason.", ["reason"]
)
DEAD_LETTERS = PlainCounter("dead_letters", "Jobs dead-lettered (a task failed for good).")
TASKS = PlainCounter("tasks", "Tasks that entered each state.", ["action", "state"])
TASK_FAILURES = PlainCounter(
    "task_failures", "Task attempts that failed, by reason.", ["action", "reason"]
)
TASK_DURATION = PlainHistogram(
    "task_duration_seconds",
    "Time from an attempt's start to its end (succeeded or failed).",
    ["action"],
    buckets=_TASK_BUCKETS,
)
DISPATCH_LATENCY = PlainHistogram(
    "dispatch_latency_seconds",
    "Time a task waited ready in the queue before an agent started it.",
    buckets=_TASK_BUCKETS,
)
STORE_TRANSACTION = PlainHistogram(
    "store_transaction_seconds",
    "Time of a job transaction in the store (commit included).",
    ["operation"],
    buckets=_FAST_BUCKETS,
)
RPC_REQUESTS = PlainCounter(
    "rpc_requests", "gRPC calls handled, by method and status code.", ["method", "code"]
)
RPC_DURATION = PlainHistogram(
    "rpc_duration_seconds",
    "Time of a gRPC call (a stream: its whole life).",
    ["method"],
    buckets=_FAST_BUCKETS,
)
HOT_METRICS = (
    JOBS, JOB_FAILURES, DEAD_LETTERS, TASKS, TASK_FAILURES, TASK_DURATION, DISPATCH_LATENCY,
    STORE_TRANSACTION, RPC_REQUESTS, RPC_DURATION,
)  # fmt: skip

QUEUE_LENGTH = Gauge(
    "job_queue_length",
    "Tasks QUEUED in the store, by requirement (the action); every replica reports the whole "
    "deployment's: take the max over replicas.",
    ["requirement"],
    registry=None,
)
REDIS_ERRORS = Counter(
    "redis_errors", "Redis operations that failed, by component.", ["component"], registry=None
)
CALLBACKS_PENDING = Gauge(
    "callbacks_pending",
    "Callback messages PENDING in the store (written, not yet delivered or dead); every "
    "replica reports the whole deployment's: take the max over replicas.",
    registry=None,
)
CALLBACKS = Counter(
    "callbacks", "Callback deliveries that ended, by outcome.", ["outcome"], registry=None
)
LLM_DURATION = Histogram(
    "llm_call_duration_seconds",
    "Time of an LLM call, by operation, provider, model and outcome.",
    ["operation", "provider", "model", "outcome"],
    buckets=_LLM_BUCKETS,
    registry=None,
)
LLM_TOKENS = Counter(
    "llm_tokens", "LLM tokens used, by kind.", ["provider", "model", "kind"], registry=None
)
MEMORY_DURATION = Histogram(
    "memory_query_duration_seconds",
    "Time of a memory query, by operation and outcome.",
    ["operation", "outcome"],
    buckets=_FAST_BUCKETS,
    registry=None,
)

GC_FULL_COLLECTION = Histogram(
    "gc_full_collection_seconds",
    "Time the process stood still for each scheduled full garbage collection "
    "(CPA_GC_FULL_COLLECTION_INTERVAL_S): agents' heartbeat acks wait that long.",
    buckets=_FAST_BUCKETS,
    registry=None,
)

PROCESS_METRICS: tuple[Collector, ...] = (
    PlainCollector(HOT_METRICS), QUEUE_LENGTH, REDIS_ERRORS, CALLBACKS_PENDING, CALLBACKS,
    LLM_DURATION, LLM_TOKENS, MEMORY_DURATION, GC_FULL_COLLECTION,
)  # fmt: skip
_models = BoundedLabel()


def _reason(error: TaskError | None) -> str:
    # The scheduler's reason (an enum: bounded); an executor's own code is caller text.
    if error is None:
        return "UNKNOWN"
    return error.reason.name if error.reason is not None else "EXECUTOR_ERROR"


def _seconds(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else max(0.0, (end - start).total_seconds())


def observe_changes(job: Job, changes: JobChanges) -> None:
    """Count a committed change: its job and task transitions, durations and queue moves."""
    if not ENABLED:
        return
    for event in changes.events:
        payload = event.payload
        if isinstance(payload, TaskStateChanged):
            task = job.tasks[payload.task_id]
            action = actions(task.todo.action)
            TASKS.inc(action, payload.to_state)  # a StrEnum: its own label text
            if payload.from_state is TaskState.QUEUED and payload.to_state is TaskState.RUNNING:
                ready = task.next_attempt_time or task.queue_time
                if (waited := _seconds(ready, event.create_time)) is not None:
                    DISPATCH_LATENCY.observe(waited)
            if payload.from_state is TaskState.RUNNING and payload.attempt:
                attempt = task.attempts[payload.attempt - 1]
                if (ran := _seconds(attempt.start_time, event.create_time)) is not None:
                    TASK_DURATION.observe(ran, action)
                if payload.error is not None:
                    TASK_FAILURES.inc(action, _reason(payload.error))
        elif isinstance(payload, JobStateChanged):
            JOBS.inc(payload.to_state)
            if payload.to_state is JobState.FAILED:
                JOB_FAILURES.inc(_reason(payload.error))
                if job.dead_lettered:
                    DEAD_LETTERS.inc()


class store_transaction:  # noqa: N801 - used as a function: `with store_transaction(op):`
    """Time a job transaction of the store (`operation` is a fixed name); a class, not a
    generator: it is on the path of every change."""

    __slots__ = ("_operation", "_started")

    def __init__(self, operation: str) -> None:
        self._operation = operation
        self._started = time.perf_counter() if ENABLED else 0.0

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        if self._started:
            STORE_TRANSACTION.observe(time.perf_counter() - self._started, self._operation)


def redis_error(component: str) -> None:
    """A Redis operation of `component` (a fixed name) failed."""
    if ENABLED:
        REDIS_ERRORS.labels(component).inc()


def callback_finished(outcome: str) -> None:
    """A callback delivery attempt ended as `outcome` (pending: it will be tried again)."""
    if ENABLED:
        CALLBACKS.labels(outcome).inc()


def _on_operation(operation: hooks.Operation) -> None:
    """The hooks' timed operations (llm_call, memory_query) as histograms."""
    if operation.kind == "llm_call":
        provider = _models(operation.labels.get("provider", ""))
        model = _models(operation.labels.get("model", ""))
        LLM_DURATION.labels(operation.name, provider, model, _models(operation.outcome)).observe(
            operation.duration_s
        )
        for kind, count in operation.counts.items():
            if kind.endswith("tokens"):
                LLM_TOKENS.labels(provider, model, _models(kind)).inc(count)
    elif operation.kind == "memory_query":
        MEMORY_DURATION.labels(_models(operation.name), _models(operation.outcome)).observe(
            operation.duration_s
        )


class StoreGauges:
    """job_queue_length and callbacks_pending, set from the store (the truth) by `refresh`,
    every `interval_s` in `run_forever`. Counts kept in step by each replica's own changes would
    drift: a replica restarts (its counts from zero), dies between a delivery and its record, or
    another replica's deliverer ends the callbacks this one wrote. Reads at most
    QUEUE_SCAN_LIMIT tasks (a backlog past it is far past the alert's 100) and counts at most
    CALLBACK_COUNT_LIMIT callbacks."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._shown: set[str] = set()

    async def refresh(self) -> None:
        """One reading of the store; raises what the store raises (the gauges keep their
        values)."""
        queued = await self._store.queued_tasks(limit=QUEUE_SCAN_LIMIT)
        pending = await self._store.count_pending_callbacks(limit=CALLBACK_COUNT_LIMIT)
        counts = collections.Counter(actions(task.todo.action) for task in queued)
        for requirement in self._shown - counts.keys():
            QUEUE_LENGTH.labels(requirement).set(0)
        for requirement, count in counts.items():
            QUEUE_LENGTH.labels(requirement).set(count)
        self._shown |= counts.keys()
        CALLBACKS_PENDING.set(pending)

    async def run_forever(self, interval_s: float) -> None:
        QUEUE_LENGTH.clear()  # an earlier store's counts (a replica started again in this process)
        while True:
            try:
                await self.refresh()
            except Exception as error:  # the store is down: keep the last counts, say so
                _log.warning("reading the metrics' counts from the store failed: %s", error)
            await asyncio.sleep(interval_s)


_unsubscribe: Callable[[], None] | None = None


def enable() -> None:
    """Turn the hot-path hooks on (once a replica serves /metrics); idempotent."""
    global ENABLED, _unsubscribe
    ENABLED = True
    if _unsubscribe is None:
        _unsubscribe = hooks.subscribe(_on_operation)


class _AgentsCollector(Collector):
    """Scrape-time gauges of the agents connected to one replica: computed from its session
    registry when Prometheus asks (O(agents)), never on the hot path."""

    def __init__(self, sessions: SessionRegistry) -> None:
        self._sessions = sessions

    def collect(self) -> Iterable[Metric]:
        sessions = list(self._sessions)
        connected = GaugeMetricFamily("agents_connected", "Agents connected to this replica.")
        connected.add_metric([], len(sessions))
        free = GaugeMetricFamily(
            "agent_free_slots", "Free slots (credits) of this replica's agents.", labels=["action"]
        )
        serving = GaugeMetricFamily(
            "agents_serving", "Agents connected to this replica that serve an action.",
            labels=["action"],
        )  # fmt: skip
        by_action: dict[str, tuple[int, int]] = {}
        for session in sessions:
            for action in {actions(name) for name in session.profile.actions}:
                count, slots = by_action.get(action, (0, 0))
                by_action[action] = (count + 1, slots + session.credits)
        for action, (count, slots) in sorted(by_action.items()):
            serving.add_metric([action], count)
            free.add_metric([action], slots)
        total = GaugeMetricFamily("agent_free_slots_total", "Free slots of this replica's agents.")
        total.add_metric([], sum(session.credits for session in sessions))
        return [connected, serving, free, total]


def replica_registry(sessions: SessionRegistry) -> CollectorRegistry:
    """A registry for one replica's /metrics: the process-wide metrics and its agents."""
    registry = CollectorRegistry(auto_describe=True)
    for metric in PROCESS_METRICS:
        registry.register(metric)
    registry.register(_AgentsCollector(sessions))
    return registry
