"""`cpa serve`: run the scheduler (and, with --with-agent, a local agent) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from cpa_scheduler.settings import Settings

from .common import CliError, add_pair_option, emit, pairs, warn
from .embedded import LocalStack

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SERVING_LINE = "cpa scheduler serving on {address}"
AGENT_CONNECTED_LINE = "cpa agent {agent_id} connected to {address}"


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the scheduler (optionally with a local agent)",
        description="Run the scheduler on the embedded store until SIGTERM or SIGINT, then stop "
        "gracefully: health turns NOT_SERVING, new agent streams are refused, connected agents "
        "get $CPA_SHUTDOWN_DRAIN_S seconds to finish their work and move to another replica, "
        "then running calls get --grace seconds to finish; a second signal stops at once. "
        "Prints 'cpa scheduler serving on HOST:PORT' once it accepts calls. Other settings come "
        "from CPA_* environment variables (docs/CONFIGURATION.md).",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to bind; port 0 picks a free one (default: $CPA_LISTEN_ADDRESS or "
        "127.0.0.1:50051)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="directory of the embedded store (default: $CPA_DATA_DIR or ./data)",
    )
    parser.add_argument(
        "--with-agent",
        action="store_true",
        help="also run an executor agent with the built-in actions (noop, echo, wait, fail) "
        "in this process",
    )
    parser.add_argument(
        "--agent-slots",
        type=int,
        metavar="N",
        help="attempts the local agent runs at once (with --with-agent; default 4)",
    )
    parser.add_argument(
        "--agent-id",
        metavar="ID",
        help="identifier of the local agent (with --with-agent; default: host name and pid)",
    )
    add_pair_option(parser, "--agent-label", "a label of the local agent (with --with-agent)")
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long running calls may take to finish when stopping (default 5)",
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    agent_options = (arguments.agent_slots, arguments.agent_id, arguments.agent_label)
    if not arguments.with_agent and any(agent_options):
        raise CliError("serve: --agent-slots, --agent-id and --agent-label go with --with-agent")
    overrides: dict[str, Any] = {}
    if arguments.data_dir is not None:
        overrides["data_dir"] = arguments.data_dir
    if arguments.listen is not None:
        overrides["listen_address"] = arguments.listen
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    agent: dict[str, Any] | None = None
    if arguments.with_agent:
        agent = {}
        if arguments.agent_slots is not None:
            agent["slots"] = arguments.agent_slots
        if arguments.agent_id is not None:
            agent["agent_id"] = arguments.agent_id
        if arguments.agent_label:
            agent["labels"] = pairs(arguments.agent_label, "--agent-label")
    return asyncio.run(serve(LocalStack(settings, agent=agent), grace_s=arguments.grace))


async def serve(stack: LocalStack, *, grace_s: float) -> int:
    """Serves until the first SIGTERM/SIGINT, then stops gracefully; a second one cuts it short."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            warn(f"cpa serve: {signal.Signals(signum).name} received, stopping")
            stop.set()
        else:
            warn(f"cpa serve: {signal.Signals(signum).name} received again, stopping at once")
            stack.hurry()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        try:
            address = await stack.start()
            emit(SERVING_LINE.format(address=address))
            if stack.agent is not None:
                await _announce_agent(stack, stop, address)
            return await _until_stopped(stack, stop)
        finally:
            await stack.stop(grace_s)
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def _announce_agent(stack: LocalStack, stop: asyncio.Event, address: str) -> None:
    """Prints the agent's connected line once it is welcomed (unless a stop comes first)."""
    assert stack.agent is not None
    connected = asyncio.create_task(stack.agent_connected())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({connected, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (connected, stopping):
        if not task.done():
            task.cancel()
    if connected.done() and not connected.cancelled():
        connected.result()
        emit(AGENT_CONNECTED_LINE.format(agent_id=stack.agent.settings.agent_id, address=address))


async def _until_stopped(stack: LocalStack, stop: asyncio.Event) -> int:
    """Waits for a stop signal; 1 if the local agent ended on its own before one came."""
    waiters: set[asyncio.Task[Any]] = {asyncio.create_task(stop.wait())}
    if stack.agent_task is not None:
        waiters.add(stack.agent_task)
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        return 0
    for waiter in waiters - done:
        waiter.cancel()
    error = stack.agent_task.exception() if stack.agent_task is not None else None
    warn(f"cpa serve: the local agent stopped{f': {error}' if error else ''}; stopping")
    return 1
