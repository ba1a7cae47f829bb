"""Model answers as the loopback server sends them (JSON text of IntentChoice / TaskPlan)."""

from __future__ import annotations

import json
from typing import Any

from tests.support.openai_server import Reply, json_reply


def intent(name: str, confidence: float, **parameters: str) -> Reply:
    return json_reply(
        {
            "intent": name,
            "confidence": confidence,
            "parameters": [{"name": k, "value": v} for k, v in parameters.items()],
        }
    )


def step(
    id: str, action: str, params: Any = None, *, depends_on: tuple[str, ...] = (), **more: Any
) -> dict[str, Any]:
    return {
        "id": id,
        "action": action,
        "description": f"step {id}",
        "params_json": json.dumps(params or {}),
        "selector": None,
        "text": "",
        "depends_on": list(depends_on),
        "inputs": [],
        **more,
    }


def plan(*steps: dict[str, Any], reasoning: str = "because") -> Reply:
    return json_reply({"reasoning": reasoning, "tasks": list(steps)})


# A plan that is valid on the built-in executors: greet, then pause, then echo the greeting.
GOOD_STEPS = (
    step("greet", "echo", {"greeting": "hello"}),
    step("pause", "wait", {"seconds": 0}, depends_on=("greet",)),
    step(
        "repeat",
        "echo",
        depends_on=("pause",),
        inputs=[{"name": "said", "task_id": "greet", "output_key": "greeting"}],
    ),
)
