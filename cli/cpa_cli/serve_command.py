"""`cpa serve`: run the scheduler (and, with --with-agent, a local agent; with --with-gateway,
Envoy in front of it) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from cpa_scheduler.settings import Settings
from cpa_scheduler.telemetry import logs

from .common import CliError, add_pair_option, emit, pairs, warn
from .embedded import LocalStack
from .gateway import EnvoyGateway, GatewayConfig, GatewayError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SERVING_LINE = "cpa scheduler serving on {address}"
DEFAULT_GATEWAY_LISTEN = "127.0.0.1:8080"
AGENT_CONNECTED_LINE = "cpa agent {agent_id} connected to {address}"


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the scheduler (optionally with a local agent)",
        description="Run the scheduler on the embedded store until SIGTERM or SIGINT, then stop "
        "gracefully: health turns NOT_SERVING, new agent streams are refused, connected agents "
        "get $CPA_SHUTDOWN_DRAIN_S seconds to finish their work and move to another replica, "
        "then running calls get --grace seconds to finish; a second signal stops at once. "
        "SIGHUP reloads the TLS certificate (CPA_TLS_CERT_FILE, docs/SECURITY.md). "
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
        "--with-gateway",
        action="store_true",
        help="also run the gateway (Envoy: REST/JSON and gRPC, as `cpa gateway`) in front of "
        "this scheduler; it stops with it",
    )
    parser.add_argument(
        "--gateway-listen",
        metavar="HOST:PORT",
        help="address the gateway binds (with --with-gateway; default 127.0.0.1:8080; port 0 "
        "picks a free one)",
    )
    parser.add_argument(
        "--insecure-local",
        action="store_true",
        help="authentication off: every caller is admin of the tenant it names in x-cpa-tenant; "
        "only on a loopback --listen (default: $CPA_INSECURE_LOCAL; docs/SECURITY.md)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long running calls may take to finish when stopping (default 5)",
    )
    parser.set_defaults(run=run)


# The gateway `--with-gateway` runs reaches the scheduler from loopback.
LOOPBACK_PROXIES = "127.0.0.1/32,::1/128"


def run(arguments: argparse.Namespace) -> int:
    agent_options = (arguments.agent_slots, arguments.agent_id, arguments.agent_label)
    if not arguments.with_agent and any(agent_options):
        raise CliError("serve: --agent-slots, --agent-id and --agent-label go with --with-agent")
    if arguments.gateway_listen is not None and not arguments.with_gateway:
        raise CliError("serve: --gateway-listen goes with --with-gateway")
    overrides: dict[str, Any] = {}
    if arguments.data_dir is not None:
        overrides["data_dir"] = arguments.data_dir
    if arguments.listen is not None:
        overrides["listen_address"] = arguments.listen
    if arguments.insecure_local:
        overrides["insecure_local"] = True
    settings = Settings(**overrides)
    logs.configure(settings)
    agent: dict[str, Any] | None = None
    if arguments.with_agent:
        agent = {}
        if arguments.agent_slots is not None:
            agent["slots"] = arguments.agent_slots
        if arguments.agent_id is not None:
            agent["agent_id"] = arguments.agent_id
        if arguments.agent_label:
            agent["labels"] = pairs(arguments.agent_label, "--agent-label")
    gateway_listen = None
    if arguments.with_gateway:
        gateway_listen = arguments.gateway_listen or DEFAULT_GATEWAY_LISTEN
        if not settings.trusted_proxies:
            # REST callers reach the scheduler through this Envoy, from loopback: without
            # trusting its x-forwarded-for they would all share one per-address rate limit.
            settings = settings.model_copy(update={"trusted_proxies": LOOPBACK_PROXIES})
    stack = LocalStack(settings, agent=agent)
    return asyncio.run(serve(stack, grace_s=arguments.grace, gateway_listen=gateway_listen))


async def serve(stack: LocalStack, *, grace_s: float, gateway_listen: str | None = None) -> int:
    """Serves until the first SIGTERM/SIGINT, then stops gracefully; a second one cuts it short.
    With `gateway_listen`, Envoy serves there in front of the scheduler; it is stopped after the
    scheduler, so calls it carries may finish within the grace period."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    gateway: EnvoyGateway | None = None

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            warn(f"cpa serve: {signal.Signals(signum).name} received, stopping")
            stop.set()
            if gateway is not None and not gateway.address:
                gateway.stop_soon()  # still starting: its wait for readiness ends now
        else:
            warn(f"cpa serve: {signal.Signals(signum).name} received again, stopping at once")
            stack.hurry()

    def on_reload() -> None:
        # Off the signal frame, on the loop: reading two small files is quick.
        if stack.server.reload_tls():
            warn("cpa serve: SIGHUP received, TLS certificate reloaded for new connections")
        else:
            warn("cpa serve: SIGHUP received, nothing reloaded (see the log)")

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        try:
            address = await stack.start()
            # The key first: whoever waits for the serving line finds it said already.
            _announce_local_admin_key(stack)
            emit(SERVING_LINE.format(address=address))
            if gateway_listen is not None:
                config = GatewayConfig.build(gateway_listen, [address], stack.settings)
                gateway = EnvoyGateway(config, log_level=stack.settings.gateway_log_level)
                if not await _start_gateway(gateway, stop):
                    return 0  # stopped while Envoy started
            if stack.agent is not None:
                await _announce_agent(stack, stop, address)
            return await _until_stopped(stack, stop, gateway)
        finally:
            await stack.stop(grace_s)
            if gateway is not None:
                await asyncio.to_thread(gateway.stop)
    finally:
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def _announce_local_admin_key(stack: LocalStack) -> None:
    """The embedded default's key, made at this (first) start: said once, on stderr."""
    made = stack.server.local_admin_key
    if made is None:
        return
    secret, path = made
    warn(
        f"cpa serve: created the local admin key (tenant {stack.settings.default_tenant}):\n"
        f"  {secret}\n"
        f"  It is shown only now and kept in {path} (readable by you only), where `cpa` "
        "commands on this machine find it; elsewhere set CPA_API_KEY. Create more keys with "
        "`cpa keys create`."
    )


