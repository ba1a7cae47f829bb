"""`cpa agents`: the agents connected to a scheduler (ListAgents), as a table or as JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf import json_format

from cpa.scheduler.v1 import agent_pb2
from cpa_client import SchedulerClient

from .common import add_server_option, emit
from .jobs_command import client_command
from .output import table

_STATE_PREFIX = "AGENT_STATE_"


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "agents",
        help="list the connected agents",
        description="List the agents connected to the scheduler (ListAgents): id, name, tenant, "
        "the actions and capabilities they offer, their labels, free slots and state. Only the "
        "agents of the caller's tenant are listed.",
    )
    parser.add_argument(
        "--filter",
        default="",
        metavar="F",
        help="AIP-160 filter, e.g. 'actions:\"playwright\"' or 'labels.site = \"berlin\"'",
    )
    parser.add_argument(
        "--output",
        "-o",
        choices=("table", "json"),
        default="table",
        help="table (default) or json: a JSON array of Agent messages (proto field names)",
    )
    add_server_option(parser)
    parser.set_defaults(run=client_command(_list))


async def _list(client: SchedulerClient, arguments: argparse.Namespace) -> int:
    agents = [agent async for agent in client.list_agents(filter=arguments.filter)]
    if arguments.output == "json":
        emit(
            json.dumps(
                [
                    json_format.MessageToDict(agent, preserving_proto_field_name=True)
                    for agent in agents
                ],
                indent=2,
            )
        )
        return 0
    if not agents:
        emit("no agents connected")
        return 0
    header = ("AGENT", "NAME", "TENANT", "STATE", "FREE", "ACTIONS", "CAPABILITIES", "LABELS")
    emit("\n".join(table(header, [_row(agent) for agent in agents])))
    return 0


def _row(agent: agent_pb2.Agent) -> tuple[str, ...]:
    capabilities = agent.capabilities
    return (
        agent.agent_id,
        agent.name or "-",
        agent.tenant,
        agent_pb2.AgentState.Name(agent.state).removeprefix(_STATE_PREFIX),
        f"{agent.free_credits}/{capabilities.slots}",
        ",".join(capabilities.actions) or "-",
        ",".join(capabilities.capabilities) or "-",
        ",".join(f"{k}={v}" for k, v in sorted(capabilities.labels.items())) or "-",
    )
