"""`python -m cpa_agent`: runs an agent with the executors of the `cpa.executors` entry points,
configured by CPA_AGENT_* (CPA_AGENT_EXECUTORS chooses the entry points)."""

from cpa_agent.agent import Agent
from cpa_agent.settings import AgentSettings
from cpa_agent.telemetry import tracing


def main() -> None:
    settings = AgentSettings()
    tracing.configure_logging(settings)
    Agent(settings=settings).run()


if __name__ == "__main__":
    main()
