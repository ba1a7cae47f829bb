"""`cpa plan`: route a request and print the task graph it would run, without running it.

With a language model configured (CPA_LLM_PROVIDER, as for the server), text is planned as the
server plans it (docs/PLANNING.md), and the output says who decided and why."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from google.protobuf import json_format

from cpa_scheduler.api import convert
from cpa_scheduler.domain import ToDo
from cpa_scheduler.llm.registry import provider_from_settings
from cpa_scheduler.planning import (
    IntentRequest,
    Plan,
    Planner,
    PlanRequest,
    TextRequest,
)
from cpa_scheduler.settings import Settings

from .common import CliError, pairs

EXIT_UNKNOWN_INTENT = 3


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "plan",
        help="show the task graph a request would run",
        description="Route TEXT (or --intent NAME) through the intent catalog, or with a "
        "language model configured (CPA_LLM_PROVIDER) through the model first, and print the "
        "planned task graph. Nothing is executed.",
    )
    parser.add_argument("text", nargs="?", help="the request in plain words")
    parser.add_argument("--intent", help="name an intent directly instead of routing text")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an intent parameter (repeatable; with --intent)",
    )
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a request context value available to templates (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the PreviewPlanResponse as JSON")
    parser.add_argument(
        "--prompts", action="store_true", help="also print the prompts sent to the model"
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    if (arguments.text is None) == (arguments.intent is None):
        raise CliError("plan: give either TEXT or --intent NAME")
    if arguments.param and arguments.intent is None:
        raise CliError("plan: --param goes with --intent")
    request: PlanRequest = (
        TextRequest(arguments.text)
        if arguments.text is not None
        else IntentRequest(arguments.intent, pairs(arguments.param, "--param"))
    )
    plan = asyncio.run(_plan(request, pairs(arguments.context, "--context")))
    if arguments.json:
        message = convert.plan_to_preview_proto(plan)
        print(json_format.MessageToJson(message, preserving_proto_field_name=True))
    else:
        print(render(plan, prompts=arguments.prompts))
    return 0 if plan.matched else EXIT_UNKNOWN_INTENT


async def _plan(request: PlanRequest, context: dict[str, Any]) -> Plan:
    settings = Settings()
    provider = provider_from_settings(settings)
    try:
        planner = Planner.from_settings(settings, provider=provider)
        return await planner.plan_async(request, context=context)
    finally:
        if provider is not None:
            await provider.aclose()


def render(plan: Plan, *, prompts: bool = False) -> str:
    """The plan as a person reads it: intent, parameters, steps that run together, then tasks;
    with a model, who decided and why first (and with `prompts` the prompts last)."""
    lines = _decision(plan)
    if prompts:
        for prompt in plan.prompts:
            for message in prompt.messages:
                lines += [f"--- prompt {prompt.name}, {message.role} ---", message.content]
    if plan.graph is None:
        lines.append("intent      unknown (no intent matched)")
        if plan.candidates:
            closest = ", ".join(f"{c.intent} ({c.score:.2f})" for c in plan.candidates)
            lines.append(f"closest     {closest}")
        return "\n".join(lines)
    graph = plan.graph
    batches = graph.parallel_batches()
    lines.append(f"intent      {plan.intent or '(explicit ToDos)'}")
    if plan.parameters:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in plan.parameters.items())
        lines.append(f"parameters  {shown}")
    lines.append(
        f"plan        {len(graph)} tasks in {len(batches)} steps "
        "(tasks of one step can run at the same time)"
    )
    lines += [f"  step {n}: {'  '.join(batch)}" for n, batch in enumerate(batches, 1)]
    lines.append("tasks")
    todos = graph.ordered_todos()
    id_width = max(len(t.id) for t in todos)
    action_width = max(len(t.action) for t in todos)
    lines += [_task_line(t, id_width, action_width) for t in todos]
    return "\n".join(lines)


def _decision(plan: Plan) -> list[str]:
    """Who decided and why, the model's reasoning, its attempts and tokens (none without one)."""
    if not plan.decided_by:
        return []
    lines = [f"decided by  {plan.decided_by}: {plan.decision_reason}"]
    if plan.reasoning:
        lines.append(f"reasoning   {plan.reasoning}")
    for number, attempt in enumerate(plan.attempts, 1):
        verdict = "accepted" if not attempt.problems else f"{attempt.total_problems} problem(s)"
        lines.append(f"attempt {number}   {verdict}")
        lines += [f"  {problem}" for problem in attempt.problems]
    usage = plan.usage
    lines.append(f"tokens      {usage.prompt_tokens} prompt, {usage.completion_tokens} answer")
    return lines


def _task_line(todo: ToDo, id_width: int, action_width: int) -> str:
    after = f"after {', '.join(todo.depends_on)}" if todo.depends_on else "first"
    return f"  {todo.id:<{id_width}}  {todo.action:<{action_width}}  {todo.description}  [{after}]"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
