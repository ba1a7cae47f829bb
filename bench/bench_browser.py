"""Browser actions per second per agent (real Chromium, the loopback portal's selectors page).

A task is `click` + `extract_text`: two browser actions, each followed by its screenshot (the
evidence every op stores). `--slots` sessions run side by side, as an agent with that many slots
runs them; the page is opened once per session first (a `goto` task).

1. The executor alone: `--tasks` tasks driven as the agent's runner drives them (a context per
   attempt, screenshots kept in memory): the agent's browser side by itself.
2. Through a scheduler and an agent over gRPC (both in this process, the scheduler embedded):
   `--slots` jobs of one session each, a `goto` task then `--tasks / --slots` chained tasks,
   their screenshots uploaded to the scheduler as artifacts.

Run: PYTHONPATH=server:executor_agent:clients/python .venv/bin/python bench/bench_browser.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # the portal: tests/fixtures

from cpa.common.v1 import todo_pb2  # noqa: E402
from cpa.scheduler.v1 import job_pb2  # noqa: E402
from cpa_agent import Agent, AgentSettings, builtin_registry  # noqa: E402
from cpa_agent.executors.base import ExecutionContext, Executor  # noqa: E402
from cpa_agent.executors.browser import BrowserSettings, browser_executors  # noqa: E402
from cpa_agent.executors.testing import MemoryArtifacts, make_context  # noqa: E402
from cpa_client import SchedulerClient  # noqa: E402
from cpa_scheduler.server import SchedulerServer  # noqa: E402
from cpa_scheduler.settings import Settings  # noqa: E402
from tests.fixtures.browser_portal import Portal, running_portal  # noqa: E402

OPS_PER_TASK = 2
WORK: dict[str, Any] = {
    "steps": [
        {"op": "click", "selector": {"role": "button", "name": "Reveal"}},
        {"op": "extract_text", "selector": {"css": "#later"}, "as": "text"},
    ]
}


def context(
    executor: Executor, params: dict[str, Any], session: str, task: int
) -> ExecutionContext:
    """The context the agent's runner would build (params validated by the executor's model)."""
    todo = todo_pb2.ToDo(id=f"t{task}", action=todo_pb2.ACTION_TYPE_PLAYWRIGHT)
    todo.params.update(params)
    return make_context(executor, todo=todo, session=session, artifacts=MemoryArtifacts())


async def run(portal: Portal, tasks: int, slots: int) -> None:
    executors = browser_executors(BrowserSettings())
    playwright = executors[0]
    sessions = [f"s{i}" for i in range(slots)]
    try:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                playwright.run(
                    context(playwright, {"op": "goto", "url": portal.url("/selectors")}, session, 0)
                )
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
                outputs = await playwright.run(context(playwright, WORK, session, task))
                latencies.append(time.perf_counter() - began)
                assert outputs["texts"] == {"text": "revealed"}, outputs

        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for session in sessions))
        elapsed = time.perf_counter() - started
    finally:
        await playwright.aclose()
    report("executor alone", tasks, slots, elapsed, latencies)


def report(title: str, tasks: int, slots: int, elapsed: float, latencies: list[float]) -> None:
    latencies.sort()
    print(f"== {title}: {tasks} tasks, {slots} slots, {OPS_PER_TASK} actions per task")
    print(f"elapsed {elapsed:.2f} s")
    print(f"tasks/s {tasks / elapsed:.1f}   actions/s {tasks * OPS_PER_TASK / elapsed:.1f}")
    if latencies:
        print(
            f"task latency ms: median {1000 * statistics.median(latencies):.0f}, "
            f"p95 {1000 * latencies[int(0.95 * (len(latencies) - 1))]:.0f}, "
            f"max {1000 * latencies[-1]:.0f}"
        )


def _job(portal: Portal, chain: int) -> job_pb2.JobSpec:
    todos = [todo_pb2.ToDo(id="open", action=todo_pb2.ACTION_TYPE_PLAYWRIGHT)]
    todos[0].params.update({"op": "goto", "url": portal.url("/selectors")})
    for index in range(chain):
        todo = todo_pb2.ToDo(
            id=f"t{index}",
            action=todo_pb2.ACTION_TYPE_PLAYWRIGHT,
            depends_on=[todos[-1].id],
        )
        todo.params.update(WORK)
        todos.append(todo)
    return job_pb2.JobSpec(todos=job_pb2.TodoList(todos=todos))


async def through_scheduler(portal: Portal, tasks: int, slots: int, data_dir: Path) -> None:
    server = SchedulerServer(Settings(data_dir=data_dir, log_level="WARNING"))
    port = await server.start("127.0.0.1:0")
    executors = browser_executors(BrowserSettings())
    registry = builtin_registry()
    for executor in executors:
        registry.register(executor)
    agent = Agent(
        settings=AgentSettings(server=f"127.0.0.1:{port}", agent_id="bench-browser", slots=slots),
        registry=registry,
    )
    running = asyncio.create_task(agent.async_run())
    chain = max(1, tasks // slots)
    try:
        await asyncio.wait_for(agent.connected.wait(), 30)
        async with SchedulerClient(f"127.0.0.1:{port}", timeout_s=60) as client:
            # The browser is launched by the first task; measure from a warm one.
            warm = await client.schedule_job(_job(portal, 0))
            async for _ in client.watch_job(warm.job.job_id):
                pass
            started = time.perf_counter()
            jobs = [await client.schedule_job(_job(portal, chain)) for _ in range(slots)]

            async def done(job_id: str) -> None:
                async for _ in client.watch_job(job_id):
                    pass

            await asyncio.gather(*(done(job.job.job_id) for job in jobs))
            elapsed = time.perf_counter() - started
            for job in jobs:
                final = await client.get_job(job.job.job_id)
                assert final.state == job_pb2.JOB_STATE_SUCCEEDED, final
                # Every op's screenshot reached the scheduler as an artifact of its task.
                assert all(len(t.artifacts) == OPS_PER_TASK for t in final.tasks[1:]), final
    finally:
        agent.request_drain("bench done")
        await asyncio.wait_for(running, 30)
        await executors[0].aclose()
        await server.stop(grace_s=1.0)
    # The goto tasks count as one action each, not as tasks of the workload.
    report("through scheduler and agent (gRPC)", chain * slots, slots, elapsed, [])
    print(f"(plus {slots} goto tasks; {chain} chained tasks per session)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    arguments = parser.parse_args()
    with running_portal() as portal, tempfile.TemporaryDirectory() as data_dir:
        asyncio.run(run(portal, arguments.tasks, arguments.slots))
        asyncio.run(through_scheduler(portal, arguments.tasks, arguments.slots, Path(data_dir)))


if __name__ == "__main__":
    main()
