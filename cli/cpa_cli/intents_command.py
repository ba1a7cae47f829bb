"""`cpa intents list|show`: the intent catalog the scheduler plans with.

There is no RPC for the catalog: like `cpa plan`, these commands read the catalog file the
server's own setting names (CPA_INTENTS_PATH, default the shipped planning/intents.yaml), so run
them where the server's configuration is (same environment or .env).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cpa_scheduler.planning import Intent, IntentCatalog, load_catalog
from cpa_scheduler.planning.intent_catalog import TaskTemplate
from cpa_scheduler.settings import Settings

from .common import CliError, emit
from .output import table

_WHERE = (
    "The catalog is the file CPA_INTENTS_PATH names (the server's setting; default: the "
    "catalog shipped with the package), read here, not asked from a running server: run it "
    "with the server's environment."
)


def register(commands: Any) -> None:
    intents: argparse.ArgumentParser = commands.add_parser(
        "intents",
        help="list or show the intents of the catalog",
        description="The intents requests can name or be routed to. " + _WHERE,
    )
    actions = intents.add_subparsers(dest="intents_command", required=True, metavar="ACTION")
    listing: argparse.ArgumentParser = actions.add_parser(
        "list",
        help="list the intents",
        description="Every intent of the catalog, in the order the router tries them. " + _WHERE,
    )
    _add_common(listing)
    listing.set_defaults(run=_list)
    show: argparse.ArgumentParser = actions.add_parser(
        "show",
        help="show one intent",
        description="An intent's description, patterns, parameters and tasks (templates "
        "unrendered). " + _WHERE,
    )
    show.add_argument("name", metavar="NAME")
    _add_common(show)
    show.set_defaults(run=_show)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        "-o",
        choices=("table", "json"),
        default="table",
        help="table (default) or json",
    )


def _catalog() -> IntentCatalog:
    path = Settings().intents_path
    try:
        return load_catalog(path)
    except OSError as error:
        raise CliError(f"cannot read the intent catalog {path}: {error.strerror}") from None


def _list(arguments: argparse.Namespace) -> int:
    catalog = _catalog()
    if arguments.output == "json":
        emit(json.dumps([_summary(intent) for intent in catalog.intents], indent=2))
        return 0
    rows = [
        (
            intent.name,
            ",".join(sorted({task.action for task in intent.tasks})),
            intent.description,
        )
        for intent in catalog.intents
    ]
    emit(f"catalog {catalog.source}")
    emit("\n".join(table(("INTENT", "ACTIONS", "DESCRIPTION"), rows)))
    return 0


def _show(arguments: argparse.Namespace) -> int:
    catalog = _catalog()
    intent = catalog.get(arguments.name)
    if intent is None:
        raise CliError(
            f"no intent {arguments.name!r} in {catalog.source} (known: "
            f"{', '.join(catalog.names) or 'none'})"
        )
    if arguments.output == "json":
        emit(json.dumps(_detail(intent), indent=2))
        return 0
    emit(f"intent      {intent.name}")
    emit(f"description {intent.description}")
    emit(f"defined at  {catalog.source}:{intent.line}")
    emit("patterns")
    for pattern in intent.patterns:
        emit(f"  {pattern.description}")
    emit("parameters")
    if intent.parameters:
        parameter_rows: list[tuple[str, ...]] = [
            (
                p.name,
                "yes" if p.required else "no",
                json.dumps(p.default) if p.has_default else "-",
                p.description,
            )
            for p in intent.parameters
        ]
        columns = ("NAME", "REQUIRED", "DEFAULT", "DESCRIPTION")
        emit("\n".join(table(columns, parameter_rows, indent="  ")))
    else:
        emit("  none")
    emit("tasks")
    task_rows: list[tuple[str, ...]] = [
        (
            task.id,
            task.action,
            ",".join(task.depends_on) or "-",
            ",".join(sorted(task.required_capabilities)) or "-",
            ",".join(sorted(task.credential_refs)) or "-",
        )
        for task in intent.tasks
    ]
    header = ("TASK", "ACTION", "AFTER", "CAPABILITIES", "CREDENTIALS")
    emit("\n".join(table(header, task_rows, indent="  ")))
    return 0


def _summary(intent: Intent) -> dict[str, Any]:
    return {
        "name": intent.name,
        "description": intent.description,
        "actions": sorted({task.action for task in intent.tasks}),
    }


def _detail(intent: Intent) -> dict[str, Any]:
    return {
        **_summary(intent),
        "line": intent.line,
        "patterns": [{"kind": p.kind, "source": p.source} for p in intent.patterns],
        "parameters": [
            {
                "name": p.name,
                "required": p.required,
                **({"default": p.default} if p.has_default else {}),
                "description": p.description,
            }
            for p in intent.parameters
        ],
        "tasks": [_task(task) for task in intent.tasks],
    }


def _task(task: TaskTemplate) -> dict[str, Any]:
    return {
        "id": task.id,
        "action": task.action,
        "depends_on": list(task.depends_on),
        "required_capabilities": sorted(task.required_capabilities),
        "required_labels": dict(task.required_labels),
        # Purposes only: the references are templates, and name no secret anyway.
        "credential_purposes": sorted(task.credential_refs),
    }
