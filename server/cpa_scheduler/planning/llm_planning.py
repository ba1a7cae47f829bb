"""Free text with a language model: which of the LLM router, the rule router and the LLM task
planner decides, within a bounded number of plannings at once and the request's deadline.

The order (docs/PLANNING.md, "Planning with a language model"):
1. the LLM router classifies the text; an intent of the catalog with enough confidence is
   expanded from the catalog's templates (the model only picks it and reads its parameters);
2. otherwise (low confidence, an intent the catalog lacks, any provider error or timeout, or
   parameters the intent refuses) the rule router decides, as without a model;
3. when neither found an intent, the LLM task planner plans the tasks (checked, repaired,
   refused when still invalid).
Only TextRequest reaches this module: ToDos and intent names never wait for the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cpa_scheduler.domain import LimitExceeded, Reason
from cpa_scheduler.llm.interface import LLMProvider, LLMTimeoutError, Message

from .actions import ActionCatalog
from .intent_catalog import IntentCatalog
from .llm_planner import LLMTaskPlanner, PlannedTasks
from .llm_router import Classification, LLMIntentRouter

if TYPE_CHECKING:
    from cpa_scheduler.memory.interface import ConversationMemory, SemanticMemory
    from cpa_scheduler.policy.rules import Policy

# How many similar memories the planner shows the model, and conversation entries.
MEMORY_HITS = 5
CONVERSATION_ENTRIES = 20


_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedPrompt:
    """A prompt as sent: its name (`intent`, `plan`) and messages."""

    name: str
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Situation:
    """Who asks and what the planner may know about them (all optional: a preview from the
    CLI has no tenant). `deadline` is a time.monotonic() value (the request's deadline)."""

    tenant: str = ""
    policy: Policy | None = None
    conversation_id: str = ""
    agents: Callable[[], Awaitable[ActionCatalog]] | None = None
    deadline: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Memories:
    """The memory stores the planner reads (None: not configured)."""

    conversation: ConversationMemory | None = None
    semantic: SemanticMemory | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanningLimits:
    """The planning settings of the LLM path (settings/planning_llm.py)."""

    min_confidence: float
    repair_attempts: int
    concurrency: int
    timeout_s: float


@dataclass(slots=True)
class LLMPlanning:
    """The model's part of planning text (see the module doc)."""

    provider: LLMProvider
    catalog: IntentCatalog
    settings: PlanningLimits
    max_tasks: int
    memories: Memories = field(default_factory=Memories)
    _router: LLMIntentRouter = field(init=False)
    _planner: LLMTaskPlanner = field(init=False)
    _running: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._router = LLMIntentRouter(
            self.provider, self.catalog, min_confidence=self.settings.min_confidence
        )
        self._planner = LLMTaskPlanner(
            self.provider,
            repair_attempts=self.settings.repair_attempts,
            max_tasks=self.max_tasks,
        )

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Holds a planning slot; LimitExceeded(PLANNING_BUSY) at once when all are taken:
        refused rather than queued, so a slow model cannot pile requests (and their memory)
        up behind it; the caller retries after the RetryInfo delay."""
        if self._running >= self.settings.concurrency:
            raise LimitExceeded(
                f"{self._running} requests are being planned by the language model, the most "
                "this server plans at once; retry shortly",
                reason=Reason.PLANNING_BUSY,
                metadata={"limit": str(self.settings.concurrency)},
                retry_delay_s=1.0,
            )
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1

    def timeout_s(self, situation: Situation) -> float:
        """The time this planning may take: the setting, less when the request's deadline is
        nearer (at least a millisecond: an expired deadline fails the first call at once)."""
        limit = self.settings.timeout_s
        if situation.deadline is not None:
            limit = min(limit, situation.deadline - time.monotonic())
        return max(limit, 0.001)

    async def classify(self, text: str, *, timeout_s: float) -> Classification:
        return await self._router.classify(text, timeout_s=timeout_s)

    async def _recall(
        self, text: str, situation: Situation, timeout_s: float
    ) -> tuple[Sequence[Any], Sequence[Any]]:
        """Similar past jobs and the conversation's recent entries, for the prompt. Best
        effort: a memory that fails or is slow (half the planning time at most) costs the
        prompt its examples, never the request."""
        memories: Sequence[Any] = ()
        conversation: Sequence[Any] = ()
        if not situation.tenant:
            return memories, conversation
        try:
            async with asyncio.timeout(timeout_s / 2):
                if self.memories.semantic is not None:
                    memories = await self.memories.semantic.search(
                        situation.tenant, text, k=MEMORY_HITS
                    )
                if situation.conversation_id and self.memories.conversation is not None:
                    conversation = await self.memories.conversation.recent(
                        situation.tenant, situation.conversation_id, limit=CONVERSATION_ENTRIES
                    )
        except Exception as error:  # any memory failure: plan without it
            _log.warning("planning without memory: %s", error)
        return memories, conversation

    async def plan_tasks(
        self,
        text: str,
        *,
        context: Mapping[str, Any],
        situation: Situation,
        timeout_s: float,
    ) -> PlannedTasks:
        """The LLM task planner's checked tasks (PlanRefused, LLMError otherwise); with no
        time left (the router took it all) LLMTimeoutError without a call."""
        if timeout_s <= 0:
            raise LLMTimeoutError("no time left to plan the tasks before the deadline")
        actions = (
            await situation.agents() if situation.agents is not None else ActionCatalog.build()
        )
        memories, conversation = await self._recall(text, situation, timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                return await self._planner.plan(
                    text,
                    actions=actions,
                    timeout_s=timeout_s,
                    context=dict(context),
                    policy=situation.policy,
                    memories=memories,
                    conversation=conversation,
                )
        except TimeoutError:
            raise LLMTimeoutError(f"planning took longer than {timeout_s:.1f} s") from None
