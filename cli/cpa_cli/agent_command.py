"""`cpa agent`: run an executor agent with the entry-point executors; SIGTERM/SIGINT drain it."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cpa_agent import Agent, AgentSettings
from cpa_agent.connection import HelloRefusedError
from cpa_agent.telemetry import tracing

from .common import CliError, add_pair_option, emit, pairs
from .serve_command import AGENT_CONNECTED_LINE


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "agent",
        help="run an executor agent connected to a scheduler",
        description="Connect to the scheduler and run the ToDos it assigns with the executors "
        "of the installed `cpa.executors` entry points (ours: builtin = noop, echo, wait, fail; "
        "CPA_AGENT_EXECUTORS=builtin,browser chooses), reconnecting when the connection drops. "
        "Credential references resolve from env:NAME, file:/path or CPA_SECRET_<NAME> and "
        "CPA_AGENT_SECRETS_DIR. SIGTERM or "
        "SIGINT drains the agent: it takes no new work, finishes what runs, then exits 0. "
        "Prints 'cpa agent ID connected to HOST:PORT' once the scheduler welcomed it. Other "
        "settings come from CPA_AGENT_* environment variables.",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="scheduler address (default: $CPA_AGENT_SERVER or 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--agent-id", metavar="ID", help="identifier, stable across restarts (default: host-pid)"
    )
    parser.add_argument("--slots", type=int, metavar="N", help="attempts run at once (default 4)")
    add_pair_option(parser, "--label", "a label matched against ToDo required_labels")
    parser.add_argument(
        "--capability",
        action="append",
        default=[],
        metavar="C",
        help="a capability matched against ToDo required_capabilities; repeatable",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="agent token (`cpa keys create --role agent`) sent with every call (default: "
        "$CPA_AGENT_TOKEN, which, unlike an option, other users cannot see in the process list)",
    )
    parser.add_argument(
        "--executors",
        metavar="NAMES",
        help="comma-separated `cpa.executors` entry points to load, e.g. builtin,browser "
        "(default: $CPA_AGENT_EXECUTORS, else all installed)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        help="speak TLS; trust the scheduler's certificate only if this PEM CA signed it "
        "(default: $CPA_AGENT_TLS_CA_FILE)",
    )
    parser.add_argument(
        "--cert-file",
        metavar="FILE",
        help="client certificate (PEM) for a scheduler with mutual TLS, with --key-file "
        "(default: $CPA_AGENT_TLS_CERT_FILE)",
    )
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        help="private key of --cert-file (default: $CPA_AGENT_TLS_KEY_FILE)",
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if arguments.server is not None:
        overrides["server"] = arguments.server
    if arguments.agent_id is not None:
        overrides["agent_id"] = arguments.agent_id
    if arguments.slots is not None:
        overrides["slots"] = arguments.slots
    if arguments.label:
        overrides["labels"] = pairs(arguments.label, "--label")
    if arguments.capability:
        overrides["capabilities"] = arguments.capability
    if arguments.executors is not None:
        overrides["executors"] = arguments.executors
    if arguments.token is not None:
        overrides["token"] = arguments.token
    for option, setting in (
        ("ca_file", "tls_ca_file"),
        ("cert_file", "tls_cert_file"),
        ("key_file", "tls_key_file"),
    ):
        if getattr(arguments, option) is not None:
            overrides[setting] = getattr(arguments, option)
    settings = AgentSettings(**overrides)
    tracing.configure_logging(settings)
    try:
        agent = Agent(settings=settings)
    except ValueError as error:  # an entry point named that nobody offers, an action twice
        raise CliError(str(error)) from None
    try:
        asyncio.run(_run(agent))
    except HelloRefusedError as error:  # its configuration: reconnecting would not help
        raise CliError(str(error)) from None
    return 0


async def _run(agent: Agent) -> None:
    running = asyncio.create_task(agent.async_run(handle_signals=True))
    connected = asyncio.create_task(agent.connected.wait())
    await asyncio.wait({running, connected}, return_when=asyncio.FIRST_COMPLETED)
    if connected.done():
        emit(
            AGENT_CONNECTED_LINE.format(
                agent_id=agent.settings.agent_id, address=agent.settings.server
            )
        )
    else:
        connected.cancel()
    await running
