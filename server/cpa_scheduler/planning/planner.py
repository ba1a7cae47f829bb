"""Planner: turns any form of request (text, an intent by name, explicit ToDos) into a checked plan.

One entry point for ScheduleJob, PreviewPlan, LAM requests and the CLI, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cpa_scheduler.domain import InvalidArgument, Reason, TaskGraph, ToDo, with_default_sessions
from cpa_scheduler.settings import Settings

from .catalog_loading import load_catalog
from .intent_catalog import UNKNOWN_INTENT
from .intent_router import Candidate, RuleIntentRouter
from .templates import RenderLimits


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

    @property
    def matched(self) -> bool:
        return self.graph is not None


class Planner:
    """Routes and expands requests with the rule router and checks the result as a TaskGraph."""

    __slots__ = ("_max_tasks", "_router")

    def __init__(self, router: RuleIntentRouter, *, max_tasks: int) -> None:
        self._router = router
        self._max_tasks = max_tasks

    @classmethod
    def from_settings(cls, settings: Settings) -> Planner:
        """The planner of `settings`: their catalog (OSError or CatalogError if it cannot be
        loaded) and their limits."""
        router = RuleIntentRouter(
            load_catalog(settings.intents_path),
            max_text_bytes=settings.routing_text_max_bytes,
            render_limits=RenderLimits(
                max_bytes=settings.template_render_max_bytes,
                max_steps=settings.template_render_max_steps,
            ),
        )
        return cls(router, max_tasks=settings.max_tasks_per_job)

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
                    graph=self._graph(routed.todos, refs),
                    parameters=routed.parameters,
                    matched_pattern=routed.matched_pattern,
                )
            case IntentRequest(name=name, parameters=parameters):
                todos = self._router.expand(name, parameters, context=context)
                return Plan(
                    intent=name, graph=self._graph(todos, refs), parameters=dict(parameters)
                )
            case TodoRequest(todos=todos):
                return Plan(intent="", graph=self._graph(todos, refs))

    def _graph(self, todos: Sequence[ToDo], credential_refs: Mapping[str, str]) -> TaskGraph:
        if credential_refs:
            todos = [todo.with_credential_defaults(credential_refs) for todo in todos]
        if len(todos) > self._max_tasks:
            raise InvalidArgument(
                f"a job may have at most {self._max_tasks} tasks, got {len(todos)}",
                reason=Reason.PAYLOAD_TOO_LARGE,
                field="todos",
            )
        # Browser steps share the job's default session unless they name one: applied here, so
        # the job (GetJob) and its preview show it.
        return TaskGraph.from_todos(with_default_sessions(todos))
