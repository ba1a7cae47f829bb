"""`cpa plan`: route a request and print the task graph it would run, without running it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf import json_format

from cpa_scheduler.api import convert
from cpa_scheduler.domain import ToDo
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
        description="Route TEXT (or --intent NAME) through the intent catalog and print the "
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
    settings = Settings()
    planner = Planner.from_settings(settings)
    plan = planner.plan(request, context=pairs(arguments.context, "--context"))
    if arguments.json:
        message = convert.plan_to_preview_proto(plan)
        print(json_format.MessageToJson(message, preserving_proto_field_name=True))
    else:
        print(render(plan))
    return 0 if plan.matched else EXIT_UNKNOWN_INTENT


def render(plan: Plan) -> str:
    """The plan as a person reads it: intent, parameters, steps that run together, then tasks."""
    if plan.graph is None:
        lines = ["intent      unknown (no intent matched)"]
        if plan.candidates:
            closest = ", ".join(f"{c.intent} ({c.score:.2f})" for c in plan.candidates)
            lines.append(f"closest     {closest}")
        return "\n".join(lines)
    graph = plan.graph
    batches = graph.parallel_batches()
    lines = [f"intent      {plan.intent or '(explicit ToDos)'}"]
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


def _task_line(todo: ToDo, id_width: int, action_width: int) -> str:
    after = f"after {', '.join(todo.depends_on)}" if todo.depends_on else "first"
    return f"  {todo.id:<{id_width}}  {todo.action:<{action_width}}  {todo.description}  [{after}]"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
