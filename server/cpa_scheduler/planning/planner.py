"""Planner: turns any form of request (text, an intent by name, explicit ToDos) into a checked plan.

One entry point for ScheduleJob, PreviewPlan, LAM requests and the CLI, so they cannot disagree.
`plan` is the rules alone (synchronous); `plan_async` adds the language model for free text when
a provider is configured (llm_planning.py) and is otherwise `plan`: ToDos and intent names never
reach the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cpa_scheduler.domain import (
    DomainError,
    InvalidArgument,
    Reason,
    TaskGraph,
    ToDo,
    with_default_sessions,
)
from cpa_scheduler.llm.errors import as_domain_error
from cpa_scheduler.llm.interface import LLMError, LLMProvider, Usage
from cpa_scheduler.settings import Settings

from .catalog_loading import load_catalog
from .intent_catalog import UNKNOWN_INTENT
from .intent_router import Candidate, RuleIntentRouter
from .llm_planner import Attempt, PlanRefused
from .llm_planning import LLMPlanning, Memories, PlanningLimits, RenderedPrompt, Situation
from .templates import RenderLimits

# Plan.decided_by: who turned the request into tasks.
BY_REQUEST = ""  # ToDos or an intent named in the request
BY_RULES = "rules"
BY_LLM_ROUTER = "llm_router"
BY_LLM_PLANNER = "llm_planner"


@dataclass(frozen=True, slots=True)
class TextRequest:
    """Natural-language text to be routed to an intent."""

    text: str


@dataclass(frozen=True, slots=True)
class IntentRequest:
    """An intent named directly, with its parameters."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TodoRequest:
    """Explicit steps: no routing, only the graph checks."""

    todos: Sequence[ToDo]


