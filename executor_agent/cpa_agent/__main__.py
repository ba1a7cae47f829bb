"""`python -m cpa_agent`: runs an agent with the executors of the `cpa.executors` entry points,
configured by CPA_AGENT_* (CPA_AGENT_EXECUTORS chooses the entry points)."""

from cpa_agent import telemetry
from cpa_agent.agent import Agent
from cpa_agent.settings import AgentSettings


def main() -> None:
    settings = AgentSettings()
    telemetry.configure_logging(settings)
    Agent(settings=settings).run()


if __name__ == "__main__":
    main()
