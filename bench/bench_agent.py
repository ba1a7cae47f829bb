"""A benchmark agent process: the built-in actions plus `stamp`, which records when it started.

`python bench/bench_agent.py --server HOST:PORT --agent-id ID --slots N`
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from cpa_agent import Agent, AgentSettings, ExecutionContext, builtin_registry


class Stamp:
    """Returns the wall-clock time (ns) at which the agent started the attempt."""

    action = "stamp"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {"started_ns": str(time.time_ns())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--agent-id", required=True)
    parser.add_argument("--slots", type=int, default=64)
    arguments = parser.parse_args()
    registry = builtin_registry()
    registry.register(Stamp())
    settings = AgentSettings(
        server=arguments.server, agent_id=arguments.agent_id, slots=arguments.slots
    )
    Agent(settings=settings, registry=registry).run()


if __name__ == "__main__":
    main()
