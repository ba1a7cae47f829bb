"""Prints what the LLM planning path costs the scheduler itself, the model's time aside:
rendering the prompts, parsing a model's TaskPlan answer and checking it (actions, JSON schemas,
selectors, graph, policy), for plans of 3, 50 and 250 tasks (a TaskPlan holds at most 256).
Memory retrieval is measured by the memory work's own bench.

Run: PYTHONPATH=server:executor_agent .venv/bin/python bench/bench_planning.py
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from cpa_scheduler.memory.interface import MemoryHit, MemoryRecord
from cpa_scheduler.planning import load_default_catalog, prompts
from cpa_scheduler.planning.actions import ActionCatalog
from cpa_scheduler.planning.prompts import Prompts
from cpa_scheduler.planning.task_plan import TaskPlan, check
from cpa_scheduler.policy import parse_policy

RUNS = 200
POLICY = parse_policy(
    "actions: {deny: [uia]}\nurls: {allow: [portal.example, '*.intranet.example']}\n",
    source="bench.yaml",
)


def timed(work: Callable[[], object], runs: int = RUNS) -> tuple[float, float]:
    """Median and 99th percentile of `runs` runs, in milliseconds."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def answer(tasks: int) -> str:
    """A model's TaskPlan answer: a chain of echo/wait tasks, each taking an input upstream."""
    steps: list[dict[str, Any]] = []
    for index in range(tasks):
        action = "wait" if index % 2 else "echo"
        params = {"seconds": 0} if action == "wait" else {"greeting": f"hello {index}"}
        steps.append(
            {
                "id": f"t{index}",
                "action": action,
                "description": f"step {index}",
                "params_json": json.dumps(params),
                "selector": None,
                "text": "",
                "depends_on": [f"t{index - 1}"] if index else [],
                "inputs": [{"name": "said", "task_id": "t0", "output_key": "greeting"}]
                if index >= 2
                else [],
            }
        )
    return json.dumps({"reasoning": "a chain", "tasks": steps})


def main() -> None:
    catalog = load_default_catalog()
    actions = ActionCatalog.build([(["echo", "wait", "noop", "playwright"], ["browser:chromium"])])
    memories = [
        MemoryHit(
            record=MemoryRecord(
                memory_id=f"m{i}",
                tenant="t",
                text=f"similar request {i}",
                plan=[{"id": "a", "action": "echo"}],
            ),
            score=0.9,
        )
        for i in range(5)
    ]
    rows = []
    rows.append(("prompts of a catalog (once per planner)", timed(lambda: Prompts.of(catalog))))
    classification = Prompts.of(catalog)
    rows.append(
        ("classification prompt per request", timed(lambda: classification.classification("x")))
    )
    rows.append(
        (
            "planning prompt (4 actions, policy, 5 memories)",
            timed(
                lambda: prompts.planning(
                    "mail the invoice", actions=actions, policy=POLICY, memories=memories
                )
            ),
        )
    )
    for tasks in (3, 50, 250):
        text = answer(tasks)
        parsed = TaskPlan.model_validate_json(text)
        rows.append(
            (
                f"parse a {tasks}-task answer",
                timed(functools.partial(TaskPlan.model_validate_json, text)),
            )
        )
        rows.append(
            (
                f"check a {tasks}-task plan (policy included)",
                timed(
                    functools.partial(
                        check, parsed, actions=actions, max_tasks=10_000, policy=POLICY
                    ),
                    runs=RUNS if tasks < 250 else 50,
                ),
            )
        )
    print(f"{'what':<48} {'median ms':>10} {'p99 ms':>10}")
    for label, (median, p99) in rows:
        print(f"{label:<48} {median:>10.3f} {p99:>10.3f}")


if __name__ == "__main__":
    main()