# Envoy starts: the second only after the first was killed by a signal before it was ready.
_GATEWAY_SPAWNS = 2


async def _start_gateway(gateway: EnvoyGateway, stop: asyncio.Event) -> bool:
    """Starts Envoy and prints its serving line; False if a stop signal came first."""
    # Spawned on the loop's (main) thread: Envoy gets SIGTERM when that thread dies, and it
    # lives as long as the process (a worker thread would take Envoy down when it exits).
    for spawn in range(1, _GATEWAY_SPAWNS + 1):
        gateway.spawn()
        try:
            await asyncio.to_thread(gateway.wait_ready)
            break
        except GatewayError as error:
            if stop.is_set():
                return False
            code = gateway.process.poll() if gateway.process is not None else None
            gateway.stop()
            # Killed by a signal while starting (an abort seen in tests on a busy machine
            # while Envoy was forked with a preexec_fn from this process, where gRPC's threads
            # run; it now starts through setpriv, gateway/envoy.py): once more. A config or
            # port problem exits with a status of its own and is reported at once.
            if code is None or code >= 0 or spawn == _GATEWAY_SPAWNS:
                raise CliError(f"gateway: {error}") from None
            warn(f"cpa serve: the gateway's envoy died starting ({error}); starting it again")
    emit(gateway.serving_line())
    return True


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


async def _until_stopped(
    stack: LocalStack, stop: asyncio.Event, gateway: EnvoyGateway | None
) -> int:
    """Waits for a stop signal; 1 if the local agent or the gateway ended on its own first."""
    stopping = asyncio.create_task(stop.wait())
    waiters: set[asyncio.Task[Any]] = {stopping}
    if stack.agent_task is not None:
        waiters.add(stack.agent_task)  # not ours to cancel: stack.stop() drains it
    envoy: asyncio.Task[int] | None = None
    if gateway is not None:
        # The thread returns once Envoy exits, at the latest when serve() stops it.
        envoy = asyncio.create_task(asyncio.to_thread(gateway.wait))
        waiters.add(envoy)
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in (stopping, envoy):
        if waiter is not None and not waiter.done():
            waiter.cancel()
    if stop.is_set():
        return 0
    if envoy is not None and envoy in done:
        warn(f"cpa serve: the gateway's envoy exited with status {envoy.result()}; stopping")
        return 1
    error = stack.agent_task.exception() if stack.agent_task is not None else None
    warn(f"cpa serve: the local agent stopped{f': {error}' if error else ''}; stopping")
    return 1
