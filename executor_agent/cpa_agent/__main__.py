"""`python -m cpa_agent`: runs an agent with the executors of the `cpa.executors` entry points,
configured by CPA_AGENT_* (CPA_AGENT_EXECUTORS chooses the entry points)."""

import logging

from cpa_agent.agent import Agent
from cpa_agent.settings import AgentSettings


def main() -> None:
    settings = AgentSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    Agent(settings=settings).run()


if __name__ == "__main__":
    main()
