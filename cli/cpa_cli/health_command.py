"""`cpa health`: asks a scheduler (or a gateway in front of one) for its grpc.health.v1 status.

Made for container health checks (deploy/Dockerfile, docker-compose.yml): exit 0 when SERVING,
1 otherwise, one line saying why; nothing but the CLI's own usage errors exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cpa_client import CpaError, SchedulerClient, open_channel
from cpa_client.channels import tls_failure

from .common import CliError, add_server_option, client_tls, emit, warn
from .credentials import api_key_for

EXIT_SERVING = 0
EXIT_UNHEALTHY = 1
DEFAULT_TIMEOUT_S = 3.0


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "health",
        help="check that a scheduler serves (grpc.health.v1); exit 0 or 1",
        description="Call grpc.health.v1.Health/Check on the scheduler (directly, or through "
        "`cpa gateway`, which passes native gRPC to a healthy replica) and exit 0 when it "
        "answers SERVING, 1 when it answers anything else, is unreachable or does not answer "
        "within --timeout. With --agent-name, also require a connected agent of that name "
        "(ListAgents, any replica): the health check of an agent's container.",
    )
    add_server_option(parser)
    parser.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="service to ask about, e.g. cpa.scheduler.v1.SchedulerService (default: the "
        "server as a whole)",
    )
    parser.add_argument(
        "--agent-name",
        metavar="NAME",
        help="also require a connected agent whose name (CPA_AGENT_NAME, default its host "
        "name) is NAME",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for the answers (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    if not arguments.timeout > 0:
        raise CliError("health: --timeout must be > 0")
    if not arguments.server.strip():
        raise CliError("health: --server needs HOST:PORT")  # gRPC would only log noise
    problem = asyncio.run(_check(arguments))
    if problem:
        warn(f"cpa health: {arguments.server}: {problem}")
        return EXIT_UNHEALTHY
    emit(f"{arguments.server}: SERVING")
    return EXIT_SERVING


async def _check(arguments: argparse.Namespace) -> str:
    """What is wrong, or "" when all is well."""
    async with open_channel(arguments.server, tls=client_tls(arguments)) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=arguments.service),
                timeout=arguments.timeout,
                wait_for_ready=False,
            )
        except grpc.aio.AioRpcError as error:
            details = error.details() or "no details"
            meaning = tls_failure(details)
            return (
                f"{error.code().name}: {meaning}: {details}"
                if meaning
                else f"{error.code().name}: {details}"
            )
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        if arguments.agent_name is None:
            return ""
        client = SchedulerClient(
            arguments.server,
            channel=channel,
            timeout_s=arguments.timeout,
            api_key=api_key_for(arguments.server),
        )
        try:
            names = [agent.name async for agent in client.list_agents()]
        except CpaError as error:
            return f"ListAgents: {error.code.name}: {error.message}"
        if arguments.agent_name not in names:
            return f"SERVING, but no agent named {arguments.agent_name!r} is connected"
        return ""