PlanRequest = TextRequest | IntentRequest | TodoRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A checked task graph and how it was reached; `graph` is None when no intent matched."""

    intent: str
    graph: TaskGraph | None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    matched_pattern: str = ""
    candidates: tuple[Candidate, ...] = ()
    decided_by: str = BY_REQUEST
    """BY_RULES, BY_LLM_ROUTER, BY_LLM_PLANNER, or BY_REQUEST for ToDos and intent names."""
    decision_reason: str = ""
    """Why that one decided (the LLM router's confidence, why the rules took over...)."""
    reasoning: str = ""
    """The LLM task planner's explanation of its plan."""
    attempts: tuple[Attempt, ...] = ()
    """The LLM task planner's proposals and their problems, in order (the last one accepted)."""
    usage: Usage = field(default_factory=Usage)
    """Tokens the model used for this plan, all calls together."""
    prompts: tuple[RenderedPrompt, ...] = ()
    """The prompts sent to the model, as rendered (for PreviewPlan)."""

    @property
    def matched(self) -> bool:
        return self.graph is not None


class Planner:
    """Routes and expands requests with the rule router and checks the result as a TaskGraph;
    with `llm`, free text goes to the model first (plan_async)."""

    __slots__ = ("_llm", "_max_tasks", "_router")

    def __init__(
        self, router: RuleIntentRouter, *, max_tasks: int, llm: LLMPlanning | None = None
    ) -> None:
        self._router = router
        self._max_tasks = max_tasks
        self._llm = llm

    def use_memories(self, memories: Memories) -> None:
        """Let the model's planning read these memories (opened after the planner, with the
        store): similar past jobs as examples and warnings, the conversation as context."""
        if self._llm is not None:
            self._llm.memories = memories

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        provider: LLMProvider | None = None,
        memories: Memories | None = None,
    ) -> Planner:
        """The planner of `settings`: their catalog (OSError or CatalogError if it cannot be
        loaded) and their limits; with `provider`, free text is planned with it too."""
        router = RuleIntentRouter(
            load_catalog(settings.intents_path),
            max_text_bytes=settings.routing_text_max_bytes,
            render_limits=RenderLimits(
                max_bytes=settings.template_render_max_bytes,
                max_steps=settings.template_render_max_steps,
            ),
        )
        llm = None
        if provider is not None:
            llm = LLMPlanning(
                provider=provider,
                catalog=router.catalog,
                settings=PlanningLimits(
                    min_confidence=settings.planning_llm_min_confidence,
                    repair_attempts=settings.planning_llm_repair_attempts,
                    concurrency=settings.planning_llm_concurrency,
                    timeout_s=settings.planning_llm_timeout_s,
                ),
                max_tasks=settings.max_tasks_per_job,
                memories=memories or Memories(),
            )
        return cls(router, max_tasks=settings.max_tasks_per_job, llm=llm)

    @property
    def uses_llm(self) -> bool:
        return self._llm is not None

    def plan(
        self,
        request: PlanRequest,
        *,
        context: Mapping[str, Any] | None = None,
        credential_refs: Mapping[str, str] | None = None,
    ) -> Plan:
        """Plan `request`; raises InvalidArgument for bad input, returns an unmatched Plan for
        text that fits no intent (callers decide whether that is an error). `credential_refs`
        (a LAM request's Security.credential_refs) go to every ToDo that does not name the
        purpose itself."""
        refs = credential_refs or {}
        match request:
            case TextRequest(text=text):
                routed = self._router.route(text, context=context)
                if not routed.matched:
                    return Plan(intent=UNKNOWN_INTENT, graph=None, candidates=routed.candidates)
                return Plan(
                    intent=routed.intent,
                    graph=self._graph(routed.todos, refs, field="text"),
                    parameters=routed.parameters,
                    matched_pattern=routed.matched_pattern,
                )
            case IntentRequest(name=name, parameters=parameters):
                todos = self._router.expand(name, parameters, context=context)
                return Plan(
                    intent=name,
                    graph=self._graph(todos, refs, field="intent"),
                    parameters=dict(parameters),
                )
            case TodoRequest(todos=todos):
                return Plan(intent="", graph=self._graph(todos, refs, field="todos"))

    async def plan_async(
        self,
        request: PlanRequest,
        *,
        context: Mapping[str, Any] | None = None,
        credential_refs: Mapping[str, str] | None = None,
        situation: Situation | None = None,
    ) -> Plan:
        """`plan`, with the model for free text when one is configured (llm_planning.py says
        who decides when). Beyond `plan`'s errors: LimitExceeded(PLANNING_BUSY) when too many
        texts are being planned, PlanRefused(PLAN_INVALID) when the model's plan stays
        invalid, and LLM_* domain errors (llm/errors.py) when the planner's model gives no
        usable answer."""
        if not isinstance(request, TextRequest) or self._llm is None:
            return self.plan(request, context=context, credential_refs=credential_refs)
        self._router.check_text(request.text)
        llm, situation = self._llm, situation or Situation()
        with llm.admitted():
            timeout_s = llm.timeout_s(situation)
            started = time.monotonic()
            chosen = await llm.classify(request.text, timeout_s=timeout_s)
            prompts = (RenderedPrompt(name="intent", messages=chosen.messages),)
            reason = chosen.reason
            if chosen.intent is not None:
                try:
                    plan = self.plan(
                        IntentRequest(chosen.intent, chosen.parameters),
                        context=context,
                        credential_refs=credential_refs,
                    )
                except DomainError as error:
                    reason = f"{reason}, but the intent refused its parameters: {error.message}"
                else:
                    return dataclasses.replace(
                        plan,
                        decided_by=BY_LLM_ROUTER,
                        decision_reason=reason,
                        usage=chosen.usage,
                        prompts=prompts,
                    )
            ruled = self.plan(request, context=context, credential_refs=credential_refs)
            if ruled.matched:
                return dataclasses.replace(
                    ruled,
                    decided_by=BY_RULES,
                    decision_reason=f"{reason}; the rule router decided",
                    usage=chosen.usage,
                    prompts=prompts,
                )
            remaining = timeout_s - (time.monotonic() - started)
            try:
                planned = await llm.plan_tasks(
                    request.text, context=context or {}, situation=situation, timeout_s=remaining
                )
            except PlanRefused as refused:
                refused.usage += chosen.usage
                raise
            except LLMError as error:
                raise as_domain_error(error, "text") from error
            return Plan(
                intent=UNKNOWN_INTENT,
                graph=self._graph(planned.todos, credential_refs or {}, field="text"),
                decided_by=BY_LLM_PLANNER,
                decision_reason=f"{reason}; no rule matched; the LLM task planner planned it",
                reasoning=planned.reasoning,
                attempts=planned.attempts,
                usage=chosen.usage + planned.usage,
                prompts=(*prompts, RenderedPrompt(name="plan", messages=planned.messages)),
            )

    def _graph(
        self, todos: Sequence[ToDo], credential_refs: Mapping[str, str], *, field: str
    ) -> TaskGraph:
        """The graph of `todos`; too many is PAYLOAD_TOO_LARGE naming `field`, what the caller
        sent (`todos`, or the `intent` or `text` the tasks were planned from)."""
        if credential_refs:
            todos = [todo.with_credential_defaults(credential_refs) for todo in todos]
        if len(todos) > self._max_tasks:
            raise InvalidArgument(
                f"a job may have at most {self._max_tasks} tasks, got {len(todos)}",
                reason=Reason.PAYLOAD_TOO_LARGE,
                field=field,
            )
        # Browser steps share the job's default session unless they name one: applied here, so
        # the job (GetJob) and its preview show it.
        return TaskGraph.from_todos(with_default_sessions(todos))
