"""Browser actions per second through one agent's browser executor (real Chromium).

N tasks of the `playwright` action, `--slots` at a time (as an agent with that many slots runs
them), each in its own session on the loopback portal's selectors page: a task is
`click` + `extract_text`, so two browser actions, each followed by its screenshot (the evidence
every op stores; kept in memory here). The page is opened once per session beforehand.

The executor is driven as the agent's runner drives it (an ExecutionContext per attempt), without
the scheduler in the loop: what is measured is the agent's browser side, the part that limits a
browser agent (a scheduler hop costs a few ms, see the other sections of PERFORMANCE.md).

Run: PYTHONPATH=server:executor_agent:clients/python .venv/bin/python bench/bench_browser.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # the portal: tests/fixtures

from cpa.common.v1 import todo_pb2  # noqa: E402
from cpa_agent.executors.base import ExecutionContext  # noqa: E402
from cpa_agent.executors.browser import BrowserSettings, browser_executors  # noqa: E402
from cpa_agent.executors.testing import MemoryArtifacts  # noqa: E402
from tests.fixtures.browser_portal import Portal, running_portal  # noqa: E402

OPS_PER_TASK = 2


def context(params: dict[str, Any], session: str, task: int) -> ExecutionContext:
    todo = todo_pb2.ToDo(id=f"t{task}", action=todo_pb2.ACTION_TYPE_PLAYWRIGHT)
    todo.params.update(params)
    return ExecutionContext(
        job_id="bench",
        task_id=todo.id,
        attempt=1,
        todo=todo,
        params=params,
        inputs={},
        deadline=None,
        session=session,
        artifacts=MemoryArtifacts(),
    )


async def run(portal: Portal, tasks: int, slots: int) -> None:
    executors = browser_executors(BrowserSettings())
    playwright = executors[0]
    sessions = [f"s{i}" for i in range(slots)]
    work: dict[str, Any] = {
        "steps": [
            {"op": "click", "selector": {"role": "button", "name": "Reveal"}},
            {"op": "extract_text", "selector": {"css": "#later"}, "as": "text"},
        ]
    }
    try:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                playwright.run(context({"op": "goto", "url": portal.url("/selectors")}, session, 0))
                for session in sessions
            )
        )
        print(f"launch + {slots} sessions opened: {time.perf_counter() - started:.2f} s")
        latencies: list[float] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for task in range(tasks):
            queue.put_nowait(task)

        async def worker(session: str) -> None:
            while not queue.empty():
                task = queue.get_nowait()
                began = time.perf_counter()
                outputs = await playwright.run(context(work, session, task))
                latencies.append(time.perf_counter() - began)
                assert outputs["texts"] == {"text": "revealed"}, outputs

        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for session in sessions))
        elapsed = time.perf_counter() - started
    finally:
        await playwright.aclose()
    latencies.sort()
    print(f"tasks {tasks}, slots {slots}, {OPS_PER_TASK} actions per task (each + screenshot)")
    print(f"elapsed {elapsed:.2f} s")
    print(f"tasks/s {tasks / elapsed:.1f}   actions/s {tasks * OPS_PER_TASK / elapsed:.1f}")
    print(
        f"task latency ms: median {1000 * statistics.median(latencies):.0f}, "
        f"p95 {1000 * latencies[int(0.95 * (len(latencies) - 1))]:.0f}, "
        f"max {1000 * latencies[-1]:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    arguments = parser.parse_args()
    with running_portal() as portal:
        asyncio.run(run(portal, arguments.tasks, arguments.slots))


if __name__ == "__main__":
    main()
