"""`python -m cpa_agent`: runs an agent with the executors of the `cpa.executors` entry points,
configured by CPA_AGENT_* (CPA_AGENT_EXECUTORS chooses the entry points)."""

import logging
import sys

from cpa_agent.agent import Agent
from cpa_agent.connection import HelloRefusedError
from cpa_agent.settings import AgentSettings
from cpa_agent.telemetry import tracing


def main() -> None:
    settings = AgentSettings()
    tracing.configure_logging(settings)
    try:
        Agent(settings=settings).run()
    except HelloRefusedError as error:
        logging.getLogger("cpa_agent").error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
