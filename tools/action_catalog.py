"""Writes the planner's action catalog (server/cpa_scheduler/planning/actions.json) from the
executors' parameter models.

The server never imports the agent (DESIGN.md, the walls), so the schemas an LLM plan is checked
against are generated here, from the agent's executors, and shipped with the server;
tests/planning_llm/test_action_catalog.py fails when the two drift. Run after changing an
executor's params_model:  python tools/action_catalog.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "server" / "cpa_scheduler" / "planning" / "actions.json"


def catalog() -> dict[str, Any]:
    """{action: {description, params_schema}} of every executor the agent's entry points load
    here, sorted by action."""
    sys.path[:0] = [str(ROOT / "executor_agent"), str(ROOT / "server")]
    from cpa_agent.executors.discovery import discover

    registry = discover().registry
    executors: dict[str, type] = {a: type(registry.get(a)) for a in registry.actions()}
    for executor_class in _needing_settings():
        executors.setdefault(executor_class.action, executor_class)  # type: ignore[attr-defined]
    actions: dict[str, Any] = {}
    for action in sorted(executors):
        model = getattr(executors[action], "params_model", None)
        schema: dict[str, Any] = (
            model.model_json_schema() if model is not None else {"type": "object"}
        )
        doc = (executors[action].__doc__ or "").strip().splitlines()
        actions[action] = {
            "description": doc[0] if doc else "",
            "params_schema": schema,
        }
    return actions


def _needing_settings() -> list[type]:
    """Executors whose entry point loads only with settings this machine need not have (mail:
    the Entra tenant and client), taken by class: their parameters are the same."""
    from cpa_agent.executors.mail.actions import (
        ReadMailExecutor,
        SearchMailExecutor,
        SendMailExecutor,
    )

    return [SendMailExecutor, ReadMailExecutor, SearchMailExecutor]


def render() -> str:
    return json.dumps(catalog(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
